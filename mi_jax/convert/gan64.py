"""Published GMI/KEDMI GAN weights (torch state dicts) -> mi_jax.gan64 variables.

Key names as the reference repositories save them (`Generator`, `DGWGAN`, `MinibatchDiscriminator`),
with or without DataParallel's `module.` prefix and a `{'state_dict': ...}` wrapper:

  generator        l1.0 (Linear), l1.1 (BatchNorm1d), l2_5.<i>.0 (ConvTranspose2d), l2_5.<i>.1 (BatchNorm2d),
                   l2_5.<last> (ConvTranspose2d with bias)
  WGAN critic      ls.0 (Conv2d), ls.<i>.0 (Conv2d), ls.<i>.1 (InstanceNorm2d), ls.<last> (Conv2d 4x4)
  minibatch critic layer<k>.0 (Conv2d), layer<k>.1 (InstanceNorm2d), mbd1.T, fc_layer (Linear)

`import_files` writes a GAN directory (mi_jax/gan64/checkpoint.py) from a generator and a critic file,
its architecture read off the tensors' shapes.
"""

import os
import re

from flax import traverse_util
import numpy as np

from mi_jax.convert import torchvision as tv_convert
from mi_jax.gan64 import checkpoint as gan_io
from mi_jax.gan64 import networks

_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'), 'running_mean': ('batch_stats', 'mean')}
_BN['running_var'] = ('batch_stats', 'var')


def _conv(w: np.ndarray) -> np.ndarray:
  return w.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]


def _up_conv(w: np.ndarray) -> np.ndarray:
  """ConvTranspose2d [I, O, kh, kw] -> the flipped [kh, kw, I, O] kernel of the equivalent dilated convolution."""
  return w.transpose(2, 3, 0, 1)[::-1, ::-1]


def _generator_leaf(module: str, field: str, num_stages: int):
  if module == 'l1.0':
    return 'params', 'fc', 'kernel', np.transpose
  if module == 'l1.1':
    return (*_BN[field][:1], 'fc_bn', _BN[field][1], None)
  if module == f'l2_5.{num_stages - 1}':
    return 'params', 'to_image', {'weight': 'kernel', 'bias': 'bias'}[field], _up_conv if field == 'weight' else None
  match = re.fullmatch(r'l2_5\.(\d+)\.([01])', module)
  if match and match.group(2) == '0':
    return 'params', f'up{match.group(1)}', 'kernel', _up_conv
  if match:
    return (*_BN[field][:1], f'up{match.group(1)}_bn', _BN[field][1], None)
  return None


def _wgan_critic_leaf(module: str, field: str, num_stages: int):
  name = {'weight': 'kernel', 'bias': 'bias'}[field]
  if module == 'ls.0':
    return 'params', 'conv0', name, _conv if field == 'weight' else None
  if module == f'ls.{num_stages + 1}':
    return 'params', 'score', name, _conv if field == 'weight' else None
  match = re.fullmatch(r'ls\.(\d+)\.([01])', module)
  if match and match.group(2) == '0':
    return 'params', f'conv{int(match.group(1)) - 1}', name, _conv if field == 'weight' else None
  if match:
    return 'params', f'norm{int(match.group(1)) - 1}', {'weight': 'scale', 'bias': 'bias'}[field], None
  return None


def _minibatch_critic_leaf(module: str, field: str, num_stages: int):
  del num_stages
  if module == 'mbd1' and field == 'T':
    return 'params', 'mbd', 'T', None
  if module in ('fc_layer', 'fc_layer.0'):  # a softmax-wrapped head (`fc_layer.0`) exists in one variant
    return 'params', 'fc', {'weight': 'kernel', 'bias': 'bias'}[field], np.transpose if field == 'weight' else None
  match = re.fullmatch(r'layer(\d+)\.([01])', module)
  if match and match.group(2) == '0':
    return (
        'params',
        f'conv{int(match.group(1)) - 1}',
        {'weight': 'kernel', 'bias': 'bias'}[field],
        (_conv if field == 'weight' else None),
    )
  if match:
    return 'params', f'norm{int(match.group(1)) - 1}', {'weight': 'scale', 'bias': 'bias'}[field], None
  return None


_LEAVES = {'generator': _generator_leaf, 'wgan_critic': _wgan_critic_leaf, 'minibatch_critic': _minibatch_critic_leaf}


def to_flax(state_dict: dict, network: str, num_stages: int) -> dict:
  """A reference network's state dict -> {'params', 'batch_stats'}; `network`: generator, wgan_critic or
  minibatch_critic; `num_stages`: GanConfig.num_stages (4 at 64x64). Unknown keys are an error naming them."""
  leaf_of = _LEAVES[network]
  flat, unknown = {}, []
  for key, value in tv_convert.clean_state_dict(state_dict).items():
    module, _, field = key.rpartition('.')
    if field == 'num_batches_tracked':
      continue
    mapped = leaf_of(module, field, num_stages)
    if mapped is None:
      unknown.append(key)
      continue
    collection, name, flax_field, transform = mapped
    flat[(collection, name, flax_field)] = np.ascontiguousarray(transform(value) if transform else value, np.float32)
  if unknown:
    raise ValueError(f'{network} weights: keys the reference {network} does not have: {unknown}')
  return traverse_util.unflatten_dict(flat)


def read(path: str, network: str, num_stages: int) -> dict:
  """to_flax of the torch file at `path` (read with torch.load(weights_only=True))."""
  return to_flax(tv_convert.read_state_dict(path), network, num_stages)


def config_from_state_dicts(generator: dict, critic: dict) -> tuple[networks.GanConfig, str]:
  """(GanConfig, kind) read off the shapes of published generator and critic state dicts."""
  generator, critic = tv_convert.clean_state_dict(generator), tv_convert.clean_state_dict(critic)
  ups = sorted({int(m.group(1)) for k in generator if (m := re.fullmatch(r'l2_5\.(\d+)\..*', k))})
  if 'l1.0.weight' not in generator or not ups:
    raise ValueError(f'not a GMI/KEDMI generator state dict (keys {sorted(generator)[:5]}...)')
  last = generator[f'l2_5.{ups[-1]}.weight']  # [width, channels, 5, 5]
  kind = 'wgan_gp' if 'ls.0.weight' in critic else 'kedmi' if 'mbd1.T' in critic else None
  if kind is None:
    raise ValueError(f'not a DGWGAN or MinibatchDiscriminator state dict (keys {sorted(critic)[:5]}...)')
  extra = {}
  if kind == 'kedmi':
    T = critic['mbd1.T']
    head = critic.get('fc_layer.weight', critic.get('fc_layer.0.weight'))
    extra = dict(num_classes=head.shape[0], mbd_kernels=T.shape[1], mbd_kernel_dim=T.shape[2])
  config = networks.GanConfig(
      resolution=2 ** (len(ups) + 2),
      img_channels=last.shape[1],
      z_dim=generator['l1.0.weight'].shape[1],
      width=last.shape[0],
      **extra,
  )
  return config, kind


def import_files(generator_path: str, critic_path: str, out_dir: str) -> tuple[networks.GanConfig, str]:
  """Published GMI/KEDMI weights (e.g. `celeba_G.tar` + `celeba_D.tar`, `improved_celeba_G.tar` +
  `improved_celeba_D.tar`) -> a GAN directory at `out_dir` that the gan64 attacks read."""
  generator, critic = tv_convert.read_state_dict(generator_path), tv_convert.read_state_dict(critic_path)
  config, kind = config_from_state_dicts(generator, critic)
  g_vars = to_flax(generator, 'generator', config.num_stages)
  d_vars = to_flax(critic, 'wgan_critic' if kind == 'wgan_gp' else 'minibatch_critic', config.num_stages)
  source = {'generator_file': os.path.abspath(generator_path), 'critic_file': os.path.abspath(critic_path)}
  gan_io.save_gan(out_dir, config, kind, g_vars, {'params': d_vars['params']}, source)
  return config, kind
