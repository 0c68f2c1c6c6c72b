"""MaxViT-T: torchvision parity of the Flax model and its importer, the RoLSS code's skip control, config errors.

The skip references are torchvision's own MaxVit with the forwards of its MBConv and
PartitionAttentionLayer rewritten as the official RoLSS code writes them (Pillowkoh/RoLSS,
models/torchvision/models/maxvit.py), driven by the official knobs (skip, mode, cfg, itr); the Flax
model gets the same through official_to_config, so the mapping of the knobs is checked as well.
"""

import functools
import re

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from mi_jax import models
from mi_jax.convert import torchvision as tv_convert
from mi_jax.convert import torchvision_maxvit
from mi_jax.models import maxvit

# A narrow MaxViT for CPU tests: width 8 (channels 8..64, heads of 4), 2x2 windows/grids, 64px inputs.
SMALL = dict(width=8, maxvit_partition_size=2)
SMALL_TORCH = dict(stem_channels=8, block_channels=[8, 16, 32, 64], head_dim=4, partition_size=2)
# Two stages of (2, 1) layers at 32px: every kind of layer (strided and stride-1 MBConv, window and grid
# attention over a 8x8 and a 4x4 map) at a fraction of the full depth's compile time.
TWO_STAGES = dict(stem_channels=8, block_channels=(8, 16), block_layers=(2, 1), head_dim=4, partition_size=2)
TWO_STAGES_TORCH = dict(stem_channels=8, block_channels=[8, 16], block_layers=[2, 1], head_dim=4, partition_size=2)
MAXVIT_T_PARAMS = 30_919_624  # torchvision maxvit_t(): MaxVit_T_Weights.IMAGENET1K_V1.meta['num_params']


def model_config(name, num_classes, **fields):
  """config.model of the base config for `name`, the head loaded too (torch_reference.model_config, which
  needs torch to import)."""
  config = common.base_config().model
  config.update({'name': name, 'num_classes': num_classes, 'init_reinit': (), **fields})
  return config


def _torch():
  return pytest.importorskip('torch', reason="torch is not installed (pip install -e '.[test,torch]')")


def _torch_maxvit(seed: int, input_size: int, num_classes: int = 7, **kw):
  """torchvision's MaxVit with random weights that make every part of the net matter.

  Like torch_reference.randomised: BN statistics, norm scales in [0.6, 1] and biases are random; on
  top, conv/linear weights are drawn at 1/sqrt(fan_in) (torchvision's std 0.02 would leave the
  branches negligible next to the residuals), the position-bias tables at std 1 (so that attention
  is far from uniform and the table's layout counts) and the last layer scaled for O(1-10) logits.
  """
  torch = _torch()
  from torch_reference import torchvision_models  # pylint: disable=g-import-not-at-top

  tvm = torchvision_models(seed)
  net = tvm.maxvit.MaxVit(input_size=(input_size, input_size), stochastic_depth_prob=0.2, num_classes=num_classes, **kw)
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in net.state_dict().items():
      if not tensor.dtype.is_floating_point:
        continue
      if name.endswith('running_var'):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
      elif name.endswith(('running_mean', 'bias')):
        tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
      elif name.endswith('relative_position_bias_table'):
        tensor.copy_(torch.randn(tensor.shape, generator=gen))
      elif name.endswith('weight') and tensor.ndim == 1:
        tensor.copy_(0.6 + 0.4 * torch.rand(tensor.shape, generator=gen))
      elif name.endswith('weight'):
        tensor.copy_(torch.randn(tensor.shape, generator=gen) / tensor[0].numel() ** 0.5)
    net.classifier[5].weight.mul_(5.0)
  return net.eval()


def _state(net):
  return tv_convert.clean_state_dict({k: v.numpy() for k, v in net.state_dict().items()})


def _fresh(model, input_size):
  """Zeros in the shape of the model's variables: the merge target, without compiling an init."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, input_size, input_size, 3)))
  return {k: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), v) for k, v in shapes.items()}


def _images(input_size):
  return np.random.default_rng(0).normal(size=(4, 3, input_size, input_size)).astype(np.float32)


def _torch_logits(net, x):
  torch = _torch()
  with torch.no_grad():
    want = net(torch.from_numpy(x)).numpy()
  # A meaningful scale: O(1-100) logits that differ between the inputs by 100x the parity tolerance (1e-4 of it).
  scale = np.abs(want).max()
  assert 1.0 < scale < 100.0 and np.ptp(want, axis=0).max() > 1e-2 * scale, want
  return want


def _relative_error(got, want):
  return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


# --- the official code's forwards, on torchvision's modules -------------------------------------------------


def _official_mbconv(block, skip, cfg, factor_on='branch'):
  """models/torchvision/models/maxvit.py MBConv.forward: `res + self.skip * x` unless cfg ('identity': ours)."""

  def forward(x):
    res, branch = block.proj(x), block.stochastic_depth(block.layers(x))
    if cfg:
      return res + branch
    return res + skip * branch if factor_on == 'branch' else skip * res + branch

  return forward


def _official_attention(layer, skip, mode, cfg):
  """PartitionAttentionLayer.forward of the official code: `attn(x) + self.skip * x` per mode and cfg."""

  def forward(x):
    gh, gw = layer.grid_size[0] // layer.p, layer.grid_size[1] // layer.p
    x = layer.partition_swap(layer.partition_op(x, layer.p))
    x = layer.stochastic_dropout(layer.attn_layer(x)) + (skip if mode != 'mlp' and not cfg else 1.0) * x
    x = layer.stochastic_dropout(layer.mlp_layer(x)) + (skip if mode != 'attention' and not cfg else 1.0) * x
    return layer.departition_op(layer.departition_swap(x), layer.p, gh, gw)

  return forward


def _as_official(net, skip, mode, cfgs, itrs, factor_on='branch'):
  """Rewires torchvision's net into the official code's MaxVit(skip, mode, cfgs, itrs)."""
  for block, k, cfg, itr in zip(net.blocks, skip, cfgs, itrs):
    for idx, layer in enumerate(block.layers):
      mbconv_cfg, window_cfg, grid_cfg = [1, 1, 1] if idx >= itr else cfg  # MaxVitBlock: idx >= itr -> [1,1,1]
      parts = layer.layers
      parts.MBconv.forward = _official_mbconv(parts.MBconv, k, mbconv_cfg, factor_on)
      parts.window_attention.forward = _official_attention(parts.window_attention, k, mode, window_cfg)
      parts.grid_attention.forward = _official_attention(parts.grid_attention, k, mode, grid_cfg)
  return net


@functools.lru_cache
def _two_stage_model(**fields):
  """The two-stage Flax MaxViT with these fields and its jitted apply (compiled once per setting)."""
  model = maxvit.MaxViT(num_classes=7, **TWO_STAGES, **fields)
  return model, jax.jit(model.apply)


def _run_two_stage(net, x, reinit=(), set_params=None, **fields):
  """Logits of the two-stage Flax MaxViT with `net`'s weights (plus `set_params` leaves) on x."""
  model, apply = _two_stage_model(**fields)
  variables, report = tv_convert.merge_into(
      torchvision_maxvit.to_flax(_state(net)), _fresh(model, x.shape[-1]), reinit=reinit
  )
  assert not report.dropped
  for name, value in (set_params or {}).items():
    variables['params'][name] = np.float32(value)
  return np.asarray(apply(variables, x.transpose(0, 2, 3, 1)))


# --- full size: parameter count, names, importer --------------------------------------------------------------


def test_parameter_count_stage_inputs_and_head_name_of_maxvit_t():
  model = models.build_model(model_config('maxvit_t', 1000))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes['params'])) == MAXVIT_T_PARAMS
  assert sorted(shapes['perturbations']) == [f'stage{i}_input' for i in range(1, 5)]
  # The default config.model.init_reinit re-initialises the last linear layer and nothing else.
  reinit = common.base_config().model.init_reinit
  paths = traverse_util.flatten_dict(shapes, sep='/')
  assert [p for p in paths if any(re.search(pattern, p) for pattern in reinit)] == ['params/classifier/kernel']


def test_full_size_torchvision_weights_fit_exactly_and_a_new_head_is_reinitialised():
  from torch_reference import torchvision_models  # pylint: disable=g-import-not-at-top

  _torch()
  net = torchvision_models(seed=4).maxvit_t()
  assert sum(p.numel() for p in net.parameters()) == MAXVIT_T_PARAMS
  state = _state(net)
  converted = tv_convert.to_flax(state, tv_convert.kind_of('maxvit_t'))
  model = models.build_model(model_config('maxvit_t', 1000))
  variables, report = tv_convert.merge_into(converted, _fresh(model, 224))
  assert not report.reinitialised and not report.dropped
  np.testing.assert_array_equal(
      variables['params']['stage3_4_grid_attention']['attention']['relative_position_bias_table'],
      state['blocks.2.layers.4.layers.grid_attention.attn_layer.1.relative_position_bias_table'],
  )
  np.testing.assert_array_equal(
      variables['params']['stage1_0_mbconv']['conv_b']['kernel'],
      state['blocks.0.layers.0.layers.MBconv.layers.conv_b.0.weight'].transpose(2, 3, 1, 0),
  )
  # FaceScrub's 530 classes: the default init_reinit keeps the fresh head, everything else is loaded.
  model = models.build_model(model_config('maxvit_t', 530))
  _, report = tv_convert.merge_into(converted, _fresh(model, 224), reinit=common.base_config().model.init_reinit)
  assert report.reinitialised == ['params/classifier/kernel']
  # Tensors that are not MaxViT's are listed; a foreign relative-position layout is refused.
  with pytest.raises(ValueError, match=r'not torchvision MaxViT tensors \(2\): fc.weight, blocks.0.layers.0.extra'):
    torchvision_maxvit.to_flax({**state, 'fc.weight': np.zeros((2, 2)), 'blocks.0.layers.0.extra': np.zeros(1)})
  key = 'blocks.0.layers.0.layers.window_attention.attn_layer.1.relative_position_index'
  with pytest.raises(ValueError, match='relative_position_index differs'):
    torchvision_maxvit.to_flax({**state, key: state[key] + np.eye(49, dtype=state[key].dtype)})


def test_parity_with_torchvision_through_the_importer():
  """maxvit_t's depth (2, 2, 5, 2) at width 8, 2x2 partitions, 64px, built from the config."""
  net = _torch_maxvit(1, 64, block_layers=[2, 2, 5, 2], **SMALL_TORCH)
  x = _images(64)
  want = _torch_logits(net, x)
  model = models.build_model(model_config('maxvit_t', 7, **SMALL))
  variables, report = tv_convert.merge_into(
      tv_convert.to_flax(_state(net), tv_convert.kind_of('maxvit_t')), _fresh(model, 64)
  )
  assert not report.reinitialised and not report.dropped
  got = jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1))
  assert _relative_error(got, want) <= 1e-4


# --- skip control against the official code --------------------------------------------------------------------

# (skip, mode, cfg, itr) as in the official configs; cfg per stage [mbconv, window, grid], 0 = the factor applies.
OFFICIAL_SETTINGS = {
    'stage1_removed_all': ((0, 1), 'all', [[0, 0, 0], [1, 1, 1]], [2, 1]),
    'stage1_removed_attention': ((0, 1), 'attention', [[0, 0, 0], [1, 1, 1]], [2, 1]),
    'stage1_removed_mlp': ((0, 1), 'mlp', [[0, 0, 0], [1, 1, 1]], [2, 1]),
    'released_grid_only': ((0, 1), 'all', [[1, 1, 0], [1, 1, 1]], [2, 1]),
    'leading_layer_only': ((0, 1), 'all', [[1, 0, 0], [1, 1, 1]], [1, 1]),
    'ssf_mbconv_branch': ((0.5, 0.5), 'all', [[0, 1, 1], [0, 1, 1]], [2, 1]),
}


@pytest.mark.parametrize('setting', sorted(OFFICIAL_SETTINGS))
def test_skip_settings_equal_the_official_code(setting):
  skip, mode, cfgs, itrs = OFFICIAL_SETTINGS[setting]
  x = _images(32)
  plain = _torch_logits(_torch_maxvit(2, 32, **TWO_STAGES_TORCH), x)
  net = _as_official(_torch_maxvit(2, 32, **TWO_STAGES_TORCH), skip, mode, cfgs, itrs)
  want = _torch_logits(net, x)
  assert _relative_error(plain, want) > 1e-2  # the setting changes the function
  layers, leading = maxvit.official_to_config(cfgs, itrs, block_layers=TWO_STAGES['block_layers'])
  got = _run_two_stage(net, x, skip=skip, residual_branch=mode, layers_with_factor=layers, leading_layers=leading)
  assert _relative_error(got, want) <= 1e-4


def test_mbconv_factor_on_identity_scales_the_shortcut_and_keeps_the_tree():
  """'identity': k * proj(x) + branch(x), here k = 0 (the shortcut removed, as for ResNet) on stage 1 and
  k = 0.5 on stage 2; 'branch' (official) is a different function; the parameter tree is the plain one."""
  skip, cfgs, itrs = (0, 0.5), [[0, 1, 1], [0, 1, 1]], [2, 1]
  x = _images(32)
  branch = _torch_logits(_as_official(_torch_maxvit(3, 32, **TWO_STAGES_TORCH), skip, 'all', cfgs, itrs), x)
  net = _as_official(_torch_maxvit(3, 32, **TWO_STAGES_TORCH), skip, 'all', cfgs, itrs, factor_on='identity')
  want = _torch_logits(net, x)
  assert _relative_error(branch, want) > 1e-2
  fields = dict(skip=skip, layers_with_factor=('mbconv', 'mbconv'), mbconv_factor_on='identity')
  assert _relative_error(_run_two_stage(net, x, **fields), want) <= 1e-4
  plain = maxvit.MaxViT(num_classes=7, **TWO_STAGES)
  removed = maxvit.MaxViT(num_classes=7, **TWO_STAGES, **fields)
  tree = lambda model: jax.tree.map(lambda s: s.shape, _fresh(model, 32))
  assert tree(plain) == tree(removed)


def test_learnable_factor_is_a_clipped_parameter_and_factor_one_is_the_plain_model():
  x = _images(32)
  plain_net = _torch_maxvit(5, 32, **TWO_STAGES_TORCH)
  plain = _torch_logits(plain_net, x)
  removed = _torch_logits(
      _as_official(_torch_maxvit(5, 32, **TWO_STAGES_TORCH), (0, 0.3), 'all', [[0, 0, 0], [1, 0, 1]], [2, 1]), x
  )
  # k = 1 (fixed) on every residual of both stages is the plain MaxViT.
  every = ('mbconv+window+grid', 'mbconv+window+grid')
  assert _relative_error(_run_two_stage(plain_net, x, skip=(1, 1), layers_with_factor=every), plain) <= 1e-4
  # 'learn' / 'learn:0.3': one scalar parameter per stage, clipped to [0, 1] in the forward pass.
  fields = dict(skip=('learn', 'learn:0.3'), layers_with_factor=('mbconv+window+grid', 'window'))
  model = maxvit.MaxViT(num_classes=7, **TWO_STAGES, **fields)
  params = _fresh(model, 32)['params']
  assert params['skip_scale_stage1'].shape == () and params['skip_scale_stage2'].shape == ()
  run = functools.partial(_run_two_stage, plain_net, x, reinit=('skip_scale',), **fields)
  assert _relative_error(run(set_params={'skip_scale_stage1': 1.0, 'skip_scale_stage2': 1.7}), plain) <= 1e-4
  assert _relative_error(run(set_params={'skip_scale_stage1': -0.5, 'skip_scale_stage2': 0.3}), removed) <= 1e-4


# --- configuration -------------------------------------------------------------------------------------------


def test_official_knobs_in_this_config():
  released_training = maxvit.official_to_config([[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]], [2, 2, 5, 2])
  assert released_training == (('grid', 'grid', 'none', 'none'), (0, 0, 0, 0))
  released_attack = maxvit.official_to_config([[1, 0, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1]], [2, 2, 5, 2])
  assert released_attack == (('window', 'window', 'none', 'none'), (0, 0, 0, 0))
  assert maxvit.official_to_config([[0, 0, 0]] * 4, [1, 2, 0, 9]) == (
      ('mbconv+window+grid',) * 2 + ('none', 'mbconv+window+grid'),
      (1, 0, 0, 0),
  )
  # The defaults are the official code's when cfg and itr are not given, and the family's neutral values.
  base = common.base_config().model
  defaults = maxvit.official_to_config(None, None)
  assert (base.maxvit_layers, base.maxvit_leading_layers) == defaults
  assert base.maxvit_mbconv_factor_on == 'branch' and base.residual_branch == 'all'
  assert dict(maxvit.FAMILY.options) == {field: base[field] for field, _ in maxvit.FAMILY.options}
  # The released training config builds; the plain default too.
  models.build_model(model_config('maxvit_t', 530, skip=(0, 0, 1, 1), maxvit_layers=released_training[0]))
  models.build_model(model_config('maxvit_t', 530))


_LAST_STAGE = dict(skip=(1, 1, 1, 0), maxvit_layers=('none', 'none', 'none', 'mbconv+window+grid'))


@pytest.mark.parametrize(
    'fields, message',
    [
        (dict(maxvit_layers=('none',) * 3), r'config.model.maxvit_layers=.* has 3 entries; the model has 4 stages'),
        (dict(maxvit_layers=('grid', 'none', 'none', 'attention')), r"maxvit_layers\[3\]: entry 'attention'"),
        (dict(maxvit_layers=('grid+grid', 'none', 'none', 'grid')), r"maxvit_layers\[0\]: entry 'grid\+grid'"),
        (dict(maxvit_leading_layers=(0, 0, 0)), r'config.model.maxvit_leading_layers=.* has 3 entries'),
        (dict(maxvit_leading_layers=(0, 0, 6, 0)), r'maxvit_leading_layers\[2\]=6: expected an integer in 0..5'),
        (dict(maxvit_leading_layers=(0, -1, 0, 0)), r'maxvit_leading_layers\[1\]=-1: expected an integer in 0..2'),
        (dict(maxvit_mbconv_factor_on='shortcut'), r"config.model.maxvit_mbconv_factor_on='shortcut': expected"),
        (dict(residual_branch='both'), r"config.model.residual_branch='both': expected one of"),
        (dict(maxvit_partition_size=-1), r'config.model.maxvit_partition_size=-1: expected a positive integer'),
        (dict(width=7), r'config.model.width=7: MaxViT needs a positive even width'),
        (dict(skip=(1, 1, 0.2, 0)), r"config.model.skip\[2\]=0.2 would change nothing: .*maxvit_layers\[2\]='none'"),
        (dict(skip=(1, 1, 1)), r'config.model.skip=.* has 3 entries; maxvit_t has 4 stages'),
    ],
)
def test_config_errors_name_the_field(fields, message):
  config = model_config('maxvit_t', 7, **_LAST_STAGE)
  config.update(fields)
  with pytest.raises(ValueError, match=message):
    models.build_model(config)


def test_maxvit_options_are_refused_for_other_families_and_bad_input_sizes_are_named():
  for field, value in [('maxvit_layers', ('grid',) * 4), ('maxvit_mbconv_factor_on', 'identity')]:
    with pytest.raises(ValueError, match=f'config.model.{field}=.* applies to maxvit models only, not resnet18'):
      models.build_model(model_config('resnet18', 7, **{field: value}))
  model = models.build_model(model_config('maxvit_t', 7))  # 7x7 partitions: 224px, not 64
  with pytest.raises(ValueError, match=r'input of 64x64 pixels \(config.data.image_size\): the stage-1 map is 16x16'):
    _fresh(model, 64)
  model = models.build_model(model_config('maxvit_t', 7, **SMALL))  # 48 -> 24 -> 12, 6, 3: not by 2
  with pytest.raises(ValueError, match=r'stage-3 map is 3x3, not divisible by .* 2.*multiple of 64'):
    _fresh(model, 48)


def test_train_mode_gradients_batch_statistics_and_stochastic_depth():
  """train=True: the learnable k gets a gradient, BatchNorm statistics update, stochastic depth draws from the
  'dropout' rng (one stage of two layers, random weights)."""
  import optax  # pylint: disable=g-import-not-at-top

  model = maxvit.MaxViT(
      num_classes=3,
      stem_channels=8,
      block_channels=(8,),
      block_layers=(2,),  # the first layer's drop probability is 0, the second's 0.5
      head_dim=4,
      partition_size=2,
      stochastic_depth=0.5,
      skip=('learn:0.5',),
      layers_with_factor=('mbconv+window+grid',),
  )
  rng = np.random.default_rng(0)
  x, labels = rng.normal(size=(8, 8, 8, 3)).astype(np.float32), np.arange(8) % 3
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x[:1])
  params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes['params'])
  params['skip_scale_stage1'] = np.float32(0.5)
  batch_stats = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes['batch_stats'])

  @jax.jit
  def loss_and_grads(params, key):
    def loss_fn(params):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': batch_stats}, x, train=True, mutable=['batch_stats'], rngs={'dropout': key}
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, updates), grads = loss_and_grads(params, jax.random.PRNGKey(0))
  (other_loss, _), _ = loss_and_grads(params, jax.random.PRNGKey(1))
  assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert abs(float(grads['skip_scale_stage1'])) > 1e-4
  assert abs(float(loss) - float(other_loss)) > 1e-4  # another dropout key drops other branches
  moved = updates['batch_stats']['stage1_0_mbconv']['pre_norm']['mean']
  assert np.abs(moved - 1.0).max() > 1e-3


@pytest.mark.parametrize('momentum', [maxvit.OFFICIAL_BN_MOMENTUM, maxvit.TORCHVISION_BN_MOMENTUM])
def test_batch_norm_momentum_is_the_official_or_torchvisions(momentum):
  """config.model.maxvit_bn_momentum in torch's convention: after one training step every running mean is
  (1 - m) * old + m * the batch mean; the official file's 0.99 keeps almost only the batch's."""
  module = maxvit.MaxViT(num_classes=3, bn_momentum=momentum, **TWO_STAGES)
  x = jnp.asarray(_images(32).transpose(0, 2, 3, 1))
  variables = module.init(jax.random.PRNGKey(0), x)
  old = variables['batch_stats']['stem_bn']['mean']
  _, updated = module.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(1)})
  features = nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False).apply(
      {'params': variables['params']['stem_conv']}, x
  )
  want = (1 - momentum) * old + momentum * features.mean(axis=(0, 1, 2))
  np.testing.assert_allclose(updated['batch_stats']['stem_bn']['mean'], want, rtol=1e-5, atol=1e-6)
  assert models.build_model(model_config('maxvit_t', 3, maxvit_bn_momentum=momentum)).bn_momentum == momentum


def test_official_attack_rebuild_is_the_plain_forward_of_the_trained_weights():
  """target.official_rebuild: the RoLSS attack code rebuilds a MaxViT from skip and mode only, so a target
  trained with its first stage's grid residuals removed runs as the plain model on the trained weights."""
  trained = {'name': 'maxvit_t', 'skip': (0.0, 1.0), 'maxvit_layers': ('grid', 'none'), 'maxvit_leading_layers': (1, 0)}
  rebuilt = maxvit.as_official_attack_rebuilds(trained)
  assert rebuilt['skip'] == (1.0, 1.0) and rebuilt['maxvit_layers'] == ('none', 'none')
  assert rebuilt['maxvit_leading_layers'] == (0, 0) and rebuilt['name'] == 'maxvit_t'
  build = lambda c: maxvit.MaxViT(
      num_classes=3,
      skip=c['skip'],
      layers_with_factor=c['maxvit_layers'],
      leading_layers=c['maxvit_leading_layers'],
      **TWO_STAGES,
  )
  x = jnp.asarray(_images(32).transpose(0, 2, 3, 1))
  variables = build(trained).init(jax.random.PRNGKey(0), x)
  as_attacked = build(rebuilt).apply(variables, x)
  np.testing.assert_array_equal(as_attacked, maxvit.MaxViT(num_classes=3, **TWO_STAGES).apply(variables, x))
  assert np.abs(np.asarray(as_attacked) - np.asarray(build(trained).apply(variables, x))).max() > 1e-4
