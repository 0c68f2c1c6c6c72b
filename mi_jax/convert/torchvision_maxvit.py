"""torchvision MaxViT state dicts (ImageNet `maxvit_t`, the RoLSS code's targets) -> the Flax tree of models/maxvit.py.

Key names (torchvision `MaxVit`):
  stem.0.0 / stem.0.1 / stem.1.0                         -> stem_conv / stem_bn / stem_conv2
  blocks.S.layers.L.layers.MBconv.proj.{0,1}             -> stageS+1_L_mbconv/proj (the 1x1 conv; the
                                                            avg-pool before it, where there is one, has no weights)
  ....MBconv.layers.{pre_norm, conv_a.0, conv_a.1, conv_b.0, conv_b.1, squeeze_excitation.fc1/.fc2, conv_c}
                                                         -> .../{pre_norm, conv_a, conv_a_bn, conv_b, conv_b_bn,
                                                            se_reduce/se_expand, conv_c}
  ....{window,grid}_attention.attn_layer.0 / .attn_layer.1.{to_qkv, merge, relative_position_bias_table}
                                                         -> stageS+1_L_{window,grid}_attention/attn_norm /
                                                            attention/{to_qkv, merge, relative_position_bias_table}
  ....mlp_layer.{0, 1, 3}                                -> .../{mlp_norm, mlp_hidden, mlp_out}
  classifier.{2, 3, 5}                                   -> head_norm, head_dense, classifier
The buffers `relative_position_index` (recomputed by the model; checked to be the same) and
`num_batches_tracked` are dropped. No Flax name contains 'fc', so the default config.model.init_reinit
('fc', 'classifier') re-initialises the last linear layer only.
"""

import re

from flax import traverse_util
import numpy as np

from mi_jax.convert import torchvision
from mi_jax.models import maxvit

_BN_FIELDS = {
    'weight': ('params', 'scale'),
    'bias': ('params', 'bias'),
    'running_mean': ('batch_stats', 'mean'),
    'running_var': ('batch_stats', 'var'),
}
_LN_FIELDS = {'weight': ('params', 'scale'), 'bias': ('params', 'bias')}

# torch module path (after the layer prefix) -> (Flax module path, how its tensors map).
_MBCONV_MODULES = {
    r'proj\.[01]': ('proj', 'conv'),
    r'layers\.pre_norm': ('pre_norm', 'bn'),
    r'layers\.conv_a\.0': ('conv_a', 'conv'),
    r'layers\.conv_a\.1': ('conv_a_bn', 'bn'),
    r'layers\.conv_b\.0': ('conv_b', 'conv'),
    r'layers\.conv_b\.1': ('conv_b_bn', 'bn'),
    r'layers\.squeeze_excitation\.fc1': ('se_reduce', 'conv'),
    r'layers\.squeeze_excitation\.fc2': ('se_expand', 'conv'),
    r'layers\.conv_c': ('conv_c', 'conv'),
}
_ATTENTION_MODULES = {
    r'attn_layer\.0': ('attn_norm', 'ln'),
    r'attn_layer\.1\.to_qkv': ('attention/to_qkv', 'dense'),
    r'attn_layer\.1\.merge': ('attention/merge', 'dense'),
    r'attn_layer\.1': ('attention', 'table'),
    r'mlp_layer\.0': ('mlp_norm', 'ln'),
    r'mlp_layer\.1': ('mlp_hidden', 'dense'),
    r'mlp_layer\.3': ('mlp_out', 'dense'),
}
_TOP_MODULES = {
    r'stem\.0\.0': ('stem_conv', 'conv'),
    r'stem\.0\.1': ('stem_bn', 'bn'),
    r'stem\.1\.0': ('stem_conv2', 'conv'),
    r'classifier\.2': ('head_norm', 'ln'),
    r'classifier\.3': ('head_dense', 'dense'),
    r'classifier\.5': ('classifier', 'dense'),
}
_LAYER = re.compile(r'^blocks\.(\d+)\.layers\.(\d+)\.layers\.(MBconv|window_attention|grid_attention)\.(.+)$')


def _module_of(module: str):
  """torch module path -> (Flax module path, kind) or None."""
  layer = _LAYER.match(module)
  if layer is None:
    table, rest, prefix = _TOP_MODULES, module, ''
  else:
    stage, index, part, rest = layer.groups()
    suffix = 'mbconv' if part == 'MBconv' else part
    prefix = f'stage{int(stage) + 1}_{index}_{suffix}/'
    table = _MBCONV_MODULES if part == 'MBconv' else _ATTENTION_MODULES
  for pattern, (name, kind) in table.items():
    if re.fullmatch(pattern, rest):
      return prefix + name, kind
  return None


def _leaf(module: str, field: str, value: np.ndarray):
  """One tensor -> (collection/path, value), None to drop it; ValueError for what no MaxViT holds."""
  if field == 'num_batches_tracked':
    return None
  mapped = _module_of(module)
  if mapped is None:
    raise KeyError(module)
  name, kind = mapped
  if kind == 'table':
    if field == 'relative_position_index':
      size = int(round(np.sqrt(value.shape[0])))
      if not np.array_equal(value, maxvit.relative_position_index(size)):
        raise ValueError(f'{module}.relative_position_index differs from the relative-position layout of MaxViT')
      return None
    if field != 'relative_position_bias_table':
      raise KeyError(f'{module}.{field}')
    return f'params/{name}/{field}', value
  if kind == 'bn':
    collection, flax_field = _BN_FIELDS[field]
    return f'{collection}/{name}/{flax_field}', value
  if kind == 'ln':
    collection, flax_field = _LN_FIELDS[field]
    return f'{collection}/{name}/{flax_field}', value
  if field == 'bias':
    return f'params/{name}/bias', value
  if field != 'weight':
    raise KeyError(f'{module}.{field}')
  return f'params/{name}/kernel', torchvision.flax_kernel(
      value, f'{module}.weight', 'conv' if kind == 'conv' else 'dense'
  )


def to_flax(state_dict: dict) -> dict:
  """torchvision MaxViT state dict (cleaned: numpy arrays, no wrapper prefixes) -> {'params', 'batch_stats'}."""
  flat, unknown = {}, []
  for key, value in state_dict.items():
    module, _, field = key.rpartition('.')
    try:
      mapped = _leaf(module, field, np.asarray(value))
    except KeyError:
      unknown.append(key)
      continue
    if mapped is not None:
      flat[mapped[0]] = np.asarray(mapped[1], np.float32)
  if unknown:
    raise ValueError(f'not torchvision MaxViT tensors ({len(unknown)}): {", ".join(unknown)}')
  return traverse_util.unflatten_dict(flat, sep='/')
