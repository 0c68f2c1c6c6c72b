"""PPA end to end on a tiny generator and target: the optimisation raises the target's confidence,
the job writes its outputs, resumes after an interruption with the same result, and the same
global batch gives the same latents on 1 or 2 devices."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import attack_outputs, jobs, models
from mi_jax.attacks import losses, optimize, ppa
from mi_jax.data import transforms
from mi_jax.train import checkpoint
from mi_jax.stylegan import networks, save_generator

pytestmark = pytest.mark.slow  # every test here runs jitted optimisations over a tiny world

GEN = networks.GeneratorConfig(
    z_dim=8, w_dim=8, img_resolution=16, img_channels=1, mapping_layers=2, channel_base=64, channel_max=8
)


@pytest.fixture(scope='module')
def tiny_world(tmp_path_factory):
  """A random tiny generator directory and a target 'train workdir' (checkpoint + config, untrained)."""
  root = tmp_path_factory.mktemp('attack_world')
  G = networks.Generator(GEN)
  gen_vars = jax.jit(G.init)(jax.random.key(0), jnp.zeros((1, GEN.z_dim)))
  save_generator(str(root / 'generator'), GEN, gen_vars)

  from configs import baseline  # pylint: disable=g-import-not-at-top

  config = baseline.get_config('tiny')
  model = models.build_model(config.model)
  variables = models.init_variables(model, (1, 16, 16, 1), jax.random.key(1))
  # What a checkpoint holds; init's `perturbations` (batch 1) would broadcast over any batch.
  variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  target_dir = str(root / 'target')
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(target_dir), best_metric=None)
  ckpt.save(1, {'params': variables['params'], 'batch_stats': variables['batch_stats']}, {}, config, {})
  ckpt.wait()
  ckpt.close()
  return root, model, variables, G, gen_vars


def attack_config(root, **attack):
  from configs import attack_ppa  # pylint: disable=g-import-not-at-top

  config = attack_ppa.get_config()
  config.target.workdir = str(root / 'target')
  config.generator.dir = str(root / 'generator')
  config.num_devices = 1
  config.attack.update(
      classes=(1, 3),
      search_space_size=24,
      num_candidates=6,
      truncation_cutoff=2,
      batch_size=4,
      steps=6,
      center_crop=0,
      final_samples=3,
      final_iterations=4,
  )
  config.attack.update(**attack)
  return config


def test_optimisation_raises_the_target_class_confidence(tiny_world):
  _, model, variables, G, gen_vars = tiny_world
  settings = optimize.OptimizeSettings(steps=30, lr=0.02, center_crop=0, input_size=16)
  synthesize = lambda w: G.apply(gen_vars, w[:, None], method=G.synthesize)
  classify = lambda x, p: model.apply({**variables, 'perturbations': p}, x, train=False)
  zeros = ppa.perturbation_zeros(model, variables, 16, 1)
  run = jax.jit(optimize.make_optimize_fn(synthesize, classify, zeros, settings))
  w0 = jnp.asarray(np.random.default_rng(0).standard_normal((4, GEN.w_dim)), jnp.float32)
  probs = lambda w: jax.nn.softmax(model.apply(variables, synthesize(w), train=False))
  targets = jnp.argmin(probs(w0), axis=1)  # the class each start image is least like
  w, log = run(w0, targets, jnp.ones(4, bool), jax.random.key(0))
  confidence = lambda w: np.asarray(jnp.take_along_axis(probs(w), targets[:, None], 1)[:, 0])
  before, after = confidence(w0), confidence(w)
  # An untrained target's Poincaré optimum need not be its softmax optimum for every sample, but on
  # average the target class gains by orders of magnitude (geometric mean x10 or more).
  assert np.mean(np.log(after)) > np.mean(np.log(before)) + np.log(10), (before, after)
  poincare = lambda w: np.asarray(losses.poincare_loss(model.apply(variables, synthesize(w), train=False), targets))
  assert np.all(poincare(w) < poincare(w0))
  assert float(log['loss'][-1]) < float(log['loss'][0])
  assert bool(np.all(log['finite']))
  assert sorted(log['stage_grad_norm']) == ['stage1_input', 'stage2_input', 'stage3_input', 'stage4_input']
  assert all(np.all(np.asarray(v) > 0) for v in log['stage_grad_norm'].values())
  # Rematerialising the generator changes memory, not results.
  remat = optimize.OptimizeSettings(steps=3, lr=0.02, center_crop=0, input_size=16, remat=True)
  plain = optimize.OptimizeSettings(steps=3, lr=0.02, center_crop=0, input_size=16)
  valid = jnp.ones(4, bool)
  w_remat, _ = jax.jit(optimize.make_optimize_fn(synthesize, classify, zeros, remat))(
      w0, targets, valid, jax.random.key(1)
  )
  w_plain, _ = jax.jit(optimize.make_optimize_fn(synthesize, classify, zeros, plain))(
      w0, targets, valid, jax.random.key(1)
  )
  np.testing.assert_allclose(w_remat, w_plain, rtol=1e-5, atol=1e-6)


def test_gradient_statistics_and_padding(tiny_world):
  """The logged mean/std of |dL/dw| are those of the batch-mean loss's gradient (the RoLSS code's statistic,
  torch.std: unbiased), and padded rows change nothing for the real ones."""
  _, model, variables, G, gen_vars = tiny_world
  settings = optimize.OptimizeSettings(steps=3, lr=0.02, center_crop=0, input_size=16)
  synthesize = lambda w: G.apply(gen_vars, w[:, None], method=G.synthesize)
  classify = lambda x, p: model.apply({**variables, 'perturbations': p}, x, train=False)
  zeros = ppa.perturbation_zeros(model, variables, 16, 1)
  run = jax.jit(optimize.make_optimize_fn(synthesize, classify, zeros, settings))
  w0 = jnp.asarray(np.random.default_rng(1).standard_normal((4, GEN.w_dim)), jnp.float32)
  targets, key = jnp.array([0, 1, 2, 3]), jax.random.key(5)
  valid = jnp.array([True, True, True, False])  # row 3 pads the batch
  w, log = run(w0, targets, valid, key)

  def batch_mean_loss(w, step_key):  # PPA's step-0 loss on the three real rows, written out
    x = transforms.random_resized_crop(
        step_key, synthesize(w), 16, settings.rrc_scale, settings.rrc_ratio, settings.antialias
    )
    return jnp.mean(losses.poincare_loss(model.apply(variables, x, train=False), targets[:3]))

  grad = np.abs(np.asarray(jax.grad(batch_mean_loss)(w0[:3], jax.random.split(key, 3)[0])))
  np.testing.assert_allclose(log['w_grad_abs_mean'][0], grad.mean(), rtol=1e-4)
  np.testing.assert_allclose(log['w_grad_abs_std'][0], grad.std(ddof=1), rtol=1e-4)
  np.testing.assert_allclose(log['loss'][0], batch_mean_loss(w0[:3], jax.random.split(key, 3)[0]), rtol=1e-5)
  # The three real rows end where a batch of only them ends (same crops; Adam is per element).
  w3, log3 = jax.jit(optimize.make_optimize_fn(synthesize, classify, zeros, settings))(
      w0[:3], targets[:3], jnp.ones(3, bool), key
  )
  np.testing.assert_allclose(w[:3], w3, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(log['w_grad_abs_std'], log3['w_grad_abs_std'], rtol=1e-5)


def test_attack_job_outputs_resume_and_device_count(tiny_world, tmp_path):
  root = tiny_world[0]
  workdir = str(tmp_path / 'attack')
  config = attack_config(root, batch_size=1)
  config.num_devices = 8  # global batch 8 over 8 devices
  config.evaluation.workdir = str(root / 'target')  # the target as its own evaluator: top-1 = its own verdict
  results = jobs.run(config, workdir)
  assert results['classes'] == 2 and results['latents_optimized'] == 12 and results['batches'] == 2
  for name in (
      'candidates.npz',
      'optimized/batch_00001.npz',
      'final/class_00001.npz',
      'grids/class_00003.png',
      'final_grid.png',
      'log.json',
      'attack.json',
      'run.json',
  ):
    assert os.path.exists(os.path.join(workdir, name)), name
  with np.load(os.path.join(workdir, 'final', 'class_00003.npz')) as f:
    # No images: they are rendered from w when evaluated (float, as PPA); the evaluator's logits are kept.
    assert sorted(f.files) == ['eval_logits', 'eval_logits_all', 'scores', 'w']
    assert f['w'].shape == (3, GEN.w_dim) and np.all(np.diff(f['scores']) <= 0)  # best first
    first_w = f['w'].copy()
  with open(os.path.join(workdir, 'log.json')) as f:
    log = json.load(f)['batches']
  assert len(log) == 2 and len(log[0]['loss']) == 6 and 'grad_norm/stage4_input' in log[0]
  assert len(log[0]['w_grad_abs_mean']) == 6 and all(v > 0 for v in log[0]['w_grad_abs_std'])
  assert results['target_step'] == 1 and results['target_checkpoint'] == 'latest'
  # The evaluator is the target itself, so the attack accuracy is the target's own verdict on the images
  # rendered from the saved latents: top-1 over the final images, and over every optimised one (unfiltered).
  model, variables = tiny_world[1], tiny_world[2]
  render = attack_outputs.make_renderer(workdir)
  for (w, targets), prefix in (
      (attack_outputs.final_latents(workdir)[:2], 'eval'),
      (attack_outputs.optimized_latents(workdir), 'eval_unfiltered'),
  ):
    images = np.asarray(render(jnp.asarray(w), 16))
    assert images.shape == (len(w), 16, 16, 1) and images.dtype == np.float32
    logits = np.asarray(model.apply(variables, images, train=False))
    assert results[f'{prefix}_top1'] == pytest.approx(np.mean(np.argmax(logits, -1) == targets))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert results[f'{prefix}_top5'] == pytest.approx(np.mean(np.any(top5 == targets[:, None], axis=1)))

  # Interrupted after batch 0: batch 1 (4 latents, padded to 8) and the final selection are redone on
  # one device with the same global batch, and agree with the 8-device run.
  with np.load(os.path.join(workdir, 'optimized', 'batch_00001.npz')) as f:
    batch1 = f['w'].copy()
  os.remove(os.path.join(workdir, 'optimized', 'batch_00001.npz'))
  shutil.rmtree(os.path.join(workdir, 'final'))
  config = attack_config(root, batch_size=8)
  jobs.run(config, workdir)
  with np.load(os.path.join(workdir, 'optimized', 'batch_00001.npz')) as f:
    np.testing.assert_allclose(f['w'], batch1, rtol=1e-4, atol=1e-5)
  with np.load(os.path.join(workdir, 'final', 'class_00003.npz')) as f:
    np.testing.assert_allclose(f['w'], first_w, rtol=1e-4, atol=1e-5)

  # A different attack in the same workdir is refused, naming the field.
  with pytest.raises(ppa.AttackError, match='attack'):
    jobs.run(attack_config(root, steps=7), workdir)


def test_attack_refuses_bad_inputs_before_any_work(tiny_world, tmp_path):
  root = tiny_world[0]
  config = attack_config(root)
  config.generator.dir = str(tmp_path)
  with pytest.raises(ppa.AttackError, match='config.generator.dir'):
    jobs.validate_config(config)
  config = attack_config(root, classes=(1, 7))
  with pytest.raises(ppa.AttackError, match=r'\[7\], outside the target\'s 5 classes'):
    jobs.run(config, str(tmp_path / 'a'))
  config = attack_config(root, center_crop=32)
  with pytest.raises(ppa.AttackError, match='center_crop=32'):
    jobs.run(config, str(tmp_path / 'b'))
  assert not os.path.exists(tmp_path / 'b' / 'candidates.npz')


def test_non_finite_loss_stops_the_batch_and_keeps_its_state(tiny_world, tmp_path):
  root = tiny_world[0]
  G = networks.Generator(GEN)
  gen_vars = jax.jit(G.init)(jax.random.key(0), jnp.zeros((1, GEN.z_dim)))
  gen_vars['params']['synthesis']['b16']['torgb']['bias'] = jnp.full((1,), jnp.nan)  # every image is NaN
  save_generator(str(tmp_path / 'nan_generator'), GEN, gen_vars)
  config = attack_config(root, classes=(2,), num_candidates=4, final_samples=2)
  config.generator.dir = str(tmp_path / 'nan_generator')
  workdir = tmp_path / 'attack'
  with pytest.raises(FloatingPointError, match=r'batch 0 \(classes \[2\]\) at step 0'):
    jobs.run(config, str(workdir))
  with np.load(workdir / 'optimized' / 'batch_00000.failed.npz') as f:
    assert f['w'].shape == (4, GEN.w_dim) and not f['finite'].any()
    np.testing.assert_array_equal(f['w'], f['w0'])  # no update was applied from a non-finite step
  assert not (workdir / 'optimized' / 'batch_00000.npz').exists() and not (workdir / 'final').exists()
