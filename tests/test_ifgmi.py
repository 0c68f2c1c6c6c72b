"""IF-GMI: the l1-ball projection against an independent solution, the split synthesis against the whole
generator, the stage constraint binding, and the job's outputs, resume and NaN stop on a tiny world."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import attack_outputs, jobs
from mi_jax.attacks import ifgmi, optimize, ppa
from mi_jax.stylegan import networks, save_generator

from test_attack import GEN, attack_config, tiny_world  # pylint: disable=unused-import  # noqa: F401 (a fixture)


def l1_projection_by_bisection(x: np.ndarray, radius: float) -> np.ndarray:
  """The projection onto {|v|_1 <= r}: sign(x) max(|x| - theta, 0) with sum max(|x| - theta, 0) = r,
  theta found by bisection (the KKT conditions; no sorting)."""
  if np.abs(x).sum() <= radius:
    return x
  lo, hi = 0.0, np.abs(x).max()
  for _ in range(200):
    theta = 0.5 * (lo + hi)
    lo, hi = (theta, hi) if np.maximum(np.abs(x) - theta, 0).sum() > radius else (lo, theta)
  return np.sign(x) * np.maximum(np.abs(x) - 0.5 * (lo + hi), 0)


def test_l1_ball_projection_known_answers():
  # |(3, 1)|_1 = 4 onto radius 2: theta = 1 -> (2, 0); (-3, 1) keeps its sign; inside the ball: unchanged.
  x = jnp.asarray([[3.0, 1.0], [-3.0, 1.0], [0.5, -0.5]])
  np.testing.assert_allclose(ifgmi.project_l1_ball(x, 2.0), [[2.0, 0.0], [-2.0, 0.0], [0.5, -0.5]], atol=1e-6)
  # Random feature maps (batch of 4, each projected on its own) against the bisection solution.
  rng = np.random.RandomState(0)
  x = rng.randn(4, 3, 5, 6).astype(np.float32) * rng.uniform(0.1, 3, (4, 1, 1, 1)).astype(np.float32)
  radius = 20.0
  projected = np.asarray(ifgmi.project_l1_ball(jnp.asarray(x), radius))
  for i in range(4):
    np.testing.assert_allclose(projected[i].ravel(), l1_projection_by_bisection(x[i].ravel(), radius), atol=1e-5)
    if np.abs(x[i]).sum() > radius:
      assert np.abs(projected[i]).sum() == pytest.approx(radius, rel=1e-5)
    else:
      np.testing.assert_array_equal(projected[i], x[i])


def test_split_synthesis_composes_to_the_whole_generator():
  G = networks.Generator(GEN)
  gen_vars = G.init(jax.random.key(0), jnp.zeros((1, GEN.z_dim)))
  w = jax.random.normal(jax.random.key(1), (3, 1, GEN.w_dim))
  whole = G.apply(gen_vars, w, method=G.synthesize)
  x, image_so_far = G.apply(gen_vars, w, (0, 1), method=G.synthesize_blocks)
  assert x.shape == (3, 4, 4, 8) and image_so_far.shape == (3, 4, 4, 1)
  _, carried = G.apply(gen_vars, w, (1, 3), x, image_so_far, method=G.synthesize_blocks)
  np.testing.assert_allclose(carried, whole, atol=1e-6)
  # IF-GMI's split drops b4's ToRGB output; it reaches the image upsampled twice by StyleGAN's FIR filter.
  _, dropped = G.apply(gen_vars, w, (1, 3), x, None, method=G.synthesize_blocks)
  from mi_jax.stylegan import ops  # pylint: disable=g-import-not-at-top

  up = lambda img: ops.upsample2d(img, ops.setup_filter(GEN.resample_filter))
  np.testing.assert_allclose(whole - dropped, up(up(image_so_far)), atol=1e-5)
  with pytest.raises(ValueError, match='block_input'):
    G.apply(gen_vars, w, (1, 3), None, None, method=G.synthesize_blocks)


def test_a_feature_stage_stays_in_its_l1_balls(tiny_world):
  _, model, variables, G, gen_vars = tiny_world
  w0 = jax.random.normal(jax.random.key(2), (4, GEN.w_dim))
  feature0, _ = G.apply(gen_vars, w0[:, None], (0, 1), method=G.synthesize_blocks)
  render = lambda p: G.apply(gen_vars, p['w'][:, None], (1, 3), p['feature'], None, method=G.synthesize_blocks)[1]
  settings = optimize.OptimizeSettings(steps=5, lr=0.5, center_crop=0, input_size=16)
  radii = {'w': 0.3, 'feature': 1.5}
  run = jax.jit(
      optimize.make_optimize_fn(
          render,
          lambda x, p: model.apply(variables, x, train=False),
          lambda batch: {},
          settings,
          ifgmi.l1_ball_constraint(radii),
      )
  )
  params, log = run({'w': w0, 'feature': feature0}, jnp.asarray([0, 1, 2, 3]), jnp.ones(4, bool), jax.random.key(3))
  assert np.all(log['finite'])
  for name, start in (('w', w0), ('feature', feature0)):
    l1 = np.abs(np.asarray(params[name] - start)).reshape(4, -1).sum(1)
    np.testing.assert_allclose(l1, radii[name], rtol=1e-4)  # lr 0.5 leaves each ball: the projection binds


def ifgmi_config(root, **attack):
  config = attack_config(root, num_candidates=4, final_samples=4)
  config.job = 'attack_ifgmi'
  del config.attack['steps']
  config.attack.update(
      stage_steps=(4, 2, 2),
      w_radius=(1000.0, 1000.0, 1000.0),
      feature_radius=(0.0, 8.0, 16.0),
      carry_skip_image=False,
      store_size=0,
  )
  config.attack.update(**attack)
  return config


@pytest.mark.slow
def test_ifgmi_job_outputs_resume_and_nan_stop(tiny_world, tmp_path):
  root, model, variables = tiny_world[:3]
  workdir = str(tmp_path / 'attack')
  config = ifgmi_config(root)
  config.evaluation.workdir = str(root / 'target')  # the target as its own evaluator
  results = jobs.run(config, workdir)
  assert results['stages'] == 3 and results['latents_optimized'] == 8 and len(results['eval_top1_per_stage']) == 3
  with np.load(os.path.join(workdir, 'optimized', 'batch_00000.npz')) as f:
    assert f['images'].shape == (4, 16, 16, 1) and f['images'].dtype == np.float16
    np.testing.assert_array_equal(f['stage'], [0] * 4 + [1] * 2 + [2] * 2)  # the log covers every stage
    assert 'grad_norm/stage4_input' in f.files and f['w'].shape == (4, GEN.w_dim)
    batch0 = {k: f[k] for k in ('w', 'images')}
  with np.load(attack_outputs.final_path(workdir, 3)) as f:
    assert sorted(f.files) == ['eval_logits', 'eval_logits_all', 'images', 'scores', 'w']
    assert np.all(np.diff(f['scores']) <= 0)
  # The stored images are what evaluation renders; the target's verdict on them is the reported accuracy
  # (float16 storage: at most a rounding away from the full-precision images it was computed on).
  images, targets, _ = attack_outputs.final_latents(workdir)
  rendered = np.asarray(attack_outputs.make_renderer(workdir)(jnp.asarray(images), 16))
  assert rendered.dtype == np.float32 and rendered.shape == (8, 16, 16, 1)
  logits = np.asarray(model.apply(variables, rendered, train=False))
  assert results['eval_top1'] == pytest.approx(np.mean(np.argmax(logits, -1) == targets), abs=1 / 8 + 1e-9)
  with open(os.path.join(workdir, 'attack.json')) as f:
    assert json.load(f)['settings']['attack']['stage_steps'] == [4, 2, 2]

  # Killed after batch 0: batch 1 and the final selection are redone, here on 2 devices with the same global
  # batch (2 per device); batch 0 is read back unchanged.
  with np.load(os.path.join(workdir, 'optimized', 'batch_00001.npz')) as f:
    batch1 = f['images'].copy()
  os.remove(os.path.join(workdir, 'optimized', 'batch_00001.npz'))
  shutil.rmtree(os.path.join(workdir, 'final'))
  config.num_devices, config.attack.batch_size = 2, 2
  again = jobs.run(config, workdir)
  with np.load(os.path.join(workdir, 'optimized', 'batch_00001.npz')) as f:
    np.testing.assert_allclose(f['images'].astype(np.float32), batch1.astype(np.float32), atol=2e-3)
  with np.load(os.path.join(workdir, 'optimized', 'batch_00000.npz')) as f:
    np.testing.assert_array_equal(f['w'], batch0['w'])
  assert again['eval_top1_per_stage'] == pytest.approx(results['eval_top1_per_stage'], abs=1 / 8 + 1e-9)
  with pytest.raises(ppa.AttackError, match='stage_steps'):  # another attack in the same workdir is refused
    jobs.run(ifgmi_config(root, stage_steps=(4, 2)), workdir)

  # A NaN generator stops at stage 0 of batch 0 with its latents kept; nothing final is written.
  G = networks.Generator(GEN)
  gen_vars = jax.jit(G.init)(jax.random.key(0), jnp.zeros((1, GEN.z_dim)))
  gen_vars['params']['synthesis']['b16']['torgb']['bias'] = jnp.full((1,), jnp.nan)
  save_generator(str(tmp_path / 'nan_generator'), GEN, gen_vars)
  config = ifgmi_config(root, classes=(2,))
  config.generator.dir = str(tmp_path / 'nan_generator')
  with pytest.raises(FloatingPointError, match=r'batch 0 \(classes \[2\]\), stage 0 at step 0'):
    jobs.run(config, str(tmp_path / 'nan'))
  assert (tmp_path / 'nan' / 'optimized' / 'batch_00000.failed.npz').exists()
  assert not (tmp_path / 'nan' / 'final').exists()


@pytest.mark.parametrize(
    'field, value, message',
    [
        ('stage_steps', (50, 0), r'config.attack.stage_steps=\(50, 0\)'),
        ('w_radius', (1000.0,), 'config.attack.w_radius=.*a radius for each of the 4 stages'),
        ('store_size', -1, 'config.attack.store_size=-1'),
        ('final_samples', 32, r'config.attack.final_samples=32: expected <= attack.num_candidates \(16\)'),
    ],
)
def test_config_errors_name_the_field(tmp_path, field, value, message):
  from configs import attack_ifgmi  # pylint: disable=g-import-not-at-top

  config = attack_ifgmi.get_config('demo')
  config.target.workdir = str(tmp_path)
  config.attack[field] = value
  with pytest.raises(ppa.AttackError, match=message):
    jobs.validate_config(config)
