"""Import torchvision ResNet/DenseNet weights (ImageNet files, PPA/official-code target checkpoints).

The state dict is read with `torch.load(weights_only=True)` (no code from the
file runs); wrappers are unwrapped (`state_dict`, `model_state_dict`), `module.`
(DataParallel) and `model.` (PPA's Classifier) prefixes stripped, and
DenseNet's legacy key names (`norm.1`, `conv.2`) renamed as torchvision does.
Every tensor is mapped by name onto the Flax tree of `models.build_model`, then
merged into a freshly initialised tree with `defenses.transplant`, so a missing,
extra or wrongly shaped tensor is an error listing all of them -- unless the
caller names it in `reinit` (e.g. the classifier head for another class count).
"""

import importlib
import re
from typing import Sequence

from flax import traverse_util
import numpy as np

from mi_jax import models
from mi_jax.convert import torch_compat
from mi_jax.defenses import transplant as transplant_lib

_DENSENET_LEGACY = re.compile(
    r'^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$'
)
_BN_FIELDS = {
    'weight': ('params', 'scale'),
    'bias': ('params', 'bias'),
    'running_mean': ('batch_stats', 'mean'),
    'running_var': ('batch_stats', 'var'),
}


def flax_kernel(value: np.ndarray, key: str, kind: str = 'by_rank') -> np.ndarray:
  """A torch weight in Flax's layout: conv [O, I, kh, kw] -> [kh, kw, I, O], linear [out, in] -> [in, out].

  `kind` 'conv' or 'dense' demands that rank; 'by_rank' takes either. Another shape is an error naming `key`.
  """
  if kind in ('conv', 'by_rank') and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if kind in ('dense', 'by_rank') and value.ndim == 2:
    return value.T
  want = {'conv': 'a conv weight [O, I, kh, kw]', 'dense': 'a linear weight [out, in]'}.get(
      kind, 'a conv or linear weight'
  )
  raise ValueError(f'{key}: expected {want}, got shape {value.shape}')


def read_state_dict(path: str) -> dict:
  """{name: float32 numpy array} from a torch file, wrappers and prefixes removed."""
  obj = torch_compat.load_torch_file(path)
  for key in ('model_state_dict', 'state_dict', 'model'):
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
      obj = obj[key]
      break
  return clean_state_dict({k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, 'detach')})


def clean_state_dict(state_dict: dict) -> dict:
  out = {}
  for key, value in state_dict.items():
    for prefix in ('module.', 'model.'):
      if key.startswith(prefix):
        key = key[len(prefix) :]
    legacy = _DENSENET_LEGACY.match(key)
    if legacy:  # features.denseblock1.denselayer1.norm.1.weight -> ...norm1.weight
      key = legacy.group(1) + legacy.group(2)
    out[key] = np.asarray(value)
  return out


def _flax_path(key: str, kind: str):
  """torch key -> (collection, flax path, transform) or None for buffers to drop."""
  *module, field = key.split('.')
  if field == 'num_batches_tracked':
    return None
  if kind == 'generic':
    return _generic_flax_path(module, field)
  if kind == 'resnet':
    # layer1.0.downsample.0 -> layer1_0/downsample_conv; layer1.0.conv1 -> layer1_0/conv1
    name = '.'.join(module)
    name = re.sub(r'^layer(\d+)\.(\d+)\.', r'layer\1_\2/', name)
    name = name.replace('downsample.0', 'downsample_conv').replace('downsample.1', 'downsample_bn')
  else:  # densenet: features.denseblock1.denselayer2.norm1 -> denseblock1/denselayer2/norm1
    name = '.'.join(module)
    name = re.sub(r'^features\.', '', name).replace('.', '/')
  leaf = name.split('/')[-1]
  is_bn = re.match(r'^(bn\d|norm\d?|downsample_bn)$', leaf) is not None
  if is_bn:
    collection, flax_field = _BN_FIELDS[field]
    return collection, f'{name}/{flax_field}', None
  if field == 'weight':
    return 'params', f'{name}/kernel', 'conv' if leaf not in ('fc', 'classifier') else 'dense'
  return 'params', f'{name}/bias', None


def _generic_flax_path(module, field):
  """Modules named as in torch, a Sequential index joined to its parent (`repeat_1.0.branch1.1.conv` ->
  `repeat_1_0/branch1_1/conv`); BatchNorms are the modules called `bn` or `last_bn`; the layout of a
  weight follows from its rank (see to_flax)."""
  parts = []
  for part in module:
    if part.isdigit() and parts:
      parts[-1] = f'{parts[-1]}_{part}'
    else:
      parts.append(part)
  name = '/'.join(parts)
  if parts[-1] in ('bn', 'last_bn'):
    collection, flax_field = _BN_FIELDS[field]
    return collection, f'{name}/{flax_field}', None
  if field == 'weight':
    return 'params', f'{name}/kernel', 'by_rank'
  return 'params', f'{name}/bias', None


def _typed_to_flax(state_dict: dict) -> dict:
  """Modules named as in torch (`_generic_flax_path`), each typed by its tensors: a module with running
  statistics is a BatchNorm, a 4-D weight a conv, a 2-D weight a linear layer, a lone 1-D weight a PReLU
  (`alpha`). A BatchNorm shift the reference keeps frozen at 0 is dropped when it is 0."""
  modules = {}
  for key, value in state_dict.items():
    module, _, field = key.rpartition('.')
    modules.setdefault(module, {})[field] = value
  flat = {}
  for module, fields in modules.items():
    path = _generic_flax_path(module.split('.'), 'bias')[1].rpartition('/')[0]
    if 'running_mean' in fields:
      for field, value in fields.items():
        if field == 'num_batches_tracked' or (field == 'bias' and module == 'bn' and not np.any(value)):
          continue
        collection, flax_field = _BN_FIELDS[field]
        flat[f'{collection}/{path}/{flax_field}'] = value
    elif fields.get('weight') is not None and fields['weight'].ndim == 1 and 'bias' not in fields:
      flat[f'params/{path}/alpha'] = fields['weight']
    else:
      for field, value in fields.items():
        if field == 'weight':
          value, field = flax_kernel(value, f'{module}.weight'), 'kernel'
        flat[f'params/{path}/{field}'] = value
  return traverse_util.unflatten_dict({k: np.asarray(v, np.float32) for k, v in flat.items()}, sep='/')


# torch_layout kinds -> the mi_jax.convert module with that family's to_flax(state_dict).
LAYOUT_MODULES = {'vit': 'torchvision_vit', 'efficientnet': 'torchvision_efficientnet', 'maxvit': 'torchvision_maxvit'}


def to_flax(state_dict: dict, kind: str) -> dict:
  """torch state dict -> {'params': ..., 'batch_stats': ...} with Flax layouts.

  kind: 'resnet' or 'densenet' (torchvision's key names, legacy DenseNet keys included), or
  'generic' for models whose Flax names mirror the torch modules (Inception-v3, FID Inception,
  FaceNet)."""
  if kind == 'typed':  # the low-resolution protocol's VGG16 and IR networks (models/evolve.py)
    return _typed_to_flax(state_dict)
  if kind in LAYOUT_MODULES:  # families whose key mapping lives in its own module: its to_flax(state_dict)
    return importlib.import_module(f'mi_jax.convert.{LAYOUT_MODULES[kind]}').to_flax(state_dict)
  if kind not in ('resnet', 'densenet', 'generic'):
    raise ValueError(f"kind {kind!r}: expected 'resnet', 'densenet', 'generic' or 'typed'")
  flat = {}
  for key, value in state_dict.items():
    mapped = _flax_path(key, kind)
    if mapped is None:
      continue
    collection, path, transform = mapped
    if transform == 'by_rank' and value.ndim not in (2, 4):
      transform = None  # e.g. a PReLU's weight
    if transform is not None:
      value = flax_kernel(value, key, transform)
    flat[f'{collection}/{path}'] = value.astype(np.float32)
  return traverse_util.unflatten_dict(flat, sep='/')


def merge_into(converted: dict, fresh: dict, reinit: Sequence[str] = (), drop: Sequence[str] = ()):
  """Fill a freshly initialised {'params', 'batch_stats'} tree; (tree, TransplantReport).

  `reinit` leaves keep their fresh values (and the file's are dropped); `drop` leaves of the
  file have no place in the model (Inception-v3's auxiliary head)."""
  fresh = {k: fresh.get(k, {}) for k in ('params', 'batch_stats')}
  try:
    merged, report = transplant_lib.transplant(converted, fresh, reinit=reinit, drop=tuple(reinit) + tuple(drop))
    return {'batch_stats': {}, **merged}, report  # a model without BatchNorm (ViT) still has the collection
  except transplant_lib.TransplantError as e:
    raise transplant_lib.TransplantError(
        f'{e}\nThe weight file does not fit config.model; for another class count name the head in '
        f"config.model.init_reinit (ResNet: 'fc', DenseNet: 'classifier')."
    ) from None


def kind_of(model_name: str) -> str:
  """The key-name layout of torch files for the model (the registry's `torch_layout`)."""
  kind = models.family_of(model_name).torch_layout
  if kind is None:
    importable = [n for n in models.model_names() if models.family_of(n).torch_layout]
    raise ValueError(f'config.model.name={model_name!r}: torch weights can be imported for {", ".join(importable)}')
  return kind
