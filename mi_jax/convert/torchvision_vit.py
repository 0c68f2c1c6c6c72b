"""torchvision VisionTransformer state dict -> the Flax tree of mi_jax.models.vit.

Key names are torchvision's (`vit_b_16`, and the official RoLSS code's vendored copy, which only adds
skip settings): conv_proj, class_token, encoder.pos_embedding, encoder.layers.encoder_layer_N.{ln_1,
self_attention.in_proj_*, self_attention.out_proj, ln_2, mlp}, encoder.ln, heads.head. The MLP's
linears are `mlp.0` / `mlp.3`, or `mlp.linear_1` / `mlp.linear_2` in files written before torchvision
0.13 (its ImageNet ViT files among them; torchvision renames them on load, so do we). The head
becomes `classifier`, so config.model.init_reinit's default re-initialises it for another class count.
Any other key (a `heads.pre_logits` representation layer, a conv stem) is an error naming it.
"""

import re

from flax import traverse_util
import numpy as np

from mi_jax.convert import torchvision

_BLOCK = re.compile(r'^encoder\.layers\.encoder_layer_(\d+)\.(.+)$')
# Inside an encoder block: torch module path -> Flax module path.
_BLOCK_MODULES = {
    'ln_1': 'ln_1',
    'ln_2': 'ln_2',
    'self_attention.out_proj': 'self_attention/out_proj',
    'mlp.0': 'mlp_in',
    'mlp.linear_1': 'mlp_in',
    'mlp.3': 'mlp_out',
    'mlp.linear_2': 'mlp_out',
}
# Outside the blocks.
_TOP_MODULES = {'conv_proj': 'conv_proj', 'encoder.ln': 'encoder_ln', 'heads.head': 'classifier'}
_LAYER_NORMS = ('ln_1', 'ln_2', 'encoder_ln')


def _leaf(key: str, value: np.ndarray, flax_module: str, field: str):
  """(flax path, value in Flax layout) for `field` (weight/bias) of a torch Linear, Conv2d or LayerNorm."""
  if field == 'bias':
    return f'{flax_module}/bias', value
  if field != 'weight':
    return None
  if flax_module.split('/')[-1] in _LAYER_NORMS:
    return f'{flax_module}/scale', value
  return f'{flax_module}/kernel', torchvision.flax_kernel(value, key, 'conv' if flax_module == 'conv_proj' else 'dense')


def _map_key(key: str, value: np.ndarray):
  """torch key -> (flax path under params, value), or None for a key that is not torchvision ViT's."""
  if key == 'class_token':
    return 'class_token', value
  if key == 'encoder.pos_embedding':
    return 'pos_embedding', value
  block = _BLOCK.match(key)
  if block:
    prefix, rest = f'encoder_layer_{block.group(1)}', block.group(2)
    # nn.MultiheadAttention keeps q, k and v stacked in one [3 * hidden, hidden] matrix, as our `in_proj`.
    if rest == 'self_attention.in_proj_weight':
      if value.ndim != 2:
        raise ValueError(f'{key}: expected [3 * hidden, hidden], got shape {value.shape}')
      return f'{prefix}/self_attention/in_proj/kernel', value.T
    if rest == 'self_attention.in_proj_bias':
      return f'{prefix}/self_attention/in_proj/bias', value
    module, _, field = rest.rpartition('.')
    if module in _BLOCK_MODULES:
      return _leaf(key, value, f'{prefix}/{_BLOCK_MODULES[module]}', field)
    return None
  module, _, field = key.rpartition('.')
  if module in _TOP_MODULES:
    return _leaf(key, value, _TOP_MODULES[module], field)
  return None


def to_flax(state_dict: dict) -> dict:
  """{torch key: array} of a torchvision ViT -> {'params': ..., 'batch_stats': {}} (a ViT has no BatchNorm)."""
  flat, unknown = {}, []
  for key, value in state_dict.items():
    mapped = _map_key(key, np.asarray(value))
    if mapped is None:
      unknown.append(key)
    else:
      path, array = mapped
      flat[path] = np.asarray(array, np.float32)
  if unknown:
    shown = ', '.join(unknown[:10]) + (f' (and {len(unknown) - 10} more)' if len(unknown) > 10 else '')
    raise ValueError(
        f'{len(unknown)} tensors are not part of a torchvision ViT (conv_proj, class_token, encoder.*, '
        f'heads.head): {shown}'
    )
  return {'params': traverse_util.unflatten_dict(flat, sep='/'), 'batch_stats': {}}
