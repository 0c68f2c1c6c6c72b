"""ResNet structure (torchvision parameter counts) and the skip-control invariants."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from configs import common
from mi_jax import models
from mi_jax.models import convnext, densenet, mobilenet, repvgg, resnet


def _init(model, size=32, channels=3):
  return models.init_variables(model, (2, size, size, channels), jax.random.PRNGKey(0))


# Models with no torchvision counterpart; their size is checked against the paper instead
# (test_repvgg_deploy_parameter_counts_match_the_paper), or leaf for leaf against torch definitions of the
# reference networks (tests/test_evolve.py).
NOT_IN_TORCHVISION = ('repvgg_a0', 'repvgg_a1', 'repvgg_b0', 'vgg16_64', 'ir152_64', 'facenet64', 'facenet112')


@pytest.mark.parametrize('name', [n for n in models.model_names() if n not in NOT_IN_TORCHVISION])
def test_every_model_built_through_the_config_has_torchvision_size(name):
  """Every name `config.model.name` accepts, built as a job builds it (ImageNet head), counted against
  torchvision's model of the same name (random init, nothing downloaded)."""
  torch_compat = pytest.importorskip('mi_jax.convert.torch_compat')
  pytest.importorskip('torch', reason="torch is not installed (pip install -e '.[test,torch]')")
  tvm = torch_compat.import_torchvision().models
  config = common.base_config().model
  config.name, config.num_classes, config.skip = name, 1000, (1.0,) * models.num_skip_stages(name)
  extra = {}
  if name == 'inception_v3':  # PPA's evaluation model: with the auxiliary head, as torchvision builds it
    config.aux_logits = config.transform_input = True
    extra = dict(aux_logits=True, init_weights=False)
  model = models.build_model(config)
  size = 299 if name == 'inception_v3' else 224
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))
  ours = sum(x.size for x in jax.tree.leaves(variables['params']))
  theirs = sum(p.numel() for p in getattr(tvm, name)(weights=None, **extra).parameters())
  assert ours == theirs, (name, ours, theirs)


def _tiny(skip, block=resnet.BasicBlock):
  return resnet.ResNet(stage_sizes=(1, 1, 1, 1), block_cls=block, num_classes=3, skip=skip, width=4, stem='small')


@pytest.mark.parametrize('block', [resnet.BasicBlock, resnet.Bottleneck])
def test_parameter_tree_does_not_depend_on_skip(block):
  shapes = {}
  for skip in [(1, 1, 1, 1), (1, 1, 1, 0), (0, 0, 0, 0), (1, 0.5, 0.2, 0.0)]:
    params = jax.eval_shape(lambda: _tiny(skip, block).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))
    shapes[skip] = jax.tree.map(lambda x: x.shape, params)
  first = shapes[(1, 1, 1, 1)]
  assert all(s == first for s in shapes.values())
  assert 'downsample_conv' in first['params']['layer4_0']


def test_removed_skip_gets_no_gradient_and_scaled_skip_is_linear():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  variables = _init(_tiny((1, 1, 1, 1)), 16)

  def logits(skip, params):
    return jax.jit(_tiny(skip).apply)({**variables, 'params': params}, x)

  grads = jax.jit(jax.grad(lambda p: logits((1, 1, 1, 0), p).sum()))(variables['params'])
  removed = grads['layer4_0']
  assert float(jnp.abs(removed['downsample_conv']['kernel']).max()) == 0.0
  assert float(jnp.abs(removed['conv1']['kernel']).max()) > 0.0
  full = jax.jit(jax.grad(lambda p: logits((1, 1, 1, 1), p).sum()))(variables['params'])
  assert float(jnp.abs(full['layer4_0']['downsample_conv']['kernel']).max()) > 0.0
  # k = 1 and k = 0 bracket the scaled models; the three differ.
  outs = [logits((1, 1, 1, k), variables['params']) for k in (0.0, 0.5, 1.0)]
  assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])


def test_learnable_skip_equals_fixed_and_is_clipped():
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16, 3))
  learn = _tiny((1, 1, 1, 'learn:0.3'))
  variables = _init(learn, 16)
  assert float(variables['params']['skip_scale_stage4']) == pytest.approx(0.3)
  fixed_vars = {**variables, 'params': {k: v for k, v in variables['params'].items() if k != 'skip_scale_stage4'}}

  def with_raw(raw):
    return jax.jit(learn.apply)(
        {**variables, 'params': {**variables['params'], 'skip_scale_stage4': jnp.float32(raw)}}, x
    )

  for raw, k in ((0.3, 0.3), (1.7, 1.0), (-0.5, 0.0)):
    want = jax.jit(_tiny((1, 1, 1, k)).apply)(fixed_vars, x)
    np.testing.assert_allclose(with_raw(raw), want, rtol=1e-6, atol=1e-6)
  grad = jax.jit(jax.grad(lambda p: learn.apply({**variables, 'params': p}, x).sum()))(variables['params'])
  assert float(grad['skip_scale_stage4']) != 0.0


def test_stage_input_perturbations_give_stage_gradients():
  """`perturbations` hold dL/dz_i at each stage input (for the gradient-flow analysis)."""
  model = _tiny((1, 1, 1, 1))
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 16, 3))
  variables = _init(model, 16)
  grads = jax.jit(jax.grad(lambda pert: model.apply({**variables, 'perturbations': pert}, x).sum()))(
      variables['perturbations']
  )
  assert set(grads) == {f'stage{i}_input' for i in range(1, 5)}
  assert grads['stage1_input'].shape == (2, 16, 16, 4) and grads['stage4_input'].shape == (2, 4, 4, 16)


def test_build_model_from_config():
  config = ml_collections.ConfigDict(
      dict(
          name='resnet50',
          num_classes=7,
          skip=(1, 1, 1, 0.2),
          width=8,
          stem='imagenet',
          dtype='float32',
          skip_mode='truncate',
      )
  )
  model = models.build_model(config)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 64, 64, 3))))
  out = jax.eval_shape(model.apply, variables, jnp.zeros((2, 64, 64, 3)))
  assert out.shape == (2, 7)
  flat = traverse_util.flatten_dict(variables['params'], sep='/')
  assert 'layer1_0/downsample_conv/kernel' in flat  # bottleneck: projection in stage 1 too
  assert flat['layer1_0/downsample_conv/kernel'].shape == (1, 1, 8, 32)


@pytest.mark.parametrize('k', [0.0, 0.01, 0.5, 1.0])
def test_densenet_truncation_follows_the_official_channel_formula(k):
  """Layer j >= 1 of a truncated block sees round(k*C0) + (j-1)*round(k*g) + g channels."""
  growth, blocks, init_features = densenet.DENSENET_CONFIGS['densenet121']
  model = densenet.DenseNet(
      growth_rate=growth, block_config=blocks, num_init_features=init_features, num_classes=530, skip=(1, 1, 1, k)
  )
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))['params']
  block4 = params['denseblock4']
  c0 = 512  # DenseNet-121: 1024 channels after block 3, halved by transition 3
  assert block4['denselayer1']['norm1']['scale'].shape == (c0,)
  for j in range(1, 16):
    want = round(k * c0) + (j - 1) * round(k * growth) + growth
    assert block4[f'denselayer{j + 1}']['norm1']['scale'].shape == (want,)
  assert params['classifier']['kernel'].shape == (round(k * c0) + 15 * round(k * growth) + growth, 530)
  assert params['denseblock3']['denselayer24']['norm1']['scale'].shape == (256 + 23 * 32,)  # untouched stage


def test_densenet_scale_mode_keeps_the_tree_and_can_learn():
  def tree(skip):
    model = models.build_model(
        ml_collections.ConfigDict(
            dict(
                name='densenet121', num_classes=5, skip=skip, width=8, stem='small', dtype='float32', skip_mode='scale'
            )
        )
    )
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1))))['params']

  full = jax.tree.map(lambda x: x.shape, tree((1, 1, 1, 1)))
  assert jax.tree.map(lambda x: x.shape, tree((1, 1, 1, 0))) == full
  learn = tree((1, 1, 1, 'learn:0.01'))
  assert set(learn) - set(full) == {'skip_scale_stage4'}
  with pytest.raises(ValueError, match="skip_mode='scale'"):
    models.build_model(
        ml_collections.ConfigDict(
            dict(
                name='densenet121',
                num_classes=5,
                skip=(1, 1, 1, 'learn'),
                width=8,
                stem='small',
                dtype='float32',
                skip_mode='truncate',
            )
        )
    )


def test_densenet_removed_skip_cuts_the_block_input_off_later_layers():
  """Truncation with k = 0: only the first layer of the block sees the block input."""
  model = densenet.DenseNet(
      growth_rate=4, block_config=(2, 3), num_init_features=8, num_classes=3, skip=(1, 0), stem='small'
  )
  variables = models.init_variables(model, (2, 8, 8, 3), jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  grads = jax.jit(jax.grad(lambda p: model.apply({**variables, 'perturbations': p}, x).sum()))(
      variables['perturbations']
  )
  assert float(jnp.abs(grads['stage2_input']).max()) > 0  # reaches it through layer 1 only
  block = variables['params']['denseblock2']
  assert block['denselayer2']['conv1']['kernel'].shape[2] == 4 and block['denselayer3']['conv1']['kernel'].shape[2] == 4


@pytest.mark.parametrize('name, paper_millions', [('repvgg_a0', 8.30), ('repvgg_a1', 12.78), ('repvgg_b0', 14.33)])
def test_repvgg_deploy_parameter_counts_match_the_paper(name, paper_millions):
  num_blocks, multiplier = repvgg.REPVGG_CONFIGS[name]
  model = repvgg.RepVGG(num_blocks=num_blocks, width_multiplier=multiplier, num_classes=1000, deploy=True)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) / 1e6 == pytest.approx(paper_millions, abs=0.01)


def _randomise(tree, key, low, high):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.uniform(k, x.shape, x.dtype, low, high) for k, x in zip(keys, leaves)])


@pytest.mark.slow
@pytest.mark.parametrize('dtype, tol', [('float64', 1e-10), ('float32', 2e-4)])
@pytest.mark.parametrize('skip', [(1, 1, 1, 1), (1, 0.5, 0, 1)])
def test_repvgg_reparameterisation_keeps_outputs_and_input_gradients(dtype, tol, skip):
  """The paper's RepVGG point: the folded plain network gives an attacker the same function and gradients."""
  make = functools.partial(
      repvgg.RepVGG,
      num_blocks=(1, 2, 2, 1),
      width_multiplier=(0.75, 2.5),
      num_classes=4,
      skip=skip,
      width=8,
      dtype=jnp.dtype(dtype),
  )
  with jax.enable_x64(dtype == 'float64'):
    train_model, deploy_model = make(), make(deploy=True)
    variables = models.init_variables(train_model, (1, 32, 32, 3), jax.random.PRNGKey(0))
    variables = {  # non-trivial BN statistics and affine parameters, as after training
        'params': _randomise(variables['params'], jax.random.PRNGKey(1), -0.5, 0.5),
        'batch_stats': {
            k: {
                'mean': _randomise(v['mean'], jax.random.PRNGKey(2), -0.3, 0.3),
                'var': _randomise(v['var'], jax.random.PRNGKey(3), 0.5, 1.5),
            }
            if 'mean' in v
            else v
            for k, v in variables['batch_stats'].items()
        },
    }
    if dtype == 'float64':
      variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
    deploy_vars = repvgg.reparameterize(jax.device_get(variables), skip)
    x = jax.random.normal(jax.random.PRNGKey(4), (3, 32, 32, 3), jnp.float64 if dtype == 'float64' else jnp.float32)

    def target_logit(apply, v, images):
      return apply(v, images)[:, 2].sum()  # an attacker's objective: one class's logit

    out_train = jax.jit(train_model.apply)(variables, x)
    out_deploy = jax.jit(deploy_model.apply)(deploy_vars, x)
    grad_train = jax.jit(jax.grad(lambda im: target_logit(train_model.apply, variables, im)))(x)
    grad_deploy = jax.jit(jax.grad(lambda im: target_logit(deploy_model.apply, deploy_vars, im)))(x)
  out_train, out_deploy, grad_train, grad_deploy = map(np.asarray, (out_train, out_deploy, grad_train, grad_deploy))
  scale = float(np.abs(out_train).max())
  np.testing.assert_allclose(out_deploy, out_train, rtol=0, atol=tol * scale)
  np.testing.assert_allclose(grad_deploy, grad_train, rtol=0, atol=tol * float(np.abs(grad_train).max()))
  assert 'rbr_identity' not in str(jax.tree_util.tree_structure(deploy_vars))  # no skip branch is left


def test_mobilenet_refuses_skip_settings_on_groups_without_residual():
  config = ml_collections.ConfigDict(
      dict(
          name='mobilenet_v2',
          num_classes=5,
          skip=(1, 1, 1, 1, 1, 1, 0),
          width=0,
          stem='imagenet',
          dtype='float32',
          skip_mode='truncate',
      )
  )
  with pytest.raises(ValueError, match=r'skip\[6\]=0: MobileNetV2 group 7 has no residual'):
    models.build_model(config)


# Each family's module at reduced depth (full depth is pinned by the parameter-count tests above;
# compiling full-depth DenseNets/RepVGGs for every skip setting would take many minutes on CPU),
# trained with full, removed-last-stage and SSF (fixed or learnable) skips.
_FAMILIES = {
    'resnet': (
        functools.partial(resnet.ResNet, stage_sizes=(1, 1, 1, 1), block_cls=resnet.BasicBlock, width=4, stem='small'),
        [(1, 1, 1, 1), (1, 1, 1, 0), (1, 1, 1, 'learn:0.2')],
    ),
    'densenet_truncate': (
        functools.partial(
            densenet.DenseNet, growth_rate=4, block_config=(2, 2, 2, 2), num_init_features=8, stem='small'
        ),
        [(1, 1, 1, 1), (1, 1, 1, 0), (1, 1, 1, 0.01)],
    ),
    'densenet_scale': (
        functools.partial(
            densenet.DenseNet,
            growth_rate=4,
            block_config=(2, 2, 2, 2),
            num_init_features=8,
            stem='small',
            skip_mode='scale',
        ),
        [(1, 1, 1, 0), (1, 1, 1, 'learn:0.01')],
    ),
    'repvgg': (
        functools.partial(repvgg.RepVGG, num_blocks=(1, 2, 2, 2), width_multiplier=(0.75, 2.5), width=4),
        [(1, 1, 1, 1), (1, 1, 1, 0), (1, 1, 1, 0.2)],
    ),
    'mobilenet_v2': (
        functools.partial(
            mobilenet.MobileNetV2,
            width_mult=0.25,
            dropout=0.0,
            block_setting=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 1), (6, 64, 2, 2)),
        ),
        [(1, 1, 1, 1), (1, 1, 1, 0), (1, 1, 1, 'learn:0.2')],
    ),
    'convnext': (
        functools.partial(convnext.ConvNeXt, depths=(1, 1, 1, 2), dims=(4, 8, 16, 32)),
        [(1, 1, 1, 1), (1, 1, 1, 0), (1, 1, 1, 'learn:0.2')],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize('family', sorted(_FAMILIES))
def test_every_family_trains_with_each_skip_setting(family):
  from mi_jax.train import sharding, state as state_lib, steps  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  make, skips = _FAMILIES[family]
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(8, 32, 32, 1)).astype(np.float32), 'label': np.arange(8, dtype=np.int32) % 3}
  mesh = sharding.make_mesh(1)
  lr_fn = optax.constant_schedule(3e-3)
  for skip in skips:
    state = state_lib.create_train_state(make(num_classes=3, skip=skip), optax.adam(lr_fn), (1, 32, 32, 1), seed=0)
    train_step, _ = steps.compile_steps(mesh, lr_fn)
    losses = []
    for _ in range(8):
      state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
      losses.append(float(metrics['loss']))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], (skip, losses)
