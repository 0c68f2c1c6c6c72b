"""torchvision EfficientNet (B0 layout) state dict -> the Flax tree of models/efficientnet.py.

torchvision's names and ours:

    features.0.{0,1}                 stem/{conv,bn}
    features.S.B.block.K.{0,1}       blockS_B/{expand,depthwise,project}/{conv,bn}
    features.S.B.block.K.fc{1,2}     blockS_B/se/fc{1,2}
    features.H.{0,1}                 head/{conv,bn}   (H: the last features index)
    classifier.1                     classifier

Inside a block the Sequential index K of a part depends on whether the block
has an expansion conv (torchvision leaves it out when it would not change the
width), so the parts are named by their place around the squeeze-excitation
module: two before it are expand and depthwise, one is depthwise alone, the
one after it is the projection. A key that fits none of this is an error
naming it.
"""

import re

from flax import traverse_util
import numpy as np

from mi_jax.convert import torchvision

_BN_FIELDS = {
    'weight': ('params', 'scale'),
    'bias': ('params', 'bias'),
    'running_mean': ('batch_stats', 'mean'),
    'running_var': ('batch_stats', 'var'),
}
_BLOCK_KEY = re.compile(r'^features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)$')
_CONV_BN_KEY = re.compile(r'^features\.(\d+)\.([01])\.(\w+)$')


def _conv_bn_leaf(part: str, index: str, field: str, key: str):
  """(collection, path, array transform) of `field` of a torchvision Conv2dNormActivation's conv (0) or BN (1)."""
  if index not in ('0', '1'):
    raise ValueError(f'{key}: expected index 0 (conv) or 1 (batch norm) in a conv-norm-activation')
  if index == '0':
    if field != 'weight':
      raise ValueError(f'{key}: a conv here has no bias in torchvision EfficientNet')
    return 'params', f'{part}/conv/kernel', 'conv'
  if field not in _BN_FIELDS:
    raise ValueError(f'{key}: not a BatchNorm field ({", ".join(_BN_FIELDS)})')
  collection, flax_field = _BN_FIELDS[field]
  return collection, f'{part}/bn/{flax_field}', None


def _block_part_names(indices: set[int], se_index: int, block: str) -> dict[int, str]:
  """Sequential index within block.K -> part name, from the squeeze-excitation's position."""
  before = {2: ('expand', 'depthwise'), 1: ('depthwise',)}.get(se_index)
  if before is None or indices != set(range(se_index + 2)):
    raise ValueError(
        f'{block}.block: parts {sorted(indices)} with squeeze-excitation at {se_index}; expected '
        '[expand,] depthwise, squeeze-excitation, project'
    )
  return {**dict(enumerate(before)), se_index: 'se', se_index + 1: 'project'}


def to_flax(state_dict: dict) -> dict:
  """torchvision EfficientNet state dict ({name: array}) -> {'params': ..., 'batch_stats': ...}."""
  state_dict = {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
  feature_indices = [int(k.split('.')[1]) for k in state_dict if re.match(r'^features\.\d+\.', k)]
  if not feature_indices:
    raise ValueError('no features.* keys: not a torchvision EfficientNet state dict')
  head = max(feature_indices)
  # Group the block keys by block, so each block's parts can be named from its squeeze-excitation's position.
  blocks, leaves, unknown = {}, {}, []
  for key, value in state_dict.items():
    block = _BLOCK_KEY.match(key)
    conv_bn = _CONV_BN_KEY.match(key)
    if block and 0 < int(block.group(1)) < head:
      blocks.setdefault((block.group(1), block.group(2)), {})[(int(block.group(3)), block.group(4))] = value
    elif conv_bn and conv_bn.group(1) in ('0', str(head)):
      part = 'stem' if conv_bn.group(1) == '0' else 'head'
      leaves[key] = _conv_bn_leaf(part, conv_bn.group(2), conv_bn.group(3), key) + (value,)
    elif key in ('classifier.1.weight', 'classifier.1.bias'):
      is_weight = key.endswith('weight')
      leaves[key] = ('params', f'classifier/{"kernel" if is_weight else "bias"}', 'dense' if is_weight else None, value)
    else:
      unknown.append(key)
  if unknown:
    raise ValueError('keys that are not part of a torchvision EfficientNet: ' + ', '.join(sorted(unknown)))
  for (stage, index), fields in blocks.items():
    name, torch_name = f'block{stage}_{index}', f'features.{stage}.{index}'
    se_indices = {k for k, rest in fields if rest.startswith('fc')}
    if len(se_indices) != 1:
      raise ValueError(f'{torch_name}.block: expected one squeeze-excitation (fc1/fc2), found {sorted(se_indices)}')
    parts = _block_part_names({k for k, _ in fields}, se_indices.pop(), torch_name)
    for (k, rest), value in fields.items():
      key = f'{torch_name}.block.{k}.{rest}'
      if parts[k] == 'se':
        squeeze = re.match(r'^(fc[12])\.(weight|bias)$', rest)
        if not squeeze:
          raise ValueError(f'{key}: expected fc1/fc2 weight or bias in the squeeze-excitation')
        is_weight = squeeze.group(2) == 'weight'
        leaves[key] = (
            'params',
            f'{name}/se/{squeeze.group(1)}/{"kernel" if is_weight else "bias"}',
            'conv' if is_weight else None,
            value,
        )
      else:
        index_field = rest.split('.')
        if len(index_field) != 2:
          raise ValueError(f'{key}: expected <0 conv | 1 batch norm>.<field>')
        leaves[key] = _conv_bn_leaf(f'{name}/{parts[k]}', *index_field, key) + (value,)
  flat = {}
  for key, (collection, path, transform, value) in leaves.items():
    value = np.asarray(value, np.float32)
    if transform in ('conv', 'dense'):
      value = torchvision.flax_kernel(value, key, transform)
    flat[f'{collection}/{path}'] = value
  return traverse_util.unflatten_dict(flat, sep='/')
