"""torchvision -> Flax import, checked against torchvision's own model definitions (random weights).

Needs the optional torch extra (pip install -e '.[torch]' plus torchvision==0.28.0);
skipped with the reason when torch is absent.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason="torch is not installed (pip install -e '.[test,torch]')")

from mi_jax import convert, models  # pylint: disable=g-import-not-at-top
from mi_jax.convert import torchvision as tv_convert  # pylint: disable=g-import-not-at-top
from mi_jax.defenses import transplant  # pylint: disable=g-import-not-at-top
from torch_reference import model_config, randomised, torchvision_models  # pylint: disable=g-import-not-at-top


def _parity(name, torch_net, state_dict, input_size=64, **config_fields):
  config = model_config(name, 7, **config_fields)
  model = models.build_model(config)
  fresh = models.init_variables(model, (1, input_size, input_size, 3), jax.random.PRNGKey(0))
  variables, report = tv_convert.merge_into(
      tv_convert.to_flax(tv_convert.clean_state_dict(state_dict), tv_convert.kind_of(name)), jax.device_get(fresh)
  )
  assert not report.reinitialised and not report.dropped
  x = np.random.default_rng(0).normal(size=(2, 3, input_size, input_size)).astype(np.float32)
  with torch.no_grad():
    want = torch_net(torch.from_numpy(x)).numpy()
  got = np.asarray(jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1)))
  assert 1.0 < np.abs(want).max() < 100.0 and np.abs(want[0] - want[1]).max() > 0.1  # a meaningful scale
  return float(np.abs(got - want).max())


@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
def test_resnet_parity_with_torchvision(name):
  tvm = torchvision_models(seed=1)
  net = randomised(getattr(tvm, name)(num_classes=7), seed=1)
  assert _parity(name, net, {k: v.numpy() for k, v in net.state_dict().items()}) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize('name, plain_blocks', [('resnet18', (1,)), ('resnet50', (4, 5))])
def test_legacy_stage3_split_drops_the_skips_the_released_code_drops(name, plain_blocks):
  """model.legacy_stage3_split=0.8: the RoLSS release's layer3 built with split=0.8, i.e. its blocks
  int(0.8 n) .. n-1 without the identity, checked against torchvision's net with those blocks rewired."""
  tvm = torchvision_models(seed=12)
  net = randomised(getattr(tvm, name)(num_classes=7), seed=12)
  state = {k: v.numpy() for k, v in net.state_dict().items()}

  def without_identity(block):
    def forward(x):  # torchvision's block body with `out += identity` left out
      out = block.relu(block.bn1(block.conv1(x)))
      if hasattr(block, 'conv3'):
        out = block.relu(block.bn2(block.conv2(out)))
        return block.relu(block.bn3(block.conv3(out)))
      return block.relu(block.bn2(block.conv2(out)))

    return forward

  full_error = _parity(name, net, state)  # before rewiring: the option off gives the plain ResNet
  for j in plain_blocks:
    net.layer3[j].forward = without_identity(net.layer3[j])
  assert full_error <= 1e-4 and _parity(name, net, state, legacy_stage3_split=0.8) <= 1e-4
  assert _parity(name, net, state) > 1e-2  # and the rewiring changes the function


@pytest.mark.slow
def test_densenet_parity_with_torchvision_and_legacy_names():
  tvm = torchvision_models(seed=2)
  net = randomised(tvm.densenet121(num_classes=7), seed=2)
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  assert _parity('densenet121', net, state) <= 1e-4
  # The released .pth files name dense-layer parts norm.1/conv.2; PPA wraps the net as `model.`.
  legacy = {
      ('model.' + k).replace('norm1.', 'norm.1.').replace('conv2.', 'conv.2.') if 'denselayer' in k else 'model.' + k: v
      for k, v in state.items()
  }
  assert any('norm.1.' in k for k in legacy)
  assert _parity('densenet121', net, legacy) <= 1e-4


def test_init_file_with_new_head_and_clear_errors(tmp_path):
  tvm = torchvision_models(seed=3)
  net = randomised(tvm.resnet18(num_classes=1000), seed=3)
  path = tmp_path / 'resnet18_imagenet.pth'
  torch.save({'model_state_dict': {'module.' + k: v for k, v in net.state_dict().items()}}, path)
  config = model_config('resnet18', 5, init_file=str(path), init_reinit=('fc',))
  model = models.build_model(config)
  fresh = jax.device_get(models.init_variables(model, (1, 32, 32, 3), jax.random.PRNGKey(0)))
  variables = convert.init_from_file(config, fresh)
  np.testing.assert_array_equal(
      variables['params']['conv1']['kernel'], net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
      variables['batch_stats']['layer4_1']['bn2']['var'], net.layer4[1].bn2.running_var.numpy()
  )
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], fresh['params']['fc']['kernel'])
  config.init_reinit = ()
  with pytest.raises(
      transplant.TransplantError,
      match=r'(?s)params/fc/kernel: source \(512, 1000\) vs target \(512, 5\)' r'.*config.model.init_reinit',
  ):
    convert.init_from_file(config, fresh)
  config.init_file = str(tmp_path / 'missing.pth')
  with pytest.raises(FileNotFoundError, match='config.model.init_file='):
    convert.init_from_file(config, fresh)
  # A DenseNet file for a ResNet config: every unmatched tensor is listed.
  with pytest.raises(transplant.TransplantError, match='not in the target model'):
    tv_convert.merge_into(
        tv_convert.to_flax({'features.conv0.weight': np.zeros((64, 3, 7, 7), np.float32)}, 'densenet'), fresh
    )


@pytest.mark.slow
def test_a_weight_file_used_as_it_is_is_a_checkpoint_with_torchs_function(tmp_path):
  """train.epochs = 0: the job writes the file's model as step 0, evaluated on the test split; loading it
  gives torchvision's logits on the same images. A file of another class count lists what does not fit."""
  from configs import baseline  # pylint: disable=g-import-not-at-top
  from mi_jax import jobs  # pylint: disable=g-import-not-at-top
  from mi_jax.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  from mi_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  import PIL.Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  for c in range(3):  # an RGB image folder: 3 classes of 10 random 40x40 images
    (tmp_path / 'raw' / f'class{c}').mkdir(parents=True)
    for i in range(10):
      PIL.Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
          tmp_path / 'raw' / f'class{c}' / f'{i}.png'
      )
  tvm = torchvision_models(seed=13)
  net = randomised(tvm.resnet18(num_classes=3), seed=13)
  torch.save(net.state_dict(), tmp_path / 'resnet18.pth')
  config = baseline.get_config('tiny')
  config.data.update(
      name='image_folder/toy',
      data_dir=str(tmp_path / 'tfds'),
      manual_dir=str(tmp_path / 'raw'),
      test_fraction=0.3,
      image_size=32,
  )
  config.model.update(
      name='resnet18', num_classes=3, width=0, stem='imagenet', init_file=str(tmp_path / 'resnet18.pth'), init_reinit=()
  )
  config.train.update(epochs=0, batch_size=8)
  config.num_devices = 1
  results = jobs.run(config, str(tmp_path / 'imported'))
  model, variables, _, step, metrics = checkpoint.load_classifier(str(tmp_path / 'imported'), 'best')
  assert step == 0 and results['step'] == 0 and metrics['test_accuracy'] == results['test_accuracy']
  test = sources.get_source(sources.prepare(config.data), 'test')
  images = np.concatenate([b['image'][b['mask'] > 0] for b in pipeline.eval_batches(test, config.data, 8)])
  with torch.no_grad():
    want = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(model.apply(variables, images))
  assert np.abs(got - want).max() <= 1e-4 * max(np.abs(want).max(), 1.0)
  labels = np.array([test[i]['label'] for i in range(len(test))])
  assert results['test_accuracy'] == pytest.approx(np.mean(np.argmax(want, -1) == labels))
  # The same file for a 4-class config: refused before anything is written, naming what does not fit.
  config.model.num_classes = 4
  config.data.name = 'image_folder/toy'
  with pytest.raises(
      transplant.TransplantError,
      match=r'(?s)num_classes=4.*params/fc/kernel: source \(512, 3\) vs ' r'target \(512, 4\)',
  ):
    convert.init_from_file(
        config.model,
        jax.device_get(models.init_variables(models.build_model(config.model), (1, 32, 32, 3), jax.random.PRNGKey(0))),
        as_is=True,
    )
