"""GMI, KEDMI and LOMMA: the update rules and losses against hand computations, the job's resume, its errors,
and evaluation reading its outputs."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mi_jax import attack_outputs, jobs
from mi_jax.attacks import gmi, ppa
from mi_jax.gan64 import losses as gan_losses
from mi_jax.train import checkpoint


def test_optax_nesterov_is_gmis_hand_written_update():
  """GMI: v <- m v - lr g; z <- z - m v_old + (1 + m) v, then clip (GMI-Attack Celeba/attack.py)."""
  rng = np.random.RandomState(0)
  grads = [rng.randn(3, 4).astype(np.float32) for _ in range(4)]
  lr, m = 0.02, 0.9
  z_ref, v = rng.randn(3, 4).astype(np.float32), np.zeros((3, 4), np.float32)
  z = jnp.asarray(z_ref)
  tx = optax.sgd(lr, momentum=m, nesterov=True)
  state = tx.init(z)
  for g in grads:
    v_old = v
    v = m * v - lr * g
    z_ref = np.clip(z_ref - m * v_old + (1 + m) * v, -1, 1)
    updates, state = tx.update(jnp.asarray(g), state, z)
    z = jnp.clip(optax.apply_updates(z, updates), -1, 1)
  np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-6)


def test_identity_and_prior_losses_at_hand_computed_points():
  logits, targets = jnp.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]]), jnp.array([0, 2])
  np.testing.assert_allclose(gmi.identity_loss('logit', logits, targets), [-2.0, -1.0])
  ce = -np.log(np.exp([2.0, 1.0]) / np.exp(np.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])).sum(1))
  np.testing.assert_allclose(gmi.identity_loss('ce', logits, targets), ce, rtol=1e-6)
  np.testing.assert_allclose(gmi.prior_loss('wgan_gp', jnp.array([1.5, -2.0])), [-1.5, 2.0])
  np.testing.assert_allclose(gmi.prior_loss('kedmi', (None, logits)), gan_losses.real_loss(logits))


def _toy_inversion(settings, p_reg=None):
  """A linear 'generator' and classifier, so every loss term has a closed form."""
  A = jnp.asarray(np.random.RandomState(1).randn(4, 3).astype(np.float32))  # z (4) -> logits (3)
  generate = lambda z: z[:, None, None, :]  # [B, 1, 1, 4] "images"
  classify = lambda images, perturbations: (images[:, 0, 0] @ A, images[:, 0, 0])  # features = z
  critic = lambda images: jnp.sum(images, axis=(1, 2, 3))  # a WGAN score
  return A, gmi.make_inversion_fn(generate, critic, 'wgan_gp', [classify], p_reg, settings)


def test_gmi_step_minimises_prior_plus_weighted_identity():
  settings = gmi.InversionSettings(method='gmi', steps=1, lr=0.1, momentum=0.0, identity_weight=2.0, clip=False)
  A, invert = _toy_inversion(settings)
  z0 = jnp.asarray(np.random.RandomState(2).uniform(-0.5, 0.5, (2, 4)).astype(np.float32))
  targets, valid = jnp.array([0, 2]), jnp.array([True, True])
  z1, log = invert(z0, targets, valid, jax.random.key(0))

  def loss(z):
    prior = -jnp.mean(jnp.sum(z, axis=1))
    return prior + 2.0 * jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z @ A, targets))

  np.testing.assert_allclose(log['loss'][0], loss(z0), rtol=1e-6)
  np.testing.assert_allclose(z1, z0 - 0.1 * jax.grad(loss)(z0), rtol=1e-5, atol=1e-7)  # plain SGD at momentum 0


def test_padded_rows_do_not_count_and_lommas_feature_term_is_the_mean_square():
  settings = gmi.InversionSettings(
      method='gmi', steps=1, lr=0.0, momentum=0.0, identity_weight=1.0, identity_loss='logit', feature_weight=0.5
  )
  p_reg = jnp.array([0.1, -0.2, 0.3, 0.0])
  A, invert = _toy_inversion(settings, p_reg)
  z0 = jnp.asarray(np.random.RandomState(3).uniform(-0.5, 0.5, (3, 4)).astype(np.float32))
  targets, valid = jnp.array([1, 0, 1]), jnp.array([True, True, False])  # the third row is padding
  _, log = invert(z0, targets, valid, jax.random.key(0))
  z, logits = np.asarray(z0[:2]), np.asarray(z0[:2] @ A)
  expected_identity = -np.mean(logits[[0, 1], [1, 0]]) + 0.5 * np.mean(np.mean((z - np.asarray(p_reg)) ** 2, axis=1))
  np.testing.assert_allclose(log['identity'][0], expected_identity, rtol=1e-5)
  np.testing.assert_allclose(log['prior'][0], -np.mean(z.sum(1)), rtol=1e-5)


def test_kedmi_learns_mean_and_log_variance_through_reparameterised_samples():
  settings = gmi.InversionSettings(method='kedmi', steps=1, lr=0.02, identity_weight=1.0, clip=False)
  A, invert = _toy_inversion(settings)
  init = {'mu': jnp.zeros((2, 4)), 'logvar': jnp.ones((2, 4))}
  targets, valid, key = jnp.array([0, 1]), jnp.array([True, True]), jax.random.key(5)
  params, log = invert(init, targets, valid, key)
  eps = jax.random.normal(jax.random.split(key, 1)[0], (2, 4))

  def loss(p):
    z = p['mu'] + jnp.exp(0.5 * p['logvar']) * eps
    return -jnp.mean(jnp.sum(z, 1)) + jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z @ A, targets))

  np.testing.assert_allclose(log['loss'][0], loss(init), rtol=1e-5)
  # Adam's first step moves every coordinate by lr against the sign of its gradient.
  grads = jax.grad(loss)(init)
  for name in ('mu', 'logvar'):
    np.testing.assert_allclose(params[name], init[name] - 0.02 * np.sign(grads[name]), rtol=1e-4, atol=1e-6)


def test_a_nan_step_leaves_the_latents_and_is_flagged():
  settings = gmi.InversionSettings(method='gmi', steps=3, lr=0.1, clip=False)
  generate = lambda z: z[:, None, None, :]
  classify = lambda images, perturbations: (jnp.log(images[:, 0, 0]), images[:, 0, 0])  # log of negatives: NaN
  invert = gmi.make_inversion_fn(generate, lambda x: jnp.sum(x, axis=(1, 2, 3)), 'wgan_gp', [classify], None, settings)
  z0 = -jnp.ones((2, 4))
  z, log = invert(z0, jnp.array([0, 1]), jnp.array([True, True]), jax.random.key(0))
  assert not np.any(log['finite']) and np.all(np.asarray(z) == -1.0)


# ------------------------------------------------------------------ the job


@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory, tfds_dir):
  """A 16px digits target, an evaluation model, and a WGAN-GP and a KEDMI GAN trained for a few steps."""
  from configs import baseline, gan64  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp('gan64_attack')
  dirs = {}
  for name, seed in (('target', 42), ('evaluation', 7)):
    config = baseline.get_config('tiny,epochs=1')
    config.data.data_dir, config.num_devices, config.seed = tfds_dir, 1, seed
    dirs[name] = str(root / name)
    jobs.run(config, dirs[name])
  for kind in ('wgan_gp', 'kedmi'):
    config = gan64.get_config(('kedmi,' if kind == 'kedmi' else '') + 'tiny')
    config.data.data_dir, config.num_devices, config.gan.target.workdir = tfds_dir, 1, dirs['target']
    jobs.run(config, str(root / kind))
    dirs[kind] = str(root / kind / 'gan')
  return dirs


def _attack_config(method, setup, tfds_dir, lomma=False):
  from configs import attack_gan64  # pylint: disable=g-import-not-at-top

  config = attack_gan64.get_config(method, 'lomma' if lomma else None)
  config.target.workdir, config.evaluation.workdir = setup['target'], setup['evaluation']
  config.generator.dir = setup['wgan_gp' if method == 'gmi' else 'kedmi']
  config.num_devices = 1
  config.attack.update(num_classes=0, batch_size=2, steps=6, restarts=2, samples=3, keep=1 if method == 'gmi' else 3)
  config.public_data.update(name='digits_demo/public', data_dir=tfds_dir, image_size=16)
  config.attack.lomma.public_samples = 100
  return config


@pytest.mark.slow
@pytest.mark.parametrize('method, lomma', [('gmi', False), ('kedmi', True)])
def test_attack_resumes_after_a_kill_with_identical_results_and_evaluates(
    tiny_setup, tfds_dir, tmp_path, monkeypatch, method, lomma
):
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  results = jobs.run(_attack_config(method, tiny_setup, tfds_dir, lomma), straight)
  per_class = 2 if method == 'gmi' else 3  # restarts, or samples
  assert results['classes'] == 5 and results['latents_optimized'] == 5 * per_class
  assert 0 <= results['eval_top1'] <= 1 and results['lomma'] == lomma
  from mi_jax.analysis import gradient_flow  # pylint: disable=g-import-not-at-top

  norms = gradient_flow.stage_gradient_norms(straight)  # the paper's analysis reads these attacks too
  assert list(norms) == ['stage1_input', 'stage2_input', 'stage3_input', 'stage4_input']
  assert all(np.isfinite(v) and v > 0 for v in norms.values())

  original = gmi._optimize_unit  # pylint: disable=protected-access
  calls = []

  def die_on_the_second_unit(*args):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return original(*args)

  monkeypatch.setattr(gmi, '_optimize_unit', die_on_the_second_unit)
  with pytest.raises(KeyboardInterrupt):
    jobs.run(_attack_config(method, tiny_setup, tfds_dir, lomma), killed)
  monkeypatch.setattr(gmi, '_optimize_unit', original)
  assert sorted(os.listdir(os.path.join(killed, 'optimized'))) == ['batch_00000.npz']
  jobs.run(_attack_config(method, tiny_setup, tfds_dir, lomma), killed)

  for a, b in zip(attack_outputs.final_latents(straight), attack_outputs.final_latents(killed)):
    np.testing.assert_array_equal(a, b)
  w, targets, _ = attack_outputs.final_latents(killed)
  assert w.shape == (5 * (1 if method == 'gmi' else 3), 32) and sorted(set(targets.tolist())) == [0, 1, 2, 3, 4]
  # The evaluate job renders these latents through the GAN, as it does PPA's.
  render = attack_outputs.make_renderer(killed)
  images = np.asarray(render(jnp.asarray(w[:2]), 16))
  assert images.shape == (2, 16, 16, 1) and images.min() >= -1 and images.max() <= 1


@pytest.mark.slow
def test_bad_inputs_are_named(tiny_setup, tfds_dir, tmp_path):
  config = _attack_config('gmi', tiny_setup, tfds_dir)
  config.generator.dir = str(tmp_path)
  with pytest.raises(ppa.AttackError, match='config.generator.dir=.*no gan64.json'):
    jobs.validate_config(config)
  config = _attack_config('gmi', tiny_setup, tfds_dir)
  config.attack.method = 'kedmi'
  with pytest.raises(ppa.AttackError, match='the job is attack_gmi'):
    jobs.validate_config(config)
  config = _attack_config('gmi', tiny_setup, tfds_dir)
  config.attack.classes = (3, 9)
  with pytest.raises(ppa.AttackError, match=r"\[9\] are outside the target's 5 classes"):
    jobs.run(config, str(tmp_path / 'classes'))
  config = _attack_config('gmi', tiny_setup, tfds_dir)
  config.attack.keep = 3
  with pytest.raises(ppa.AttackError, match='attack.keep'):
    jobs.validate_config(config)


# ------------------------------------------------------------------ LOMMA's surrogates: distillation


def test_distillation_loss_is_torchs_kl_divergence():
  torch = pytest.importorskip('torch')
  from mi_jax.train import steps  # pylint: disable=g-import-not-at-top

  rng = np.random.RandomState(7)
  student, teacher = rng.randn(4, 6).astype(np.float32), rng.randn(4, 6).astype(np.float32) * 2
  for temperature in (1.0, 2.0):
    s, t = torch.from_numpy(student) / temperature, torch.from_numpy(teacher) / temperature
    kl = torch.nn.KLDivLoss(reduction='sum')(torch.log_softmax(s, 1), torch.softmax(t, 1))
    expected = (kl / temperature**2 / 4).item()
    np.testing.assert_allclose(steps.distillation_loss(student, teacher, temperature), expected, rtol=1e-5)
  assert float(steps.distillation_loss(teacher, teacher, 1.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_a_surrogate_learns_the_target_on_public_images(tiny_setup, tfds_dir, tmp_path):
  import csv  # pylint: disable=g-import-not-at-top

  from configs import distill  # pylint: disable=g-import-not-at-top

  config = distill.get_config('epochs=3')
  config.data.update(name='digits_demo/private', data_dir=tfds_dir, image_size=16)
  config.distill.data.update(name='digits_demo/public', data_dir=tfds_dir)
  config.distill.teacher = tiny_setup['target']
  config.model.update(num_classes=5, width=8, stem='small')
  config.optim.lr = 0.05
  config.num_devices, config.train.batch_size, config.train.log_every_steps = 1, 32, 5
  workdir = str(tmp_path / 'surrogate')
  results = jobs.run(config, workdir)
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    rows = [r for r in csv.DictReader(f) if r.get('train_loss')]
  assert float(rows[-1]['train_loss']) < 0.5 * float(rows[0]['train_loss'])
  assert float(rows[-1]['train_teacher_agreement']) > 0.6
  assert results['train_examples'] == 806  # the public digits 5-9, not the private 0-4
  # The surrogate is a classifier workdir: LOMMA's attack averages over it.
  attack = _attack_config('gmi', tiny_setup, tfds_dir, lomma=True)
  attack.attack.lomma.surrogates = (workdir,)
  attacked = jobs.run(attack, str(tmp_path / 'attack'))
  assert attacked['lomma'] and attacked['classes'] == 5
  config.distill.teacher = str(tmp_path)
  with pytest.raises(checkpoint.CheckpointError, match='config.distill.teacher='):
    jobs.run(config, str(tmp_path / 'other'))


def test_a_batch_that_goes_non_finite_stops_the_job_and_keeps_its_latents(tmp_path):
  from configs import attack_gan64  # pylint: disable=g-import-not-at-top
  from mi_jax.train import reporting  # pylint: disable=g-import-not-at-top

  config = attack_gan64.get_config('gmi')

  def invert(init, targets, valid, key):  # a run whose third step was not finite
    del targets, valid, key
    steps = 4
    return init, {
        'loss': np.ones(steps),
        'prior': np.ones(steps),
        'identity': np.ones(steps),
        'finite': np.array([True, True, False, False]),
        'w_grad_abs_mean': np.ones(steps),
        'w_grad_abs_std': np.ones(steps),
        'stage_grad_norm': {},
    }

  path = attack_outputs.batch_path(str(tmp_path), 3)
  os.makedirs(os.path.dirname(path))
  with pytest.raises(reporting.NonFiniteError, match=r'batch 3 \(classes \[7, 8\]...\) at step 2'):
    gmi._optimize_unit(config, invert, jnp.asarray, [7, 8], 4, 6, 3, 1, 0, path)  # pylint: disable=protected-access
  assert not os.path.exists(path)
  with np.load(path.replace('.npz', '.failed.npz')) as f:
    assert f['w'].shape == (4, 6) and list(f['finite']) == [True, True, False, False]
