"""Evaluation networks against their reference definitions, random weights: torchvision's
Inception-v3, pytorch-fid's FID Inception and facenet-pytorch's InceptionResnetV1.

torchvision comes with the torch extra; pytorch-fid and facenet-pytorch are installed with
--no-deps (their pins would replace torch): `pip install --no-deps facenet-pytorch==2.6.0
pytorch-fid==0.3.0`. Each test is skipped, with the reason, when its reference is absent.
"""

import jax
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason="torch is not installed (pip install -e '.[test,torch]')")

from mi_jax import convert, models  # pylint: disable=g-import-not-at-top
from mi_jax.convert import eval_models  # pylint: disable=g-import-not-at-top
from mi_jax.convert import torchvision as tv_convert  # pylint: disable=g-import-not-at-top
from mi_jax.models import facenet, inception  # pylint: disable=g-import-not-at-top
from mi_jax.train import steps  # pylint: disable=g-import-not-at-top

from torch_reference import model_config, randomised, torchvision_models  # pylint: disable=g-import-not-at-top


def _compare(module, variables, torch_net, size, seed, **apply_kwargs):
  x = np.random.default_rng(seed).uniform(-1, 1, size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    want = torch_net(torch.from_numpy(x))
  want = (want[0] if isinstance(want, list) else want).reshape(2, -1).numpy()  # pytorch-fid: a list of blocks
  got = np.asarray(jax.jit(lambda v, a: module.apply(v, a, **apply_kwargs))(variables, x.transpose(0, 2, 3, 1)))
  assert got.shape == want.shape
  # The two inputs are told apart: the comparison means something.
  assert np.abs(want[0] - want[1]).max() > 0.02 * np.abs(want).max()
  return float(np.abs(got - want).max()), float(np.abs(want).max())


@pytest.mark.slow
def test_inception_v3_parity_with_torchvision_and_init_file(tmp_path):
  tvm = torchvision_models(seed=4)
  net = randomised(tvm.inception_v3(weights=None, aux_logits=True, init_weights=True, num_classes=7), seed=4)
  # A PPA-style file: the auxiliary head is in it; a Flax model without one drops it.
  path = tmp_path / 'inception_v3.pth'
  torch.save({'model_state_dict': net.state_dict()}, path)
  config = model_config('inception_v3', 7, skip=())
  model = models.build_model(config)
  fresh = jax.device_get(models.init_variables(model, (1, 75, 75, 3), jax.random.PRNGKey(0)))
  config.init_file = str(path)
  variables = convert.init_from_file(config, fresh)
  error, scale = _compare(model, variables, net, 75, seed=0)
  assert error <= 1e-4 * max(scale, 1.0), (error, scale)


@pytest.mark.slow
def test_inception_v3_transform_input_and_aux_head_match_torchvision(tmp_path):
  """PPA's evaluation model: inception_v3(transform_input=True, aux_logits=True), imported as it is."""
  tvm = torchvision_models(seed=8)
  net = tvm.inception_v3(
      weights=None, aux_logits=True, transform_input=True, init_weights=True, num_classes=7, dropout=0.0
  )
  size = 299  # the auxiliary head's 5x5 conv after its 5x5/3 pool needs Mixed_6e's 17x17: the full size
  # At 299px a randomised net's activations explode and drown the input: set every BatchNorm's running
  # statistics to those of a calibration batch instead, so the outputs are of unit scale and input-dependent.
  for module in net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.reset_running_stats()
      module.momentum = None  # a cumulative average: one batch sets the statistics
  with torch.no_grad():
    net.train()(torch.from_numpy(np.random.default_rng(7).uniform(-1, 1, (4, 3, size, size)).astype(np.float32)))
  net.eval()
  path = tmp_path / 'inception_v3_facescrub.pt'
  torch.save(net.state_dict(), path)
  config = model_config(
      'inception_v3', 7, skip=(), transform_input=True, aux_logits=True, init_file=str(path), init_reinit=('fc',)
  )
  model = models.build_model(config)
  assert model.transform_input and model.aux_logits
  fresh = jax.device_get(models.init_variables(model, (1, size, size, 3), jax.random.PRNGKey(0)))
  variables = convert.init_from_file(config, fresh, as_is=True)  # train.epochs = 0: every leaf from the file
  error, scale = _compare(model, variables, net, size, seed=3)  # evaluation: main logits only
  assert error <= 1e-4 * max(scale, 1.0), (error, scale)
  # Without the re-normalisation the same weights give other logits: the flag is what makes them agree.
  plain = models.build_model(ml_collections.ConfigDict({**config.to_dict(), 'transform_input': False}))
  other, _ = _compare(plain, variables, net, size, seed=3)
  assert other > 100 * max(error, 1e-6)

  # Training mode: (logits, aux logits) with batch statistics; dropout off on both sides.
  x = np.random.default_rng(4).uniform(-1, 1, size=(2, 3, size, size)).astype(np.float32)
  net.train()
  with torch.no_grad():
    want_logits, want_aux = net(torch.from_numpy(x))
  trainable = inception.Inception3(num_classes=7, transform_input=True, aux_logits=True, dropout_rate=0.0)
  (logits, aux), _ = trainable.apply(variables, x.transpose(0, 2, 3, 1), train=True, mutable=['batch_stats'])
  for got, want in ((logits, want_logits), (aux, want_aux)):
    want = want.numpy()
    assert np.abs(np.asarray(got) - want).max() <= 1e-4 * max(np.abs(want).max(), 1.0)
  # The auxiliary loss: CE + weight * CE(aux), as PPA's Classifier.fit adds them (weight 1).
  labels = np.array([0, 6])
  _, loss, parts = steps.classification_loss((logits, aux), labels, aux_loss_weight=0.4)
  ce = lambda z: float(torch.nn.functional.cross_entropy(z, torch.from_numpy(labels)))
  np.testing.assert_allclose(float(loss), ce(want_logits) + 0.4 * ce(want_aux), rtol=1e-4)
  np.testing.assert_allclose(float(parts['aux_cross_entropy']), ce(want_aux), rtol=1e-4)


def test_an_imported_evaluation_model_must_fit_its_config(tmp_path):
  tvm = torchvision_models(seed=9)
  net = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=9)
  path = tmp_path / 'other.pt'
  torch.save(net.state_dict(), path)
  config = model_config('inception_v3', 7, skip=(), aux_logits=True, init_file=str(path), init_reinit=('fc',))
  model = models.build_model(config)
  fresh = jax.device_get(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 299, 299, 3)))))
  with pytest.raises(
      ValueError,
      match=r'(?s)\(inception_v3, num_classes=7, aux_logits=True\).*'
      r'AuxLogits/fc/kernel: source \(768, 9\).*params/fc/kernel: source \(2048, 9\) vs target \(2048, 7\)',
  ):
    convert.init_from_file(config, fresh, as_is=True)
  # Training from it instead re-initialises the head that init_reinit names, the auxiliary one included.
  variables = convert.init_from_file(config, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), fresh))
  assert np.all(variables['params']['fc']['kernel'] == 0) and np.all(
      variables['params']['AuxLogits']['fc']['bias'] == 0
  )


def test_fid_inception_parity_with_pytorch_fid(tmp_path, monkeypatch):
  fid_inception = pytest.importorskip('pytorch_fid.inception', reason='pytorch-fid is not installed')
  tvm = torchvision_models(seed=5)
  # The FID network has torchvision's parameters (1008 classes, no aux head); only its pools differ.
  weights = randomised(
      tvm.inception_v3(weights=None, aux_logits=False, init_weights=True, num_classes=1008), seed=5
  ).state_dict()
  monkeypatch.setattr(fid_inception, 'load_state_dict_from_url', lambda *a, **k: weights)  # no download
  net = fid_inception.InceptionV3([3], resize_input=False, normalize_input=False).eval()
  path = tmp_path / 'pt_inception.pth'
  torch.save(weights, path)
  module, variables = eval_models.import_fid_inception(str(path))
  assert module.fid
  error, scale = _compare(module, variables, net, 75, seed=1, features_only=True)
  assert error <= 1e-4 * max(scale, 1.0), (error, scale)
  # The pools matter: torchvision's Inception-v3 on the same weights gives other features.
  plain = inception.Inception3(num_classes=1008)
  other, _ = _compare(plain, variables, net, 75, seed=1, features_only=True)
  assert other > 100 * error


def test_facenet_parity_with_facenet_pytorch(tmp_path):
  torchvision_models(seed=6)  # facenet-pytorch imports torchvision (through the CPU shim)
  irv1 = pytest.importorskip('facenet_pytorch.models.inception_resnet_v1', reason='facenet-pytorch is not installed')
  net = randomised(irv1.InceptionResnetV1(pretrained=None, classify=False, num_classes=11), seed=6)
  # A random net's embedding barely depends on its input; standardising the pre-BN features with
  # their batch statistics makes the input-dependent part dominate, so the comparison means something.
  captured = []
  hook = net.last_linear.register_forward_hook(lambda module, inputs, output: captured.append(output))
  with torch.no_grad():
    net(torch.from_numpy(np.random.default_rng(9).uniform(-1, 1, (8, 3, 80, 80)).astype(np.float32)))
    net.last_bn.running_mean.copy_(captured[0].mean(0))
    net.last_bn.running_var.copy_(captured[0].var(0) + 1e-6)
  hook.remove()
  path = tmp_path / 'facenet.pt'
  state = dict(net.state_dict())
  state['logits.weight'], state['logits.bias'] = torch.zeros(11, 512), torch.zeros(11)  # as in the VGGFace2 file
  torch.save(state, path)
  module, variables = eval_models.import_facenet(str(path))
  assert isinstance(module, facenet.InceptionResnetV1)
  error, _ = _compare(module, variables, net, 80, seed=2)
  assert error <= 2e-5, error  # unit-norm embeddings, entries ~0.04


def test_missing_or_wrong_weight_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='FaceNet weight file'):
    eval_models.import_facenet(str(tmp_path / 'absent.pt'))
  torch.save({'conv2d_1a.conv.weight': torch.zeros(32, 3, 5, 5)}, tmp_path / 'wrong.pt')
  with pytest.raises(Exception, match=r'conv2d_1a/conv/kernel: source \(5, 5, 3, 32\) vs target \(3, 3, 3, 32\)'):
    eval_models.import_facenet(str(tmp_path / 'wrong.pt'))
  assert tv_convert.kind_of('inception_v3') == 'generic'
