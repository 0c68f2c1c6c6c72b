"""NVIDIA StyleGAN2-ADA pickle import on pickles the test writes itself with the same structure:
persistent-object records (`torch_utils.persistence._reconstruct_persistent_obj`), `dnnlib.util.EasyDict`
kwargs and torch tensors, at the ffhq-1024 config (the layout of NVlabs/stylegan2-ada-pytorch's pickles, torch_utils/persistence.py).
"""

import collections
import math
import os
import pickle
import sys
import types

import flax
import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from mi_jax.stylegan import checkpoint, networks, nvidia_pickle  # pylint: disable=g-import-not-at-top

# ------------------------------------------------------------------ a pickle writer with NVIDIA's structure


@pytest.fixture
def nvidia_modules(monkeypatch):
  """Importable stand-ins for torch_utils.persistence and dnnlib.util, so pickle can name their globals."""
  persistence = types.ModuleType('torch_utils.persistence')
  util = types.ModuleType('dnnlib.util')

  def _reconstruct_persistent_obj(meta):  # never called: the importer must not resolve to this
    raise AssertionError('NVIDIA reconstruction code ran')

  class EasyDict(dict):
    pass

  for obj, module in ((_reconstruct_persistent_obj, persistence), (EasyDict, util)):
    obj.__module__ = module.__name__
    obj.__qualname__ = obj.__name__
    setattr(module, obj.__name__, obj)
  for name, module in (
      ('torch_utils', types.ModuleType('torch_utils')),
      ('torch_utils.persistence', persistence),
      ('dnnlib', types.ModuleType('dnnlib')),
      ('dnnlib.util', util),
  ):
    monkeypatch.setitem(sys.modules, name, module)
  return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)


class FakePersistent:
  """Pickles like an NVIDIA @persistent_class module: (_reconstruct_persistent_obj, (meta,))."""

  def __init__(self, reconstruct, class_name, params=(), buffers=(), children=(), **attrs):
    self.reconstruct = reconstruct
    self.meta = dict(
        type='class',
        version=6,
        module_src='raise SystemExit("module_src must never run")',
        class_name=class_name,
        state=dict(
            training=False,
            _parameters=collections.OrderedDict(params),
            _buffers=collections.OrderedDict(buffers),
            _non_persistent_buffers_set=set(),
            _forward_hooks=collections.OrderedDict(),
            _modules=collections.OrderedDict(children),
            **attrs,
        ),
    )

  def __reduce__(self):
    return self.reconstruct, (self.meta,)


def build_generator_pickle(path, mods, kwargs, fill):
  """Writes {'G', 'D', 'G_ema', ...} with a G_ema module tree shaped like networks.Generator(**kwargs).

  `fill(name, shape)` returns each tensor's values. Shapes follow the reference constructors, written
  out here independently of the importer (torch layouts: FC [out, in], conv [O, I, kh, kw]).
  """
  make = lambda cls, **kw: FakePersistent(mods.reconstruct, f'training.networks.{cls}', **kw)
  param = lambda name, shape: torch.nn.Parameter(torch.as_tensor(fill(name, shape)), requires_grad=False)
  buffer = lambda name, shape: torch.as_tensor(fill(name, shape))
  z_dim, w_dim, res, img_channels = kwargs['z_dim'], kwargs['w_dim'], kwargs['img_resolution'], kwargs['img_channels']
  mk, sk = kwargs['mapping_kwargs'], kwargs['synthesis_kwargs']
  channels = lambda r: min(sk['channel_base'] // r, sk['channel_max'])
  filt = lambda name: (name, torch.as_tensor(np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64))

  fcs = {}
  for i in range(mk['num_layers']):
    fan_in = z_dim if i == 0 else w_dim
    fcs[f'fc{i}'] = make(
        'FullyConnectedLayer',
        params=[
            ('weight', param(f'mapping.fc{i}.weight', (w_dim, fan_in))),
            ('bias', param(f'mapping.fc{i}.bias', (w_dim,))),
        ],
    )
  mapping = make('MappingNetwork', buffers=[('w_avg', buffer('mapping.w_avg', (w_dim,)))], children=fcs.items())

  def layer(prefix, cin, cout, r, torgb=False):
    k = 1 if torgb else 3
    affine = make(
        'FullyConnectedLayer',
        params=[
            ('weight', param(f'{prefix}.affine.weight', (cin, w_dim))),
            ('bias', param(f'{prefix}.affine.bias', (cin,))),
        ],
    )
    params = [('weight', param(f'{prefix}.weight', (cout, cin, k, k))), ('bias', param(f'{prefix}.bias', (cout,)))]
    if torgb:
      return make('ToRGBLayer', params=params, children=[('affine', affine)], conv_clamp=sk['conv_clamp'])
    params.append(('noise_strength', param(f'{prefix}.noise_strength', ())))
    return make(
        'SynthesisLayer',
        params=params,
        buffers=[('noise_const', buffer(f'{prefix}.noise_const', (r, r))), filt('resample_filter')],
        children=[('affine', affine)],
        resolution=r,
        conv_clamp=sk['conv_clamp'],
    )

  blocks = {}
  for r in [2**i for i in range(2, int(math.log2(res)) + 1)]:
    p, c = f'synthesis.b{r}', channels(r)
    children = [('conv1', layer(f'{p}.conv1', c, c, r)), ('torgb', layer(f'{p}.torgb', c, img_channels, r, True))]
    params = []
    if r == 4:
      params = [('const', param(f'{p}.const', (c, 4, 4)))]
    else:
      children.insert(0, ('conv0', layer(f'{p}.conv0', channels(r // 2), c, r)))
    blocks[f'b{r}'] = make(
        'SynthesisBlock',
        params=params,
        buffers=[filt('resample_filter')],
        children=children,
        resolution=r,
        architecture='skip',
        use_fp16=False,
    )
  synthesis = make('SynthesisNetwork', children=blocks.items(), img_resolution=res)
  G = make(
      'Generator',
      children=[('synthesis', synthesis), ('mapping', mapping)],
      _init_args=(),
      _init_kwargs=mods.EasyDict(kwargs),
      z_dim=z_dim,
      w_dim=w_dim,
  )
  with open(path, 'wb') as f:
    pickle.dump(dict(G=G, D=None, G_ema=G, augment_pipe=None, training_set_kwargs=mods.EasyDict(path='ffhq.zip')), f)


def ffhq_kwargs(mods):
  return mods.EasyDict(
      z_dim=512,
      c_dim=0,
      w_dim=512,
      img_resolution=1024,
      img_channels=3,
      mapping_kwargs=mods.EasyDict(num_layers=8),
      synthesis_kwargs=mods.EasyDict(channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=None),
  )


def count_entries(tree: FakePersistent) -> tuple[int, int]:
  state = tree.meta['state']
  params, entries = len(state['_parameters']), len(state['_parameters']) + len(state['_buffers'])
  for child in state['_modules'].values():
    p, e = count_entries(child)
    params, entries = params + p, entries + e
  return params, entries


# ------------------------------------------------------------------ tests


def test_ffhq_1024_structure_imports_to_the_exact_generator_tree(tmp_path, nvidia_modules):
  path = str(tmp_path / 'ffhq.pkl')
  rng = np.random.default_rng(0)
  checked = {
      'mapping.fc3.weight',
      'synthesis.b64.conv0.weight',
      'synthesis.b4.const',
      'synthesis.b1024.torgb.weight',
      'synthesis.b256.conv1.affine.weight',
      'synthesis.b8.conv1.noise_const',
      'mapping.w_avg',
      'synthesis.b32.conv1.noise_strength',
  }
  values = {}

  def fill(name, shape):  # random where the test checks values, zeros elsewhere (30M entries)
    if name in checked:
      values[name] = rng.standard_normal(shape).astype(np.float32)
      return values[name]
    return np.zeros(shape, np.float32)

  build_generator_pickle(path, nvidia_modules, ffhq_kwargs(nvidia_modules), fill)
  state_dict, kwargs = nvidia_pickle.read_network(path)
  assert len(state_dict) == 182  # reference §A.10: 138 parameters + 44 buffers
  assert sum(k.endswith('resample_filter') for k in state_dict) == 26
  assert sum(k.endswith('noise_const') for k in state_dict) == 17
  assert (
      sum(
          int(np.prod(v.shape))
          for k, v in state_dict.items()
          if not k.endswith(('resample_filter', 'noise_const', 'w_avg'))
      )
      == 30_370_060
  )
  assert type(kwargs['mapping_kwargs']) is dict  # EasyDicts come back as plain dicts

  config = nvidia_pickle.config_from_init_kwargs(kwargs)
  assert config == networks.GeneratorConfig()  # the ffhq-1024 defaults
  assert config.num_ws == 18
  variables = nvidia_pickle.to_variables(state_dict, config)
  flat = flax.traverse_util.flatten_dict(variables)
  expected = flax.traverse_util.flatten_dict(nvidia_pickle.abstract_variables(config))
  assert {k: v.shape for k, v in flat.items()} == {k: v.shape for k, v in expected.items()}
  assert sum(k[0] == 'params' for k in flat) == 138 and sum(k[0] == 'buffers' for k in flat) == 18

  p, b = variables['params'], variables['buffers']
  np.testing.assert_array_equal(p['mapping']['fc3']['kernel'], values['mapping.fc3.weight'].T)
  np.testing.assert_array_equal(
      p['synthesis']['b64']['conv0']['kernel'], values['synthesis.b64.conv0.weight'].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(p['synthesis']['b4']['const'], values['synthesis.b4.const'].transpose(1, 2, 0))
  np.testing.assert_array_equal(
      p['synthesis']['b1024']['torgb']['kernel'], values['synthesis.b1024.torgb.weight'].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
      p['synthesis']['b256']['conv1']['affine']['kernel'], values['synthesis.b256.conv1.affine.weight'].T
  )
  np.testing.assert_array_equal(
      p['synthesis']['b32']['conv1']['noise_strength'], values['synthesis.b32.conv1.noise_strength']
  )
  np.testing.assert_array_equal(b['synthesis']['b8']['conv1']['noise_const'], values['synthesis.b8.conv1.noise_const'])
  np.testing.assert_array_equal(b['mapping']['w_avg'], values['mapping.w_avg'])


def small_kwargs(mods, **synthesis):
  return mods.EasyDict(
      z_dim=16,
      c_dim=0,
      w_dim=16,
      img_resolution=16,
      img_channels=3,
      mapping_kwargs=mods.EasyDict(num_layers=2),
      synthesis_kwargs=mods.EasyDict(channel_base=128, channel_max=16, num_fp16_res=2, conv_clamp=256, **synthesis),
  )


def random_fill(seed):
  rng = np.random.default_rng(seed)

  def fill(name, shape):
    if name.endswith('resample_filter'):
      return np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64
    return rng.standard_normal(shape).astype(np.float32)

  return fill


def test_import_writes_a_generator_directory_that_round_trips(tmp_path, nvidia_modules):
  path = str(tmp_path / 'small.pkl')
  build_generator_pickle(path, nvidia_modules, small_kwargs(nvidia_modules), random_fill(1))
  out = str(tmp_path / 'generator')
  config = nvidia_pickle.import_pickle(path, out)
  assert config.conv_clamp == 256 and config.img_resolution == 16 and config.mapping_layers == 2
  loaded_config, variables, source = checkpoint.load_generator(out)
  assert loaded_config == config
  assert source['network'] == 'G_ema' and source['init_kwargs']['synthesis_kwargs']['num_fp16_res'] == 2
  state_dict, _ = nvidia_pickle.read_network(path)
  expected = nvidia_pickle.to_variables(state_dict, config)
  jax.tree.map(np.testing.assert_array_equal, variables, expected)
  G = networks.Generator(config)
  img = G.apply(variables, np.ones((2, 16), np.float32), truncation_psi=0.7, truncation_cutoff=2)
  assert img.shape == (2, 16, 16, 3) and np.all(np.isfinite(img))
  with pytest.raises(FileExistsError):
    nvidia_pickle.import_pickle(path, out)  # never overwrites a generator


def test_import_job_through_launch_config(tmp_path, nvidia_modules):
  from configs import import_stylegan  # pylint: disable=g-import-not-at-top
  from mi_jax import jobs  # pylint: disable=g-import-not-at-top

  path = str(tmp_path / 'small.pkl')
  build_generator_pickle(path, nvidia_modules, small_kwargs(nvidia_modules), random_fill(2))
  config = import_stylegan.get_config()
  config.pickle = str(tmp_path / 'missing.pkl')
  with pytest.raises(ValueError, match='config.pickle'):
    jobs.validate_config(config)
  config.pickle = path
  jobs.run(config, str(tmp_path / 'gen'))
  assert os.path.exists(tmp_path / 'gen' / checkpoint.CONFIG_FILE)


def test_refuses_code_in_the_pickle_without_running_it(tmp_path):
  marker = tmp_path / 'pwned'

  class Evil:

    def __reduce__(self):
      return os.system, (f'touch {marker}',)

  path = tmp_path / 'evil.pkl'
  path.write_bytes(pickle.dumps({'G_ema': Evil()}))
  with pytest.raises(nvidia_pickle.UnsafePickleError, match=r'refusing to load global (posix|nt)\.system'):
    nvidia_pickle.read_network(str(path))
  assert not marker.exists()


def test_unsupported_options_and_mismatched_weights_are_named(tmp_path, nvidia_modules):
  with pytest.raises(ValueError, match=r"synthesis_kwargs.architecture='resnet'"):
    nvidia_pickle.config_from_init_kwargs(small_kwargs(nvidia_modules, architecture='resnet'))
  with pytest.raises(ValueError, match=r'synthesis_kwargs.magic=3'):
    nvidia_pickle.config_from_init_kwargs(small_kwargs(nvidia_modules, magic=3))
  path = str(tmp_path / 'small.pkl')
  build_generator_pickle(path, nvidia_modules, small_kwargs(nvidia_modules), random_fill(3))
  state_dict, kwargs = nvidia_pickle.read_network(path)
  config = nvidia_pickle.config_from_init_kwargs(kwargs)
  broken = dict(state_dict)
  del broken['synthesis.b8.conv0.weight']
  broken['synthesis.b16.conv1.bias'] = np.zeros(7, np.float32)
  broken['synthesis.b16.extra'] = np.zeros(1, np.float32)
  with pytest.raises(ValueError) as err:
    nvidia_pickle.to_variables(broken, config)
  message = str(err.value)
  assert 'params/synthesis/b8/conv0/kernel: missing' in message
  assert 'synthesis.b16.conv1.bias: shape [7]' in message
  assert 'synthesis.b16.extra: no such variable' in message
  with pytest.raises(ValueError, match="'G_ema' entry"):
    path2 = tmp_path / 'other.pkl'
    path2.write_bytes(pickle.dumps({'model': 1}))
    nvidia_pickle.read_network(str(path2))
