"""torchvision -> Flax import, checked against torchvision's own model definitions (random weights).

Needs the optional torch extra (pip install -e '.[torch]' plus torchvision==0.28.0);
skipped with the reason when torch is absent.
"""


import jax
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason="torch is not installed (pip install -e '.[test,torch]')")

from mi_jax import convert, models  # pylint: disable=g-import-not-at-top
from mi_jax.convert import torch_compat  # pylint: disable=g-import-not-at-top
from mi_jax.convert import torchvision as tv_convert  # pylint: disable=g-import-not-at-top
from mi_jax.defenses import transplant  # pylint: disable=g-import-not-at-top


def _torchvision_models(seed: int):
  """torchvision.models, with torch's global RNG seeded so the nets built next get the same default init."""
  try:
    tvm = torch_compat.import_torchvision().models
  except ImportError:
    pytest.skip('torchvision is not installed (pip install -e ".[torch]")')
  torch.manual_seed(seed)
  return tvm


def _randomised(net, seed):
  """Random BN statistics and affine parameters, a scaled-up head, eval mode.

  BN scales in [0.6, 1.0] keep a deep net's activations from growing to ~1e3 (where float32
  rounding alone exceeds 1e-4), and the head is scaled x20 so that logits are O(10) and differ
  between inputs: an absolute 1e-4 tolerance then means something.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in net.state_dict().items():
      if tensor.dtype.is_floating_point:
        if name.endswith('running_var'):
          tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
        elif name.endswith(('running_mean', 'bias')):
          tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
        elif name.endswith('weight') and tensor.ndim == 1:
          tensor.copy_(0.6 + 0.4 * torch.rand(tensor.shape, generator=gen))
    head = getattr(net, 'fc', None) or getattr(net, 'classifier', None)
    if head is not None:
      head.weight.mul_(20.0)
  return net.eval()


def _model_config(name, num_classes, **kw):
  config = dict(name=name, num_classes=num_classes, skip=(1, 1, 1, 1), width=0, stem='imagenet',
                dtype='float32', skip_mode='truncate', init_file='', init_reinit=())
  config.update(kw)
  return ml_collections.ConfigDict(config)


def _parity(name, torch_net, state_dict, input_size=64):
  config = _model_config(name, 7)
  model = models.build_model(config)
  fresh = models.init_variables(model, (1, input_size, input_size, 3), jax.random.PRNGKey(0))
  variables, report = tv_convert.merge_into(tv_convert.to_flax(tv_convert.clean_state_dict(state_dict),
                                                               tv_convert.kind_of(name)), jax.device_get(fresh))
  assert not report.reinitialised and not report.dropped
  x = np.random.default_rng(0).normal(size=(2, 3, input_size, input_size)).astype(np.float32)
  with torch.no_grad():
    want = torch_net(torch.from_numpy(x)).numpy()
  got = np.asarray(jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1)))
  assert 1.0 < np.abs(want).max() < 100.0 and np.abs(want[0] - want[1]).max() > 0.1  # a meaningful scale
  return float(np.abs(got - want).max())


@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
def test_resnet_parity_with_torchvision(name):
  tvm = _torchvision_models(seed=1)
  net = _randomised(getattr(tvm, name)(num_classes=7), seed=1)
  assert _parity(name, net, {k: v.numpy() for k, v in net.state_dict().items()}) <= 1e-4


def test_densenet_parity_with_torchvision_and_legacy_names():
  tvm = _torchvision_models(seed=2)
  net = _randomised(tvm.densenet121(num_classes=7), seed=2)
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  assert _parity('densenet121', net, state) <= 1e-4
  # The released .pth files name dense-layer parts norm.1/conv.2; PPA wraps the net as `model.`.
  legacy = {('model.' + k).replace('norm1.', 'norm.1.').replace('conv2.', 'conv.2.')
            if 'denselayer' in k else 'model.' + k: v for k, v in state.items()}
  assert any('norm.1.' in k for k in legacy)
  assert _parity('densenet121', net, legacy) <= 1e-4


def test_init_file_with_new_head_and_clear_errors(tmp_path):
  tvm = _torchvision_models(seed=3)
  net = _randomised(tvm.resnet18(num_classes=1000), seed=3)
  path = tmp_path / 'resnet18_imagenet.pth'
  torch.save({'model_state_dict': {'module.' + k: v for k, v in net.state_dict().items()}}, path)
  config = _model_config('resnet18', 5, init_file=str(path), init_reinit=('fc',))
  model = models.build_model(config)
  fresh = jax.device_get(models.init_variables(model, (1, 32, 32, 3), jax.random.PRNGKey(0)))
  variables = convert.init_from_file(config, fresh)
  np.testing.assert_array_equal(variables['params']['conv1']['kernel'],
                                net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['batch_stats']['layer4_1']['bn2']['var'],
                                net.layer4[1].bn2.running_var.numpy())
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], fresh['params']['fc']['kernel'])
  config.init_reinit = ()
  with pytest.raises(transplant.TransplantError, match=r'(?s)params/fc/kernel: source \(512, 1000\) vs target \(512, 5\)'
                     r'.*config.model.init_reinit'):
    convert.init_from_file(config, fresh)
  config.init_file = str(tmp_path / 'missing.pth')
  with pytest.raises(FileNotFoundError, match='config.model.init_file='):
    convert.init_from_file(config, fresh)
  # A DenseNet file for a ResNet config: every unmatched tensor is listed.
  with pytest.raises(transplant.TransplantError, match='not in the target model'):
    tv_convert.merge_into(tv_convert.to_flax({'features.conv0.weight': np.zeros((64, 3, 7, 7), np.float32)},
                                             'densenet'), fresh)
