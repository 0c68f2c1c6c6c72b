"""EfficientNet-B0: torchvision size and structure, weight import with parity against torchvision's own definition
(random weights), the stage skip settings against torch nets rewired the same way, and config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from mi_jax import models
from mi_jax.models import efficientnet
from mi_jax.models import layers

# A narrow, shallow B0 for CPU tests: torchvision's _efficientnet_conf('efficientnet_b0', width_mult=0.25,
# depth_mult=0.5) -- blocks per stage (1, 1, 1, 2, 2, 2, 1); stage 1 is 8 -> 8 channels here, so it has a shortcut.
SMALL = dict(width_mult=0.25, depth_mult=0.5)
SIZE = 32  # input pixels


def _config(**fields):
  config = common.base_config().model
  config.update({'name': 'efficientnet_b0', 'num_classes': 7, 'skip': (1.0,) * 7, **fields})
  return config


def _zeros_like_init(model, size=SIZE):
  """The model's variable tree filled with zeros: its shapes without compiling an init."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_full_model_has_torchvisions_parameter_count_and_names():
  """efficientnet_b0 with 1000 classes: torchvision's 5,288,548 parameters (shapes only, nothing computed), the
  Flax names the importer and config.model.init_reinit rely on, and a perturbation point at each stage input."""
  model = models.build_model(_config(num_classes=1000))
  variables = _zeros_like_init(model, 224)
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) == 5_288_548
  params = variables['params']
  assert 'expand' not in params['block1_0'] and 'expand' in params['block2_0']  # expansion 1: no 1x1 expand conv
  assert params['block1_0']['se']['fc1']['kernel'].shape == (1, 1, 32, 8)  # squeeze = block input // 4
  assert params['block6_3']['se']['fc1']['kernel'].shape == (1, 1, 1152, 48)
  assert params['block3_0']['depthwise']['conv']['kernel'].shape == (5, 5, 1, 144)
  assert params['head']['conv']['kernel'].shape == (1, 1, 320, 1280)
  assert params['classifier']['kernel'].shape == (1280, 1000)
  _, stage_inputs = jax.eval_shape(  # the attacks' per-stage gradient points, one per MBConv stage
      lambda: model.apply(variables, jnp.zeros((1, 224, 224, 3)), mutable=['perturbations'])
  )
  assert {k: v.shape for k, v in stage_inputs['perturbations'].items()} == {
      'stage1_input': (1, 112, 112, 32),
      'stage2_input': (1, 112, 112, 16),
      'stage3_input': (1, 56, 56, 24),
      'stage4_input': (1, 28, 28, 40),
      'stage5_input': (1, 14, 14, 80),
      'stage6_input': (1, 14, 14, 112),
      'stage7_input': (1, 7, 7, 192),
  }
  assert sorted(k for k in params if k.startswith('block')) == sorted(
      f'block{i + 1}_{j}' for i, n in enumerate((1, 2, 2, 3, 3, 4, 1)) for j in range(n)
  )


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r'config.model.skip=.* has 4 entries; efficientnet_b0 has 7 stages'):
    models.build_model(_config(skip=(1.0, 1.0, 1.0, 0.0)))
  with pytest.raises(ValueError, match=r"config.model.skip: skip setting 'keep'"):
    models.build_model(_config(skip=(1, 1, 1, 1, 1, 'keep', 1)))
  with pytest.raises(ValueError, match=r'config.model.skip: skip setting 1.5: k must lie in \[0, 1\]'):
    models.build_model(_config(skip=(1, 1, 1, 1, 1, 1.5, 1)))
  # Stages 1 (32 -> 16) and 7 (192 -> 320) are one block each without a shortcut at full width.
  with pytest.raises(ValueError, match=r'config.model.skip\[0\]=0.0: EfficientNet stage 1 has no residual'):
    models.build_model(_config(skip=(0.0, 1, 1, 1, 1, 1, 1)))
  with pytest.raises(ValueError, match=r"config.model.skip\[6\]='learn': EfficientNet stage 7 has no residual"):
    models.build_model(_config(skip=(1, 1, 1, 1, 1, 1, 'learn')))
  # The check follows the widths actually built: at width 8 stage 1 is 8 -> 8 channels, a block with a shortcut.
  assert models.build_model(_config(width=8, skip=(0.0, 1, 1, 1, 1, 1, 1))).width_mult == 0.25
  assert models.build_model(_config(skip=(1, 0.0, 0.2, 'learn', 0, 0, 1))).skip[3] == 'learn'
  with pytest.raises(ValueError, match=r'^skip\[6\]=0: EfficientNet stage 7'):  # the module itself refuses too
    efficientnet.EfficientNet(num_classes=3, skip=(1, 1, 1, 1, 1, 1, 0)).init(
        jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3))
    )


def test_learn_makes_a_clipped_stage_parameter_that_gets_gradient():
  # Two stages at width 0.25, full depth: 8 -> 8 (a shortcut), then 8 -> 8 stride 2 and a block with a shortcut.
  model = efficientnet.EfficientNet(
      num_classes=3, skip=(0, 'learn:0.3'), block_setting=efficientnet.B0_SETTING[:2], width_mult=0.25, dropout=0.0
  )
  variables = models.init_variables(model, (2, SIZE, SIZE, 3), jax.random.PRNGKey(0))
  assert [k for k in variables['params'] if k.startswith('skip_scale')] == ['skip_scale_stage2']
  assert float(variables['params']['skip_scale_stage2']) == pytest.approx(0.3)
  params = variables['params']  # torchvision's init: zero biases, classifier within 1/sqrt(out)
  assert np.abs(params['classifier']['kernel']).max() <= 1 / np.sqrt(3) and not np.any(params['classifier']['bias'])
  assert not np.any(params['block2_1']['se']['fc1']['bias']) and not np.any(params['block2_1']['se']['fc2']['bias'])
  images = jax.random.normal(jax.random.PRNGKey(1), (2, SIZE, SIZE, 3))

  def loss(params):
    return jnp.sum(model.apply({**variables, 'params': params}, images) ** 2)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  assert float(jnp.abs(grads['skip_scale_stage2'])) > 0


def test_stochastic_depth_drops_whole_rows_of_the_residual_branch():
  """torchvision's StochasticDepth(p, 'row') in train mode: each sample's branch is zeroed with probability p or
  scaled by 1 / (1 - p); the identity always passes (k=1). It draws from the 'dropout' rng the train step passes."""
  block = efficientnet.MBConv(6, 3, 1, 8, drop_rate=0.5, norm=layers.batch_norm(False, jnp.float32))
  x = jnp.tile(jax.random.normal(jax.random.PRNGKey(0), (1, 4, 4, 8)), (256, 1, 1, 1))  # one sample, 256 times
  variables = jax.jit(lambda rng: block.init(rng, x[:1], 1.0, False))(jax.random.PRNGKey(1))
  apply = jax.jit(block.apply, static_argnums=(2, 3))
  branch = apply(variables, x[:1], 1.0, False) - x[:1]  # eval: no drop
  out = apply(variables, x, 1.0, True, rngs={'dropout': jax.random.PRNGKey(2)})
  dropped = np.all(np.isclose(out, x, atol=1e-6), axis=(1, 2, 3))
  kept = np.all(np.isclose(out, x + 2.0 * branch, atol=1e-5), axis=(1, 2, 3))
  assert np.all(dropped ^ kept) and 0.4 < dropped.mean() < 0.6
  with pytest.raises(Exception, match='dropout'):  # no rng, no silent determinism
    apply(variables, x, 1.0, True)


@pytest.mark.slow
def test_training_steps_run_with_learnable_skips():
  """Through the project's train step (BN statistics, the 'dropout' rng for dropout and stochastic depth)."""
  import optax  # pylint: disable=g-import-not-at-top
  from mi_jax.train import sharding, state as state_lib, steps  # pylint: disable=g-import-not-at-top

  block_setting = efficientnet.B0_SETTING[:2]  # two stages (3 blocks, two with a shortcut) at width 0.25
  model = efficientnet.EfficientNet(num_classes=3, skip=(0.5, 'learn'), block_setting=block_setting, width_mult=0.25)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(8, SIZE, SIZE, 3)).astype(np.float32), 'label': np.arange(8, dtype=np.int32) % 3}
  mesh, lr_fn = sharding.make_mesh(1), optax.constant_schedule(3e-3)
  state = state_lib.create_train_state(model, optax.adam(lr_fn), (1, SIZE, SIZE, 3), seed=0)
  train_step, _ = steps.compile_steps(mesh, lr_fn)
  losses = []
  for _ in range(6):
    state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  assert float(state.params['skip_scale_stage2']) != 1.0


def test_importer_refuses_keys_of_another_layout():
  from mi_jax.convert import torchvision as tv_convert  # pylint: disable=g-import-not-at-top

  with pytest.raises(ValueError, match=r'not part of a torchvision EfficientNet: conv1.weight, fc.weight$'):
    tv_convert.to_flax(
        {'conv1.weight': np.zeros((8, 3, 7, 7)), 'fc.weight': np.zeros((3, 8)), 'features.0.0.weight': np.zeros(1)},
        'efficientnet',
    )
  with pytest.raises(ValueError, match=r'features.2.0.block: parts \[0, 1, 3\] with squeeze-excitation at 1'):
    tv_convert.to_flax(
        {
            'features.2.0.block.0.0.weight': np.zeros((8, 1, 3, 3)),
            'features.2.0.block.1.fc1.weight': np.zeros((2, 8, 1, 1)),
            'features.2.0.block.3.0.weight': np.zeros((8, 8, 1, 1)),
            'features.3.0.weight': np.zeros((32, 8, 1, 1)),
        },
        'efficientnet',
    )


# --- parity with torchvision's own definition (random weights) ---


def _torch():
  return pytest.importorskip('torch', reason="torch is not installed (pip install -e '.[test,torch]')")


def _randomised(net, seed: int, head_scale: float = 1.0):
  """Random BN affine parameters and biases like torch_reference.randomised, but running statistics measured on a
  random batch instead of drawn: EfficientNet's depthwise convs (kaiming fan_out init) shrink the variance by
  ~channels / 2 each, so with drawn statistics the logits no longer depend on the input; and with drawn statistics
  that do not fit the activations, ~30 BatchNorms compound to float32 errors of ~1e-4 of scale in either framework
  (in float64 both agree to 1e-12). The classifier is classifier[1] here (torch_reference's expects a Linear)."""
  torch = _torch()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in net.state_dict().items():
      if tensor.dtype.is_floating_point and tensor.ndim == 1 and not name.endswith(('running_mean', 'running_var')):
        tensor.copy_(
            0.1 * torch.randn(tensor.shape, generator=gen)
            if name.endswith('bias')
            else 0.6 + 0.4 * torch.rand(tensor.shape, generator=gen)
        )
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:  # cumulative averages over one forward pass in train mode
      norm.reset_running_stats()
      norm.momentum = None
    net.train()
    net(torch.randn((16, 3, SIZE, SIZE), generator=gen))
    for norm in norms:
      norm.momentum = 0.1
    net.classifier[1].weight.mul_(head_scale)
  return net.eval()


def _small_torch_net(seed: int, num_classes: int = 7, depth_mult: float = 0.5, **kwargs):
  from torch_reference import torchvision_models  # pylint: disable=g-import-not-at-top

  tv_efficientnet = torchvision_models(seed).efficientnet
  setting, last_channel = tv_efficientnet._efficientnet_conf(  # pylint: disable=protected-access
      'efficientnet_b0', width_mult=0.25, depth_mult=depth_mult
  )
  net = tv_efficientnet.EfficientNet(setting, 0.2, num_classes=num_classes, last_channel=last_channel, **kwargs)
  return _randomised(net, seed)


def _import(model, net, reinit=()):
  """The torch net's weights in the Flax model's tree, through the registry's importer."""
  from mi_jax.convert import torchvision as tv_convert  # pylint: disable=g-import-not-at-top

  # Copies: torch's train mode updates its running statistics in place, and .numpy() shares their memory.
  state = tv_convert.clean_state_dict({k: v.numpy().copy() for k, v in net.state_dict().items()})
  variables, report = tv_convert.merge_into(
      tv_convert.to_flax(state, tv_convert.kind_of('efficientnet_b0')), _zeros_like_init(model), reinit=reinit
  )
  assert not report.dropped and all(any(p in path for p in reinit) for path in report.reinitialised)
  return variables


def _logits(model, variables, torch_net, seed=0, batch=2):
  """(ours, torch's) logits on the same random images, and the largest |torch logit|."""
  torch = _torch()
  x = np.random.default_rng(seed).normal(size=(batch, 3, SIZE, SIZE)).astype(np.float32)
  with torch.no_grad():
    want = torch_net(torch.from_numpy(x)).numpy()
  got = np.asarray(jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1)))
  return got, want


def _error(got, want):
  """max |got - want| relative to the logits' scale, after checking that scale is meaningful."""
  assert 1.0 < np.abs(want).max() < 100.0 and np.abs(want[0] - want[1]).max() > 0.1
  return float(np.abs(got - want).max() / np.abs(want).max())


def test_block_table_and_stochastic_depth_match_torchvision():
  """Our stage table (widths, strides, shortcuts) and per-block drop rates are the ones torchvision builds."""
  from torch_reference import torchvision_models  # pylint: disable=g-import-not-at-top

  _torch()
  for width_mult, depth_mult in ((1.0, 1.0), (0.25, 0.5)):
    tv_efficientnet = torchvision_models(0).efficientnet
    setting, _ = tv_efficientnet._efficientnet_conf(  # pylint: disable=protected-access
        'efficientnet_b0', width_mult=width_mult, depth_mult=depth_mult
    )
    net = tv_efficientnet.EfficientNet(setting, 0.2)
    torch_stages = [
        [(b.use_res_connect, b.out_channels, b.stochastic_depth.p) for b in stage] for stage in net.features[1:-1]
    ]
    stages = efficientnet.stage_blocks(efficientnet.B0_SETTING, width_mult, depth_mult)
    rates = efficientnet.drop_rates(efficientnet.B0_SETTING, depth_mult)
    ours = [
        [(efficientnet.has_shortcut(b), b[4], pytest.approx(p)) for b, p in zip(stage, r)]
        for stage, r in zip(stages, rates)
    ]
    assert torch_stages == ours
  assert [any(efficientnet.has_shortcut(b) for b in s) for s in efficientnet.stage_blocks(efficientnet.B0_SETTING)] == [
      False,
      True,
      True,
      True,
      True,
      True,
      False,
  ]


@pytest.fixture(scope='module')
def small_b0():
  """torchvision's small B0 (random weights) and its weights imported into our plain small model."""
  _torch()
  net = _small_torch_net(seed=1)
  return net, _import(efficientnet.EfficientNet(num_classes=7, **SMALL), net)


# Stage 1 (8 -> 8 channels at width 0.25), stage 4 and stage 6 have shortcuts in the small table.
SKIP = (0.0, 1, 1, 0.3, 1, 0.0, 1)


def _rewire(net, skip, monkeypatch):
  """torchvision's MBConv.forward in each stage with `result += input` replaced by `+ k * input` (k = 0: deleted)."""

  def rewired(block, k):
    def forward(x):
      result = block.block(x)
      if block.use_res_connect:
        result = block.stochastic_depth(result)
        if k:
          result = result + k * x
      return result

    return forward

  for i, k in enumerate(skip):
    for block in net.features[i + 1]:
      if k != 1:
        monkeypatch.setattr(block, 'forward', rewired(block, k))
  assert all(any(b.use_res_connect for b in net.features[i + 1]) for i, k in enumerate(skip) if k != 1)


def test_initialisers_have_torchvisions_spread():
  """kaiming_normal_(mode='fan_out') convs (depthwise and squeeze-excitation ones too) and U(+-1/sqrt(out)) for the
  classifier, compared on torchvision's own efficientnet_b0 at full size."""
  from torch_reference import torchvision_models  # pylint: disable=g-import-not-at-top

  _torch()
  net = torchvision_models(0).efficientnet_b0()
  pairs = {  # torch weight, our kernel shape
      'depthwise 3x3': (net.features[6][1].block[1][0].weight, (5, 5, 1, 1152)),
      'squeeze fc1': (net.features[6][1].block[2].fc1.weight, (1, 1, 1152, 48)),
      'head 1x1': (net.features[8][0].weight, (1, 1, 320, 1280)),
  }
  for i, (what, (weight, shape)) in enumerate(pairs.items()):
    ours = np.asarray(efficientnet.conv_kernel_init(jax.random.PRNGKey(i), shape))
    assert np.std(ours) == pytest.approx(float(weight.detach().std()), rel=0.05), what
  bound = 1 / np.sqrt(1000)
  ours = np.asarray(efficientnet.classifier_kernel_init(jax.random.PRNGKey(9), (1280, 1000)))
  theirs = net.classifier[1].weight.detach().numpy()
  assert np.abs(ours).max() <= bound and np.abs(theirs).max() <= bound
  assert np.abs(ours).max() > 0.99 * bound and np.std(ours) == pytest.approx(float(theirs.std()), rel=0.01)


def test_parity_with_torchvision(small_b0):
  """Imported weights give torchvision's logits; k = 1 everywhere (the default) is torchvision's model."""
  net, variables = small_b0
  got, want = _logits(efficientnet.EfficientNet(num_classes=7, **SMALL), variables, net)
  assert _error(got, want) <= 1e-4


def test_fixed_skip_factors_equal_torchvision_with_the_identity_rewired(small_b0, monkeypatch):
  """k = 0 in a stage is torchvision's net with that stage's `+ input` deleted; k = 0.3 with it scaled (stages 1
  and 6 removed, 4 scaled, in one model)."""
  net, variables = small_b0
  torch = _torch()
  images = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32))
  with torch.no_grad():
    plain = net(images).numpy()
    _rewire(net, SKIP, monkeypatch)
    assert np.abs(net(images).numpy() - plain).max() > 0.1  # the rewiring changes the function
  got, want = _logits(efficientnet.EfficientNet(num_classes=7, skip=SKIP, **SMALL), variables, net)
  assert _error(got, want) <= 1e-4


def test_learnable_skip_factors_are_stage_parameters_computing_the_same(small_b0, monkeypatch):
  """'learn' makes skip_scale_stage{i} (here for stages 1, 4, 6); set to the fixed values (-0.5 is clipped to 0)
  the model is the rewired torch net again."""
  net, _ = small_b0
  learnt = efficientnet.EfficientNet(num_classes=7, skip=('learn', 1, 1, 'learn', 1, 'learn:0.5', 1), **SMALL)
  variables = _import(learnt, net, reinit=('skip_scale_stage',))
  assert sorted(k for k in variables['params'] if k.startswith('skip_scale')) == [
      'skip_scale_stage1',
      'skip_scale_stage4',
      'skip_scale_stage6',
  ]
  for stage, k in ((1, -0.5), (4, 0.3), (6, 0.0)):
    variables['params'][f'skip_scale_stage{stage}'] = np.float32(k)
  _rewire(net, SKIP, monkeypatch)
  got, want = _logits(learnt, variables, net)
  assert _error(got, want) <= 1e-4


def test_train_mode_batch_statistics_match_torchvision():
  """train=True without stochastic depth or dropout: BatchNorm on batch statistics, as torch's train mode."""
  torch = _torch()
  net = _small_torch_net(seed=4, stochastic_depth_prob=0.0)
  net.classifier[0].p = 0.0
  model = efficientnet.EfficientNet(num_classes=7, stochastic_depth=0.0, dropout=0.0, **SMALL)
  variables = _import(model, net)
  x = np.random.default_rng(5).normal(size=(4, 3, SIZE, SIZE)).astype(np.float32)
  net.train()
  with torch.no_grad():
    want = net(torch.from_numpy(x)).numpy()
  got, updates = jax.jit(lambda v, im: model.apply(v, im, train=True, mutable=['batch_stats']))(
      variables, x.transpose(0, 2, 3, 1)
  )
  assert _error(np.asarray(got), want) <= 1e-4
  # Running statistics move by torch's momentum 0.1 (Flax momentum 0.9). The mean as torch's; the variance from
  # the biased batch variance (Flax), where torch's uses the unbiased one: n / (n - 1) apart, n = 4 * 2 * 2 here.
  ours, torch_bn = updates['batch_stats']['block4_1']['project']['bn'], net.features[4][1].block[3][1]
  old = variables['batch_stats']['block4_1']['project']['bn']
  np.testing.assert_allclose(ours['mean'], torch_bn.running_mean, rtol=1e-4, atol=1e-6)
  batch_var, n = (ours['var'] - 0.9 * old['var']) / 0.1, 4 * 2 * 2
  np.testing.assert_allclose(0.9 * old['var'] + 0.1 * batch_var * n / (n - 1), torch_bn.running_var, rtol=1e-4)


@pytest.mark.slow
def test_full_depth_weight_file_through_the_config(tmp_path):
  """A torchvision-layout file (DataParallel-prefixed, 1000 classes) through config.model.init_file for a 7-class
  width-8 efficientnet_b0 at full depth: every tensor but the head is loaded (the default init_reinit names
  'classifier'), the logits equal torch's once the head is copied too, and the file as it is fits no 7-class
  model."""
  torch = _torch()
  from mi_jax import convert  # pylint: disable=g-import-not-at-top
  from mi_jax.defenses import transplant  # pylint: disable=g-import-not-at-top

  net = _small_torch_net(seed=2, num_classes=1000, depth_mult=1.0)
  path = tmp_path / 'efficientnet_b0.pth'
  torch.save({'state_dict': {'module.' + k: v for k, v in net.state_dict().items()}}, path)
  config = _config(width=8, init_file=str(path))
  assert tuple(config.init_reinit) == ('fc', 'classifier')
  model = models.build_model(config)
  fresh = _zeros_like_init(model)  # what the file leaves alone stays as it was
  variables = convert.init_from_file(config, fresh)
  np.testing.assert_array_equal(variables['params']['classifier']['kernel'], fresh['params']['classifier']['kernel'])
  np.testing.assert_array_equal(
      variables['params']['block6_3']['expand']['conv']['kernel'],
      net.features[6][3].block[0][0].weight.detach().numpy().transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
      variables['batch_stats']['block1_0']['depthwise']['bn']['mean'], net.features[1][0].block[0][1].running_mean
  )
  with pytest.raises(transplant.TransplantError, match=r'params/classifier/kernel: source \(320, 1000\)'):
    convert.init_from_file(config, fresh, as_is=True)
  full = models.build_model(_config(width=8, num_classes=1000))
  got, want = _logits(full, _import(full, net), net)
  assert _error(got, want) <= 1e-4
