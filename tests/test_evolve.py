"""The low-resolution protocol's classifiers (VGG16-BN, IR-152, FaceNet64, FaceNet112): parity with torch
definitions of the reference networks through the importer of their published state-dict names."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mi_jax import convert, models
from mi_jax.convert import torchvision as tv_convert
from mi_jax.models import evolve, layers
from mi_jax.train import checkpoint as checkpoint_lib

torch = pytest.importorskip('torch')

from torch_reference import randomised  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_evolve  # pylint: disable=g-import-not-at-top,wrong-import-position


def _model_config(name, classes=10, skip=(1.0, 1.0, 1.0, 1.0)):
  return ml_collections.ConfigDict(
      dict(
          name=name,
          num_classes=classes,
          skip=() if name == 'vgg16_64' else skip,
          width=0,
          stem='imagenet',
          dtype='float32',
          skip_mode='truncate',
          init_file='',
          init_reinit=(),
      )
  )


def _reference(name, classes=10):
  torch.manual_seed(0)
  if name == 'vgg16_64':
    net = torch_evolve.VGG16(classes)
  else:
    units = evolve.IR_UNITS[152 if name == 'ir152_64' else 50]
    net = torch_evolve.IRClassifier(units, 112 if name == 'facenet112' else 64, classes)
  with torch.no_grad():
    for module in net.modules():  # PReLU slopes and BN shifts away from their initial values
      if isinstance(module, torch.nn.PReLU):
        module.weight.uniform_(0.1, 0.4)
  net = randomised(net, 1)
  if name == 'vgg16_64':
    with torch.no_grad():
      net.bn.bias.zero_()  # frozen at 0 in the reference
  return net.eval()


def _published(net):
  """The state dict as the reference code saves it (DataParallel's `module.` prefix, a 'state_dict' wrapper)."""
  return {f'module.{k}': v.detach().numpy() for k, v in net.state_dict().items()}


@pytest.mark.parametrize('name, size', [('vgg16_64', 64), ('facenet64', 64), ('facenet112', 112)])
def test_logits_and_features_equal_the_reference(name, size):
  net = _reference(name)
  variables = tv_convert.to_flax(tv_convert.clean_state_dict(_published(net)), 'typed')
  model = models.build_model(_model_config(name))
  x = np.random.RandomState(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  feature, logits = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))  # the reference sees x as is
  got, recorded = model.apply(variables, x, train=False, mutable=[layers.HIDDEN_COLLECTION])
  scale = float(np.abs(logits.detach().numpy()).max())
  np.testing.assert_allclose(got, logits.detach().numpy(), atol=1e-4 * scale, rtol=1e-4)
  penultimate = recorded[layers.HIDDEN_COLLECTION][layers.HIDDEN_NAME][-1]
  np.testing.assert_allclose(
      penultimate, feature.detach().numpy(), atol=1e-4 * float(np.abs(feature.detach().numpy()).max())
  )


def test_ir152_imports_leaf_for_leaf():
  """IR-152's published names fill our tree exactly (a forward pass of it is the IR-50 test's, 26 units longer)."""
  variables = tv_convert.to_flax(tv_convert.clean_state_dict(_published(_reference('ir152_64'))), 'typed')
  model = models.build_model(_model_config('ir152_64'))
  fresh = jax.eval_shape(lambda: models.init_variables(model, (1, 64, 64, 3), jax.random.key(0)))
  shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)
  assert shapes(variables) == shapes({k: fresh[k] for k in ('params', 'batch_stats')})


def test_init_file_loads_a_published_checkpoint_and_skips_are_controlled(tmp_path):
  net = _reference('facenet64')
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in _published(net).items()}}, tmp_path / 'FaceNet64.tar')
  config = _model_config('facenet64', skip=(1.0, 1.0, 1.0, 0.0))
  config.init_file = str(tmp_path / 'FaceNet64.tar')
  config.unit_range_input = True  # the reference's [0, 1] inputs are our (x + 1) / 2
  model = models.build_model(config)
  fresh = models.init_variables(model, (1, 64, 64, 3), jax.random.key(0))
  variables = convert.init_from_file(config, {k: fresh[k] for k in ('params', 'batch_stats')}, as_is=True)
  x = jnp.asarray(np.random.RandomState(1).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32))
  no_last_skip = model.apply(variables, x, train=False)
  # The reference with the last stage's shortcuts removed (RoLSS): zero them by hand.
  for unit in list(net.feature.body)[-3:]:
    unit.forward = lambda x, unit=unit: unit.res_layer(x)
  unit = (np.asarray(x) + 1) / 2
  expected = net(torch.from_numpy(np.ascontiguousarray(unit.transpose(0, 3, 1, 2))))[1].detach().numpy()
  np.testing.assert_allclose(no_last_skip, expected, atol=1e-4 * float(np.abs(expected).max()), rtol=1e-4)


@pytest.mark.slow
def test_a_published_target_is_imported_and_evaluated_on_the_gmi_split(tmp_path):
  """configs/target64.py:vgg16,imported on a CelebA-shaped folder: the file is the model, measured on the test list."""
  from configs import target64  # pylint: disable=g-import-not-at-top
  from mi_jax import jobs  # pylint: disable=g-import-not-at-top
  from test_data import _fake_celeba  # pylint: disable=g-import-not-at-top

  _fake_celeba(tmp_path / 'celeba')
  net = _reference('vgg16_64', classes=4)
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in _published(net).items()}}, tmp_path / 'VGG16.tar')
  config = target64.get_config('vgg16,imported')
  config.data.update(data_dir=str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'celeba'))
  config.model.update(num_classes=4, init_file=str(tmp_path / 'VGG16.tar'))
  config.train.batch_size, config.num_devices = 4, 1
  results = jobs.run(config, str(tmp_path / 'target'))
  assert results['test_examples'] == 4 and 0 <= results['test_accuracy'] <= 1
  model, variables, _, step, _ = checkpoint_lib.load_classifier(str(tmp_path / 'target'))
  x = np.random.RandomState(2).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  unit = np.ascontiguousarray(((x + 1) / 2).transpose(0, 3, 1, 2))  # the reference's [0, 1] input
  expected = net(torch.from_numpy(unit))[1].detach().numpy()
  np.testing.assert_allclose(model.apply(variables, x, train=False), expected, atol=1e-4 * np.abs(expected).max())
  assert step == 0
