"""ViT-B/16 (mi_jax.models.vit) and its torchvision importer, checked against torchvision's VisionTransformer.

The torch-dependent tests need the optional torch extra (pip install -e '.[torch]' plus torchvision==0.28.0)
and are skipped with the reason when it is absent. Parity runs on small geometries (32 px, hidden 32);
the full ViT-B/16 is only counted (jax.eval_shape, no compute).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from mi_jax import models
from mi_jax.convert import torchvision_vit
from mi_jax.models import vit

BRANCHES = ('all', 'attention', 'mlp')
# Small torchvision-style geometry for the parity tests: 32 px, 8x8 patches (16 + 1 tokens), 2 blocks.
SMALL = dict(patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


@pytest.fixture(name='torch')
def torch_module():
  return pytest.importorskip('torch', reason="torch is not installed (pip install -e '.[test,torch]')")


def _torchvision_vit(seed, image_size=32, num_classes=7, **geometry):
  """torchvision's VisionTransformer with every tensor randomised, in eval mode.

  torchvision starts the head at 0 and biases at ~0, so the logits would be 0 and the biases untested:
  LayerNorm scales in [0.6, 1], biases N(0, 0.1), a random class token and positional embedding, and a
  head of std 3 / sqrt(fan_in) give logits of O(1-10) that differ between inputs.
  """
  from torch_reference import torchvision_models  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  tvm = torchvision_models(seed)
  geometry = {**SMALL, **geometry}
  net = tvm.VisionTransformer(image_size=image_size, num_classes=num_classes, **geometry)
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in net.state_dict().items():
      if name.endswith('bias'):
        tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
      elif tensor.ndim == 1:  # LayerNorm scales
        tensor.copy_(0.6 + 0.4 * torch.rand(tensor.shape, generator=gen))
      elif name in ('class_token', 'encoder.pos_embedding'):
        tensor.copy_(0.5 * torch.randn(tensor.shape, generator=gen))
    head = net.heads.head.weight
    head.copy_(3.0 / math.sqrt(head.shape[1]) * torch.randn(head.shape, generator=gen))
  return net.eval()


def _state(net):
  return {k: v.detach().numpy() for k, v in net.state_dict().items()}


def _images(size=32, batch=2):
  return np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)


def _torch_logits(net, x):
  import torch  # pylint: disable=g-import-not-at-top

  with torch.no_grad():
    return net(torch.from_numpy(x)).numpy()


def _imported_logits(model, state_dict, x, reinit=()):
  """The Flax model's logits with `state_dict` imported (nothing but `reinit` may be left fresh)."""
  from mi_jax.convert import torchvision as tv_convert  # pylint: disable=g-import-not-at-top

  fresh = jax.device_get(models.init_variables(model, (1,) + x.shape[2:] + (3,), jax.random.PRNGKey(0)))
  variables, report = tv_convert.merge_into(
      torchvision_vit.to_flax(tv_convert.clean_state_dict(state_dict)),
      {'params': fresh['params'], 'batch_stats': {}},
      reinit=reinit,
  )
  assert not report.dropped and all(any(p in r for p in reinit) for r in report.reinitialised), report.summary()
  return np.asarray(jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1))), variables


def _check_scale(want):
  assert 1.0 < np.abs(want).max() < 100.0 and np.abs(want[0] - want[1]).max() > 0.1  # a meaningful scale


def _error(got, want) -> float:
  """max |got - want| relative to the logits' scale (at least 1)."""
  return float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))


def test_parity_with_torchvision_and_legacy_mlp_names(torch):
  """A randomised torchvision VisionTransformer (32 px, patch 8, 2 blocks, hidden 32, 2 heads) converted
  gives its logits; so does the same file with the pre-0.13 MLP names (mlp.linear_1/2, as in torchvision's
  ImageNet ViT files) behind a DataParallel `module.` prefix."""
  del torch
  net = _torchvision_vit(seed=1)
  x = _images()
  want = _torch_logits(net, x)
  _check_scale(want)
  model = vit.VisionTransformer(num_classes=7, skip=(1.0, 1.0), **SMALL)
  got, _ = _imported_logits(model, _state(net), x)
  assert _error(got, want) <= 1e-4
  legacy = {
      'module.' + k.replace('.mlp.0.', '.mlp.linear_1.').replace('.mlp.3.', '.mlp.linear_2.'): v
      for k, v in _state(net).items()
  }
  assert any('mlp.linear_2.' in k for k in legacy)
  got, _ = _imported_logits(model, legacy, x)
  assert _error(got, want) <= 1e-4


@pytest.mark.slow
def test_vit_b_16_built_from_the_config_at_demo_width_matches_torchvision(torch):
  """models.build_model('vit_b_16', width=32, stem='small'): 12 blocks, hidden 32, 1 head, MLP 128, 4x4
  patches; imported through the registry's torch_layout, it computes torchvision's function."""
  del torch
  from mi_jax.convert import torchvision as tv_convert  # pylint: disable=g-import-not-at-top
  from torch_reference import model_config  # pylint: disable=g-import-not-at-top

  assert tv_convert.kind_of('vit_b_16') == 'vit'
  net = _torchvision_vit(seed=2, patch_size=4, num_layers=12, num_heads=1, hidden_dim=32, mlp_dim=128)
  config = model_config('vit_b_16', 7, skip=(1.0,) * 12, width=32, stem='small')
  model = models.build_model(config)
  assert (model.patch_size, model.num_layers, model.num_heads, model.hidden_dim, model.mlp_dim) == (4, 12, 1, 32, 128)
  x = _images()
  want = _torch_logits(net, x)
  _check_scale(want)
  fresh = jax.device_get(models.init_variables(model, (1, 32, 32, 3), jax.random.PRNGKey(0)))
  variables, report = tv_convert.merge_into(
      tv_convert.to_flax(_state(net), 'vit'), {'params': fresh['params'], 'batch_stats': {}}
  )
  assert not report.reinitialised and not report.dropped
  got = np.asarray(jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1)))
  assert _error(got, want) <= 1e-4


def _official_encoder_block(block, k, branch):
  """The RoLSS release's EncoderBlock.forward (models/torchvision/models/vision_transformer.py) on a
  torchvision block: the factor multiplies the identity of the residual(s) its `mode` names."""

  def forward(inputs):
    x = block.ln_1(inputs)
    x, _ = block.self_attention(x, x, x, need_weights=False)
    x = block.dropout(x)
    x = x + (k if branch != 'mlp' else 1.0) * inputs
    y = block.mlp(block.ln_2(x))
    return y + (k if branch != 'attention' else 1.0) * x

  return forward


@pytest.mark.parametrize('branch', BRANCHES)
@pytest.mark.parametrize('k', [0.0, 0.5])
def test_skip_factor_matches_the_official_encoder_block(torch, branch, k):
  """skip=(k, 1) with residual_branch=branch equals torchvision's net whose first block runs the official
  code's forward with factor k and that mode (k=0: the residual's identity removed), and not the plain net;
  the second block (k=1) stays plain."""
  del torch
  net = _torchvision_vit(seed=3)
  x = _images()
  plain = _torch_logits(net, x)
  net.encoder.layers[0].forward = _official_encoder_block(net.encoder.layers[0], k, branch)
  want = _torch_logits(net, x)
  _check_scale(want)
  assert np.abs(want - plain).max() > 1e-2  # the rewiring changes the function
  model = vit.VisionTransformer(num_classes=7, skip=(k, 1.0), residual_branch=branch, **SMALL)
  got, _ = _imported_logits(model, _state(net), x)
  assert _error(got, want) <= 1e-4


def test_learnable_factor_starts_at_its_value_and_gives_the_fixed_function(torch):
  """'learn:0.5' on block 2 (mode mlp) adds the parameter skip_scale_stage2 = 0.5 (the only leaf not in
  the torch file) and computes the official factor-0.5 function."""
  del torch
  net = _torchvision_vit(seed=4)
  x = _images()
  net.encoder.layers[1].forward = _official_encoder_block(net.encoder.layers[1], 0.5, 'mlp')
  want = _torch_logits(net, x)
  model = vit.VisionTransformer(num_classes=7, skip=(1.0, 'learn:0.5'), residual_branch='mlp', **SMALL)
  got, variables = _imported_logits(model, _state(net), x, reinit=('skip_scale_stage2',))
  assert float(variables['params']['skip_scale_stage2']) == 0.5 and 'skip_scale_stage1' not in variables['params']
  assert _error(got, want) <= 1e-4


def _small(**kw):
  return vit.VisionTransformer(num_classes=3, **{**SMALL, 'skip': (1.0, 1.0), **kw})


def test_learn_creates_skip_scale_parameters_and_starts_as_the_plain_model():
  """'learn' makes skip_scale_stage{i} (init 1, clipped to [0, 1]) for its blocks only, gives the plain
  model's function at k = 1, and the learnt k gets a gradient. Fixed settings never change the tree.
  (Fixed k = 1 under every residual_branch is the plain block: the second block of the official-forward
  tests above.)"""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  learnt = _small(skip=('learn', 'learn'), residual_branch='mlp')
  params = models.init_variables(learnt, (1, 32, 32, 3), jax.random.PRNGKey(0))['params']
  assert {k for k in params if k.startswith('skip_scale')} == {'skip_scale_stage1', 'skip_scale_stage2'}
  assert float(params['skip_scale_stage1']) == 1.0
  plain = _small()
  plain_params = {k: v for k, v in params.items() if not k.startswith('skip_scale')}
  want = jax.jit(plain.apply)({'params': plain_params}, x)

  def loss(p):
    logits = learnt.apply({'params': p}, x)
    return jnp.sum(logits**2), logits

  grad, got = jax.jit(jax.grad(loss, has_aux=True))(params)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert float(jnp.abs(grad['skip_scale_stage1'])) > 0.0
  shapes = lambda m: jax.tree.map(jnp.shape, jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x))['params'])
  assert shapes(_small(skip=(0.0, 0.3))) == shapes(plain)


def test_train_mode_runs_and_every_block_input_is_a_perturbation_point():
  """apply(train=True) runs without an rng (dropout 0, as torchvision) and equals eval mode; the attacks'
  perturbation points are the 2 block inputs, [batch, patches + 1, hidden]; a dropout model needs its rng."""
  model = _small()
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = models.init_variables(model, (1, 32, 32, 3), jax.random.PRNGKey(0))
  apply = jax.jit(model.apply, static_argnames='train')
  np.testing.assert_allclose(apply(variables, x, train=True), apply(variables, x, train=False), atol=1e-6)
  _, state = jax.eval_shape(lambda: model.apply({'params': variables['params']}, x, mutable=['perturbations']))
  assert {k: v.shape for k, v in state['perturbations'].items()} == {
      'stage1_input': (2, 17, 32),
      'stage2_input': (2, 17, 32),
  }
  dropped = _small(dropout=0.5)
  out = jax.jit(functools.partial(dropped.apply, train=True))(variables, x, rngs={'dropout': jax.random.PRNGKey(1)})
  assert np.all(np.isfinite(out)) and np.abs(out - apply(variables, x, train=False)).max() > 1e-3


def test_vit_b_16_has_torchvisions_parameter_count():
  """ViT-B/16 with 1000 classes at 224 px: 86,567,656 parameters (torchvision's vit_b_16); counted with
  jax.eval_shape."""
  config = common.base_config().model
  config.update(name='vit_b_16', num_classes=1000, skip=(1.0,) * 12)
  assert models.num_skip_stages('vit_b_16') == 12 and models.family_of('vit_b_16').torch_layout == 'vit'
  model = models.build_model(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))['params']
  assert shapes['pos_embedding'].shape == (1, 197, 768) and shapes['classifier']['kernel'].shape == (768, 1000)
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 86_567_656


def test_torchvision_meta_agrees_on_the_parameter_count(torch):
  del torch
  from mi_jax.convert import torch_compat  # pylint: disable=g-import-not-at-top

  assert torch_compat.import_torchvision().models.ViT_B_16_Weights.IMAGENET1K_V1.meta['num_params'] == 86_567_656


def _config(**kw):
  config = common.base_config().model
  config.update({'name': 'vit_b_16', 'num_classes': 5, 'skip': (1.0,) * 12, 'width': 32, 'stem': 'small', **kw})
  return config


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r'config\.model\.skip=.* has 4 entries; vit_b_16 has 12 stages'):
    models.build_model(_config(skip=(1.0, 1.0, 1.0, 0.0)))
  with pytest.raises(ValueError, match=r'config\.model\.skip: skip setting 1\.5'):
    models.build_model(_config(skip=(1.0,) * 11 + (1.5,)))
  with pytest.raises(ValueError, match=r"config\.model\.residual_branch='ffn': expected one of all, attention, mlp"):
    models.build_model(_config(residual_branch='ffn'))
  with pytest.raises(ValueError, match=r"config\.model\.stem='tiny'"):
    models.build_model(_config(stem='tiny'))
  with pytest.raises(ValueError, match=r'config\.model\.width=200: .* divisible by its 3 heads'):
    models.build_model(_config(width=200))
  # The module used directly (tests, notebooks) checks the same things at its first call.
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match='skip has 3 entries, the model has 2 encoder blocks'):
    _small(skip=(1.0, 1.0, 1.0)).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="residual_branch 'both'"):
    _small(residual_branch='both').init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match='input of 30x30 px: not divisible by the patch size 8'):
    _small().init(jax.random.PRNGKey(0), jnp.zeros((1, 30, 30, 3)))


def test_a_model_initialised_at_one_size_refuses_another():
  """The positional embedding is sized at init (32 px, patch 8: 17 tokens); 64 px inputs are refused,
  naming it."""
  model = _small()
  variables = models.init_variables(model, (1, 32, 32, 3), jax.random.PRNGKey(0))
  assert variables['params']['pos_embedding'].shape == (1, 17, 32)
  with pytest.raises(Exception, match='pos_embedding'):
    model.apply(variables, jnp.zeros((1, 64, 64, 3)))


def test_importer_names_keys_that_are_not_a_torchvision_vit():
  state = {'class_token': np.zeros((1, 1, 8), np.float32), 'heads.pre_logits.weight': np.zeros((4, 8), np.float32)}
  with pytest.raises(ValueError, match=r'1 tensors are not part of a torchvision ViT .*heads\.pre_logits\.weight'):
    torchvision_vit.to_flax(state)
  with pytest.raises(ValueError, match=r'conv_proj\.weight: expected a conv weight'):
    torchvision_vit.to_flax({'conv_proj.weight': np.zeros((8, 3), np.float32)})


@pytest.mark.slow
def test_imagenet_file_imports_for_530_classes_with_the_default_config_and_refuses_another_size(torch, tmp_path):
  """A 224 px, 1000-class torchvision ViT file (hidden 32 to stay small) imported for FaceScrub's 530
  classes with the default config.model.init_reinit ('fc', 'classifier'): the head is re-initialised and
  every other tensor copied. The same file for a 32 px model fails, listing pos_embedding's two shapes."""
  from mi_jax import convert  # pylint: disable=g-import-not-at-top
  from mi_jax.defenses import transplant  # pylint: disable=g-import-not-at-top

  net = _torchvision_vit(
      seed=5, image_size=224, num_classes=1000, patch_size=16, num_layers=12, num_heads=1, hidden_dim=32, mlp_dim=128
  )
  path = tmp_path / 'vit_b_16_imagenet.pth'
  torch.save({'state_dict': {'module.' + k: v for k, v in net.state_dict().items()}}, path)
  config = _config(stem='imagenet', init_file=str(path))
  config.num_classes = 530
  assert tuple(config.init_reinit) == ('fc', 'classifier')  # the default
  model = models.build_model(config)

  variables = jax.device_get(models.init_variables(model, (1, 224, 224, 3), jax.random.PRNGKey(0)))
  start = {'params': variables['params'], 'batch_stats': {}}  # as the trainer passes it
  variables = convert.init_from_file(config, start)
  params, state = variables['params'], _state(net)
  np.testing.assert_array_equal(params['pos_embedding'], state['encoder.pos_embedding'])
  np.testing.assert_array_equal(
      params['encoder_layer_11']['self_attention']['in_proj']['kernel'],
      state['encoder.layers.encoder_layer_11.self_attention.in_proj_weight'].T,
  )
  np.testing.assert_array_equal(params['conv_proj']['kernel'], state['conv_proj.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['classifier']['kernel'], start['params']['classifier']['kernel'])
  assert params['classifier']['kernel'].shape == (32, 530)
  with pytest.raises(
      transplant.TransplantError, match=r'params/pos_embedding: source \(1, 197, 32\) vs target \(1, 5, 32\)'
  ):
    # Shapes are all a refusal needs: the 32 px tree is only traced (no compile).
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    convert.init_from_file(config, {'params': shapes['params'], 'batch_stats': {}})
