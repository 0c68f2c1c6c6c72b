"""Import StyleGAN2-ADA PyTorch pickles (`ffhq.pkl`, network snapshots) without running their code.

NVIDIA's loader `exec`s the module source embedded in every persistent object.
Here a restricted unpickler maps those objects to inert stubs that keep only the
module state, allows a short list of tensor-rebuild and container globals, and
refuses anything else by name. Tensors are rebuilt by torch (needed for this step
only), with storages read through `torch.load(weights_only=True)`.

  python -m mi_jax.stylegan.nvidia_pickle ffhq.pkl ~/generators/ffhq

writes `generator.json` + Orbax `variables/` (see checkpoint.py).
"""

import io
import pickle
from typing import Any

import flax
import jax
import numpy as np

from . import checkpoint
from . import networks
from . import ops


class UnsafePickleError(pickle.UnpicklingError):
  """The pickle references a global that the restricted loader does not allow."""


class PersistentStub:
  """What NVIDIA's `persistent_class` objects unpickle to here: class name and module state, no code."""

  def __init__(self, class_name: str, state: dict):
    self.class_name = class_name
    self.state = state

  def __repr__(self):
    return f'PersistentStub({self.class_name})'


class EasyDict(dict):
  """Stands in for dnnlib.util.EasyDict (a dict with attribute access)."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError as e:
      raise AttributeError(name) from e


def _reconstruct_persistent_obj(meta: dict) -> PersistentStub:
  if not isinstance(meta, dict) or meta.get('type') != 'class':
    raise UnsafePickleError(f'unexpected persistent object record: {type(meta).__name__}')
  if meta.get('version') != 6:
    raise UnsafePickleError(f'persistence format version {meta.get("version")}; only version 6 is supported')
  return PersistentStub(meta['class_name'], meta['state'])  # meta['module_src'] is never executed


def _load_storage_from_bytes(data: bytes):
  import torch  # pylint: disable=g-import-not-at-top

  return torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)


def _allowed_globals() -> dict:
  import collections  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch._utils  # pylint: disable=g-import-not-at-top

  allowed = {
      ('torch_utils.persistence', '_reconstruct_persistent_obj'): _reconstruct_persistent_obj,
      ('dnnlib.util', 'EasyDict'): EasyDict,
      ('dnnlib', 'EasyDict'): EasyDict,
      ('torch.storage', '_load_from_bytes'): _load_storage_from_bytes,
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('builtins', 'set'): set,
      ('numpy', 'dtype'): np.dtype,
      ('numpy', 'ndarray'): np.ndarray,
      ('torch', 'Size'): torch.Size,
  }
  for name in ('_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_parameter', '_rebuild_parameter_with_state'):
    if hasattr(torch._utils, name):
      allowed[('torch._utils', name)] = getattr(torch._utils, name)
  for core in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # numpy 2 renamed numpy.core
    allowed[(core, 'scalar')] = np._core.multiarray.scalar
    allowed[(core, '_reconstruct')] = np._core.multiarray._reconstruct
  return allowed


class RestrictedUnpickler(pickle.Unpickler):

  def __init__(self, file):
    super().__init__(file)
    self._allowed = _allowed_globals()

  def find_class(self, module, name):
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f'refusing to load global {module}.{name}: not a StyleGAN2-ADA network pickle, or one with objects '
          f'this importer does not know. Nothing from the pickle was executed.'
      ) from None


def load_pickle(path: str) -> Any:
  """The pickle's top-level object, with persistent modules as PersistentStubs."""
  with open(path, 'rb') as f:
    return RestrictedUnpickler(f).load()


def _state_dict(stub: PersistentStub, prefix: str = '') -> dict[str, np.ndarray]:
  """The module's `state_dict()`: its parameters and persistent buffers, then its children's."""
  state = stub.state
  out = {}
  non_persistent = state.get('_non_persistent_buffers_set') or set()
  for kind in ('_parameters', '_buffers'):
    for name, tensor in (state.get(kind) or {}).items():
      if tensor is None or (kind == '_buffers' and name in non_persistent):
        continue
      out[prefix + name] = tensor.detach().cpu().numpy()
  for name, child in (state.get('_modules') or {}).items():
    if child is None:
      continue
    if not isinstance(child, PersistentStub):
      raise UnsafePickleError(f'{prefix}{name} is a {type(child).__name__}, not a persistent module')
    out.update(_state_dict(child, f'{prefix}{name}.'))
  return out


def read_network(path: str, network: str = 'G_ema') -> tuple[dict[str, np.ndarray], dict]:
  """(state_dict as numpy arrays, constructor kwargs) of `network` ('G_ema', 'G') in an NVIDIA pickle."""
  data = load_pickle(path)
  if not isinstance(data, dict) or network not in data:
    keys = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise ValueError(f'{path}: expected a StyleGAN2-ADA network pickle with a {network!r} entry, found {keys}')
  stub = data[network]
  if not isinstance(stub, PersistentStub):
    raise ValueError(f'{path}: {network} is a {type(stub).__name__}, not a persistent network')
  kwargs = stub.state.get('_init_kwargs')
  if kwargs is None:
    raise ValueError(f'{path}: {network} has no _init_kwargs')
  return _state_dict(stub), _plain(kwargs)


def _plain(value):
  """EasyDicts and nested containers -> plain dicts/lists (JSON-able)."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


# ----------------------------------------------------------------------------
# Constructor kwargs -> GeneratorConfig.

_MAPPING_DEFAULTS = dict(
    num_layers=8, embed_features=None, layer_features=None, activation='lrelu', lr_multiplier=0.01, w_avg_beta=0.995
)
_SYNTHESIS_DEFAULTS = dict(
    channel_base=32768,
    channel_max=512,
    num_fp16_res=0,
    conv_clamp=None,
    architecture='skip',
    resample_filter=[1, 3, 3, 1],
    use_noise=True,
    activation='lrelu',
    fp16_channels_last=False,
    fused_modconv_default=True,
)
_IGNORED = {
    'num_fp16_res': 'fp16 runs only on CUDA in the reference; fp32 here (bf16 on request)',
    'fp16_channels_last': 'a memory layout',
    'fused_modconv_default': 'fused and non-fused modulated convs are the same operator',
}


def config_from_init_kwargs(kwargs: dict) -> networks.GeneratorConfig:
  """GeneratorConfig for a reference `Generator(**kwargs)`; raises on options this port does not implement."""
  top = dict(kwargs)
  mapping = {**_MAPPING_DEFAULTS, **(top.pop('mapping_kwargs', None) or {})}
  synthesis = {**_SYNTHESIS_DEFAULTS, **(top.pop('synthesis_kwargs', None) or {})}
  try:
    config = networks.GeneratorConfig(
        z_dim=top.pop('z_dim'),
        c_dim=top.pop('c_dim'),
        w_dim=top.pop('w_dim'),
        img_resolution=top.pop('img_resolution'),
        img_channels=top.pop('img_channels'),
        mapping_layers=mapping.pop('num_layers'),
        mapping_lr_multiplier=mapping.pop('lr_multiplier'),
        w_avg_beta=mapping.pop('w_avg_beta'),
        channel_base=synthesis.pop('channel_base'),
        channel_max=synthesis.pop('channel_max'),
        conv_clamp=synthesis.pop('conv_clamp'),
        use_noise=synthesis.pop('use_noise'),
        resample_filter=tuple(synthesis.pop('resample_filter')),
    )
  except KeyError as e:
    raise ValueError(f'generator kwargs lack {e}; got {sorted(kwargs)}') from None
  unsupported = []
  for name, value, expected in (
      ('mapping_kwargs.embed_features', mapping.pop('embed_features'), (None, config.w_dim)),
      ('mapping_kwargs.layer_features', mapping.pop('layer_features'), (None, config.w_dim)),
      ('mapping_kwargs.activation', mapping.pop('activation'), ('lrelu',)),
      ('synthesis_kwargs.architecture', synthesis.pop('architecture'), ('skip',)),
      ('synthesis_kwargs.activation', synthesis.pop('activation'), ('lrelu',)),
  ):
    if value not in expected:
      unsupported.append(f'{name}={value!r} (supported: {expected})')
  for name in _IGNORED:
    synthesis.pop(name, None)
  unsupported += [f'{k}={v!r}' for k, v in top.items()]
  unsupported += [f'mapping_kwargs.{k}={v!r}' for k, v in mapping.items()]
  unsupported += [f'synthesis_kwargs.{k}={v!r}' for k, v in synthesis.items()]
  if unsupported:
    raise ValueError('generator options this port does not implement: ' + ', '.join(unsupported))
  return config


# ----------------------------------------------------------------------------
# state_dict -> Flax variables.


def _torch_to_flax(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
  """(collection + module path, re-laid array) for one state_dict entry (constant filters are checked apart)."""
  *path, leaf = key.split('.')
  if leaf in ('w_avg', 'noise_const'):
    return ('buffers', *path, leaf), value
  if leaf == 'weight':
    if value.ndim == 2:  # FC [out, in]
      return ('params', *path, 'kernel'), value.T
    if value.ndim == 4:  # conv [O, I, kh, kw] -> [kh, kw, I, O]
      return ('params', *path, 'kernel'), value.transpose(2, 3, 1, 0)
  if leaf == 'const':  # [C, 4, 4] -> [4, 4, C]
    return ('params', *path, leaf), value.transpose(1, 2, 0)
  return ('params', *path, leaf), value


def abstract_variables(config: networks.GeneratorConfig) -> dict:
  """Shapes and dtypes of a Generator's variables, without computing them."""
  generator = networks.Generator(config)
  z = np.zeros((1, config.z_dim), np.float32)
  c = np.zeros((1, config.c_dim), np.float32) if config.c_dim else None
  return jax.eval_shape(lambda: generator.init(jax.random.key(0), z, c))


def to_variables(state_dict: dict[str, np.ndarray], config: networks.GeneratorConfig) -> dict:
  """{'params', 'buffers'} for networks.Generator(config); raises listing every missing/extra/mis-shaped entry."""
  expected = flax.traverse_util.flatten_dict(abstract_variables(config))
  flat, found, problems = {}, set(), []
  filter_taps = ops.setup_filter(config.resample_filter)
  for key, value in state_dict.items():
    if key.endswith('resample_filter'):  # a constant of the architecture: checked, not stored
      if value.shape != filter_taps.shape or not np.allclose(value, filter_taps):
        problems.append(f'{key}: filter {value.tolist()} differs from resample_filter={config.resample_filter}')
      continue
    path, array = _torch_to_flax(key, value)
    found.add(path)
    if path not in expected:
      problems.append(f'{key}: no such variable in the generator ({"/".join(path)})')
    elif array.shape != expected[path].shape:
      problems.append(f'{key}: shape {list(value.shape)} does not fit {"/".join(path)} {list(expected[path].shape)}')
    else:
      flat[path] = np.asarray(array, np.float32)
  problems += [f'{"/".join(p)}: missing from the state_dict' for p in expected if p not in found]
  if problems:
    raise ValueError(
        f'state_dict does not match the generator config ({len(problems)} problems):\n  ' + '\n  '.join(problems[:40])
    )
  return flax.traverse_util.unflatten_dict(flat)


def import_pickle(pickle_path: str, out_dir: str, network: str = 'G_ema') -> networks.GeneratorConfig:
  """Converts `network` of an NVIDIA pickle into a generator directory; returns its config."""
  state_dict, kwargs = read_network(pickle_path, network)
  config = config_from_init_kwargs(kwargs)
  variables = to_variables(state_dict, config)
  checkpoint.save_generator(
      out_dir, config, variables, source={'pickle': str(pickle_path), 'network': network, 'init_kwargs': kwargs}
  )
  return config


def main(argv):
  if len(argv) not in (3, 4):
    raise SystemExit('usage: python -m mi_jax.stylegan.nvidia_pickle NETWORK.pkl OUT_DIR [G_ema|G]')
  config = import_pickle(argv[1], argv[2], *argv[3:])
  print(f'wrote {argv[2]}: {config}')


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top

  main(sys.argv)
