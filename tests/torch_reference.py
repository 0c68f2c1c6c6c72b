"""torch-side helpers shared by the parity tests: torchvision's model definitions on CPU torch,
randomised reference nets, and the model config the parity tests build from."""

import pytest
import torch

from configs import common
from mi_jax.convert import torch_compat


def torchvision_models(seed: int):
  """torchvision.models, with torch's global RNG seeded so the nets built next get the same default init."""
  try:
    tvm = torch_compat.import_torchvision().models
  except ImportError:
    pytest.skip('torchvision is not installed (pip install -e ".[torch]")')
  torch.manual_seed(seed)
  return tvm


def randomised(net, seed):
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


def model_config(name, num_classes, **kw):
  """The model section of the base config (every field a job reads) for `name`, the head loaded too."""
  config = common.base_config().model
  config.update({'name': name, 'num_classes': num_classes, 'init_reinit': (), **kw})
  return config
