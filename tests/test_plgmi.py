"""PLG-MI: known answers for the max-margin and hinge losses, pseudo-label selection, spectral normalisation
(against a numpy power iteration and the SVD), conditional BatchNorm and the augmentation; the GAN job's
kill/resume; the attack's outputs, resume and NaN stop."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import attack_outputs, jobs
from mi_jax.attacks import losses, plgmi as plgmi_attack, ppa
from mi_jax.gan64 import checkpoint as gan_io
from mi_jax.gan64 import conditional, networks, plgmi
from mi_jax.train import checkpoint

TINY = networks.GanConfig(resolution=16, img_channels=1, z_dim=8, width=4, num_classes=5)


def test_max_margin_loss_known_answer_and_gradient():
  logits = jnp.asarray([[1.0, 5.0, 3.0], [1.0, 5.0, 3.0]])
  targets = jnp.asarray([0, 1])
  np.testing.assert_allclose(losses.max_margin_loss(logits, targets), [5 - 1, 3 - 5])
  grad = jax.grad(lambda l: jnp.sum(losses.max_margin_loss(l, targets)))(logits)
  np.testing.assert_allclose(grad, [[-1, 1, 0], [0, -1, 1]])  # the label's logit and the runner-up only


def test_hinge_losses_known_answers():
  real, fake = jnp.asarray([2.0, 0.5]), jnp.asarray([-2.0, 0.0])
  assert float(plgmi.hinge_critic_loss(real, fake)) == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
  assert float(plgmi.hinge_generator_loss(fake)) == pytest.approx(1.0)


def test_top_n_per_class_may_share_images_and_orders_by_probability():
  probabilities = np.asarray([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8]])
  indices, top = plgmi.top_n_per_class(probabilities, 3)
  np.testing.assert_array_equal(indices, [[0, 1, 2], [3, 2, 1]])  # images 1 and 2 serve both classes
  np.testing.assert_allclose(top, [[0.9, 0.6, 0.55], [0.8, 0.45, 0.4]])
  with pytest.raises(ValueError, match='top_n=5'):
    plgmi.top_n_per_class(probabilities, 5)


def _power_iteration(w: np.ndarray, u: np.ndarray):
  """torch.nn.utils.spectral_norm's step on W [in, out] (flax's layout): v = W u / |.|, u = W^T v / |.|, sigma."""
  v = w @ u
  v /= max(np.linalg.norm(v), 1e-12)
  u = w.T @ v
  u /= max(np.linalg.norm(u), 1e-12)
  return u, v @ w @ u


def test_spectral_norm_matches_a_power_iteration_and_converges_to_the_top_singular_value():
  D = conditional.ProjectionCritic(TINY)
  images, y = jnp.zeros((2, 16, 16, 1)), jnp.asarray([0, 3])
  variables = D.init(jax.random.key(0), images, y)
  kernel = np.asarray(variables['params']['block1']['conv2']['kernel'], np.float64)
  matrix = kernel.reshape(-1, kernel.shape[-1])
  stats = variables['batch_stats']
  u = np.asarray(stats['block1']['conv2_sn']['conv2/kernel/u'], np.float64)[0]
  expected_u, expected_sigma = _power_iteration(matrix, u)
  _, updated = D.apply(variables, images, y, update_stats=True, mutable=['batch_stats'])
  got = updated['batch_stats']['block1']['conv2_sn']
  np.testing.assert_allclose(got['conv2/kernel/u'][0], expected_u, rtol=1e-5, atol=1e-6)
  assert float(got['conv2/kernel/sigma']) == pytest.approx(expected_sigma, rel=1e-5)
  # Called repeatedly (as in training), sigma converges to the largest singular value of the kernel.
  apply = jax.jit(lambda s: D.apply({**variables, 'batch_stats': s}, images, y, mutable=['batch_stats'])[1])
  for _ in range(60):
    stats = apply(stats)['batch_stats']
  top = np.linalg.svd(matrix, compute_uv=False)[0]
  assert float(stats['block1']['conv2_sn']['conv2/kernel/sigma']) == pytest.approx(top, rel=1e-3)
  # The projection term: the score moves with the class only through <embed(y), h>.
  scores = D.apply(
      {**variables, 'batch_stats': stats}, jnp.ones((2, 16, 16, 1)), jnp.asarray([1, 1]), update_stats=False
  )
  assert scores[0] == pytest.approx(float(scores[1]))


def test_conditional_batch_norm_scales_and_shifts_per_class():
  cbn = conditional.ConditionalBatchNorm(num_classes=3, train=True)
  x = jax.random.normal(jax.random.key(0), (4, 2, 2, 5)) * 3 + 1
  y = jnp.asarray([0, 2, 2, 1])
  variables = cbn.init(jax.random.key(1), x, y)
  gamma = jax.random.uniform(jax.random.key(2), (3, 5), minval=0.5, maxval=2)
  beta = jax.random.normal(jax.random.key(3), (3, 5))
  params = flax.core.unfreeze(variables['params'])
  params['gamma']['embedding'], params['beta']['embedding'] = gamma, beta
  out, _ = cbn.apply({**variables, 'params': params}, x, y, mutable=['batch_stats'])
  mean, var = np.mean(x, axis=(0, 1, 2)), np.var(x, axis=(0, 1, 2))
  expected = (
      np.asarray(gamma)[y][:, None, None] * (np.asarray(x) - mean) / np.sqrt(var + 1e-5)
      + np.asarray(beta)[y][:, None, None]
  )
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(variables['params']['gamma']['embedding'], 1.0)  # init: the identity
  np.testing.assert_array_equal(variables['params']['beta']['embedding'], 0.0)


def _params(**changes):
  base = dict(
      top=0.0,
      left=0.0,
      side=8.0,
      jitter=False,
      brightness=1.0,
      contrast=1.0,
      contrast_first=False,
      flip=False,
      angle=0.0,
  )
  base.update(changes)
  return plgmi.AugmentParams(**{k: jnp.asarray(v) for k, v in base.items()})


def test_augmentation_known_answers():
  image = jax.random.uniform(jax.random.key(0), (8, 8, 2))
  np.testing.assert_allclose(plgmi.apply_augment(image, _params()), image, atol=1e-6)
  np.testing.assert_allclose(plgmi.apply_augment(image, _params(flip=True)), image[:, ::-1], atol=1e-6)
  rotated = plgmi.apply_augment(image, _params(angle=90.0))
  np.testing.assert_allclose(rotated, np.rot90(np.asarray(image), k=1, axes=(0, 1)), atol=1e-5)
  # The central 4x4 crop (align_corners: its corner pixels land on the output's), then back to 8x8.
  cropped = plgmi.apply_augment(image, _params(top=2.0, left=2.0, side=4.0))
  np.testing.assert_allclose(cropped[0, 0], image[2, 2], atol=1e-6)
  np.testing.assert_allclose(cropped[-1, -1], image[5, 5], atol=1e-6)
  # Jitter: brightness adds factor - 1, contrast multiplies, each clamped to [0, 1], in the drawn order.
  x = jnp.full((8, 8, 1), 0.8)
  bright_first = plgmi.apply_augment(x, _params(jitter=True, brightness=1.15, contrast=1.2))
  np.testing.assert_allclose(bright_first, 1.0, atol=1e-6)  # min(0.95 x 1.2, 1)
  contrast_first = plgmi.apply_augment(x, _params(jitter=True, brightness=0.9, contrast=1.1, contrast_first=True))
  np.testing.assert_allclose(contrast_first, 0.88 - 0.1, atol=1e-6)
  # Random draws: crops cover 80-100% of the area, the rotation is within 5 degrees or off.
  draws = jax.vmap(lambda k: plgmi.draw_augment_params(k, 64, 0.5))(jax.random.split(jax.random.key(1), 2000))
  area = (np.asarray(draws.side) / 64) ** 2
  assert area.min() >= 0.8 - 1e-6 and area.max() <= 1.0 and np.all(np.asarray(draws.top) + draws.side <= 64 + 1e-4)
  assert np.abs(draws.angle).max() <= 5.0 and 0.4 < np.mean(np.asarray(draws.angle) == 0) < 0.6
  assert 0.4 < np.mean(draws.jitter) < 0.6 and 0.4 < np.mean(draws.flip) < 0.6


def test_a_gan_iteration_updates_both_networks_and_the_spectral_norms():
  hp = plgmi.Hyperparams(n_dis=2)
  state = plgmi.create_state(TINY, hp, seed=0)
  target = lambda images: jnp.mean(images, axis=(1, 2)) @ jnp.arange(5.0)[None]  # any differentiable classifier
  reals = jax.random.uniform(jax.random.key(1), (2, 4, 16, 16, 1))
  new, metrics = jax.jit(lambda s, r, l: plgmi.iteration(s, r, l, config=TINY, hp=hp, target=target))(
      state, reals, jnp.asarray([[0, 1, 2, 3], [4, 0, 1, 2]])
  )
  changed = lambda a, b: all(np.abs(x - y).max() > 0 for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert changed(new.g_params['fc'], state.g_params['fc']) and changed(
      new.d_params['fc']['kernel'], state.d_params['fc']['kernel']
  )
  assert changed(new.d_stats['block0'], state.d_stats['block0']) and int(new.step) == 1
  np.testing.assert_allclose(
      metrics['loss_g'], metrics['g_adversarial'] + hp.alpha * metrics['g_max_margin'], rtol=1e-5
  )


# ------------------------------------------------------------------ the jobs


@pytest.fixture(scope='module')
def tiny_target(tmp_path_factory, tfds_dir):
  """A 16px classifier of the private digits (one epoch): the target PLG-MI pseudo-labels with."""
  from configs import baseline  # pylint: disable=g-import-not-at-top
  from mi_jax.train import trainer  # pylint: disable=g-import-not-at-top

  config = baseline.get_config('tiny,epochs=1')
  config.data.data_dir, config.num_devices = tfds_dir, 1
  workdir = str(tmp_path_factory.mktemp('plgmi_target'))
  trainer.train_and_evaluate(config, workdir)
  return workdir


def _gan_config(tfds_dir, target, steps=4):
  from configs import plgmi_gan  # pylint: disable=g-import-not-at-top

  config = plgmi_gan.get_config(f'tiny,steps={steps}')
  config.data.data_dir, config.num_devices = tfds_dir, 2
  config.gan.target.workdir = target
  return config


class _Killed(Exception):
  pass


@pytest.fixture(scope='module')
def tiny_gan(tmp_path_factory, tfds_dir, tiny_target):
  """The tiny PLG-MI GAN trained straight through (4 iterations); its workdir."""
  workdir = str(tmp_path_factory.mktemp('plgmi_gan'))
  jobs.run(_gan_config(tfds_dir, tiny_target), workdir)
  return workdir


@pytest.mark.slow
def test_plgmi_gan_job_resumes_after_a_kill_like_an_uninterrupted_run(tmp_path, tfds_dir, tiny_target, tiny_gan):
  killed = str(tmp_path / 'killed')
  save = checkpoint.Checkpointer.save

  def save_then_die(self, step, *args):
    save(self, step, *args)
    if step == 2:
      raise _Killed

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(checkpoint.Checkpointer, 'save', save_then_die)
    with pytest.raises(_Killed):
      jobs.run(_gan_config(tfds_dir, tiny_target), killed)
  assert checkpoint.latest_step_in(killed) == 2 and not os.path.exists(os.path.join(killed, 'gan'))
  results = jobs.run(_gan_config(tfds_dir, tiny_target), killed)
  assert results['pseudo_labelled_pairs'] == 5 * 20
  config_a, kind_a, g_a, d_a = gan_io.load_gan(os.path.join(tiny_gan, 'gan'))
  config_b, kind_b, g_b, d_b = gan_io.load_gan(os.path.join(killed, 'gan'))
  assert config_a == config_b and kind_a == kind_b == plgmi.KIND and config_a.num_classes == 5
  assert 'batch_stats' in d_a  # the spectral norms' vectors travel with the critic
  for a, b in zip(jax.tree.leaves((g_a, d_a)), jax.tree.leaves((g_b, d_b))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with np.load(os.path.join(tiny_gan, 'pseudo_labels.npz')) as f:
    assert f['indices'].shape == (5, 20) and np.all(np.diff(f['probabilities'], axis=1) <= 0)


def _attack_config(tiny_target, gan_dir, **attack):
  from configs import attack_plgmi  # pylint: disable=g-import-not-at-top

  config = attack_plgmi.get_config()
  config.target.workdir, config.target.checkpoint = tiny_target, 'latest'
  config.evaluation.workdir, config.evaluation.checkpoint = tiny_target, 'latest'  # the target judges itself
  config.generator.dir = gan_dir
  config.num_devices = 1
  config.attack.update(num_classes=0, batch_size=4, restarts=2, keep=2, steps=5)
  config.attack.update(**attack)
  return config


@pytest.mark.slow
def test_plgmi_attack_outputs_resume_and_nan_stop(tmp_path, tiny_target, tiny_gan):
  gan_dir = os.path.join(tiny_gan, 'gan')
  workdir = str(tmp_path / 'attack')
  results = jobs.run(_attack_config(tiny_target, gan_dir), workdir)
  assert results['classes'] == 5 and results['batches'] == 4 and results['latents_optimized'] == 10
  with np.load(attack_outputs.batch_path(workdir, 1)) as f:
    assert f['w'].shape == (4, 16 + 1) and len(f['loss']) == 5 and 'grad_norm/stage4_input' in f.files
    np.testing.assert_array_equal(f['w'][:, -1], f['classes'])  # the class rides in the last column
    batch1 = f['w'].copy()
  with np.load(attack_outputs.batch_path(workdir, 0)) as f:  # restart 0 of batch 0
    restart0 = f['w'].copy()
  # The renderer feeds (z, class) to the conditional generator; the target judges the kept images as reported.
  w, targets, _ = attack_outputs.final_latents(workdir)
  from mi_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  model, variables = ckpt_lib.load_classifier(tiny_target, 'latest')[:2]
  images = np.asarray(attack_outputs.make_renderer(workdir)(jnp.asarray(w), 16))
  logits = np.asarray(model.apply(variables, images, train=False))
  assert results['eval_top1'] == pytest.approx(np.mean(np.argmax(logits, -1) == targets))
  # Killed after unit 0: the rest is redone identically.
  for b in (1, 2, 3):
    os.remove(attack_outputs.batch_path(workdir, b))
  import shutil  # pylint: disable=g-import-not-at-top

  shutil.rmtree(os.path.join(workdir, 'final'))
  again = jobs.run(_attack_config(tiny_target, gan_dir), workdir)
  with np.load(attack_outputs.batch_path(workdir, 1)) as f:
    np.testing.assert_allclose(f['w'], batch1, rtol=1e-5, atol=1e-6)
  with np.load(attack_outputs.batch_path(workdir, 0)) as f:
    np.testing.assert_array_equal(f['w'], restart0)
  assert again['eval_top1'] == results['eval_top1']
  with pytest.raises(ppa.AttackError, match='steps'):
    jobs.run(_attack_config(tiny_target, gan_dir, steps=6), workdir)

  # A GAN with a NaN weight: the first batch stops at step 0 and keeps its latents; nothing final.
  config_gan, kind, g_vars, d_vars = gan_io.load_gan(gan_dir)
  g_vars = jax.tree.map(np.asarray, g_vars)
  g_vars['params']['to_image']['bias'] = np.full_like(g_vars['params']['to_image']['bias'], np.nan)
  gan_io.save_gan(str(tmp_path / 'nan_gan'), config_gan, kind, g_vars, d_vars, source={})
  nan_dir = tmp_path / 'nan'
  with pytest.raises(FloatingPointError, match='batch 0 .* at step 0'):
    jobs.run(_attack_config(tiny_target, str(tmp_path / 'nan_gan')), str(nan_dir))
  assert (nan_dir / 'optimized' / 'batch_00000.failed.npz').exists() and not (nan_dir / 'final').exists()
  # GMI cannot use PLG-MI's GAN, and PLG-MI refuses GMI's (named, before any work).
  from configs import attack_gmi  # pylint: disable=g-import-not-at-top

  config = attack_gmi.get_config()
  config.target.workdir, config.target.checkpoint, config.generator.dir = tiny_target, 'latest', gan_dir
  with pytest.raises(ppa.AttackError, match="holds a 'plgmi' GAN"):
    jobs.run(config, str(tmp_path / 'gmi'))
  assert plgmi_attack.split_latents(jnp.asarray([[0.5, 3.0]]))[1].tolist() == [3]


def test_config_errors_name_the_field(tmp_path):
  from configs import attack_plgmi, plgmi_gan  # pylint: disable=g-import-not-at-top

  config = attack_plgmi.get_config()
  config.target.workdir = str(tmp_path)
  with pytest.raises(ppa.AttackError, match='config.generator.dir'):
    jobs.validate_config(config)
  config = plgmi_gan.get_config('tiny')
  config.gan.jitter_p = 2.0
  with pytest.raises(ValueError, match='config.gan.jitter_p=2.0'):
    jobs.validate_config(config)
  config = plgmi_gan.get_config('tiny')
  config.gan.target.workdir = ''
  with pytest.raises(ValueError, match='config.gan.target.workdir'):
    jobs.validate_config(config)
