"""StyleGAN2 training: minibatch-std, style mixing, EMA schedule, R1, and the `gan` job's exact resume."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import jobs
from mi_jax.stylegan import checkpoint as generator_io
from mi_jax.stylegan import networks, training


def test_minibatch_std_matches_numpy():
  x = np.random.default_rng(0).standard_normal((8, 3, 3, 4)).astype(np.float32)
  got = np.asarray(networks.MinibatchStdLayer(group_size=4, num_channels=2).apply({}, jnp.asarray(x)))
  # Sample n is in group n % 2 (= N / G); each of the 2 feature groups has 2 channels.
  want = np.empty((8, 3, 3, 2), np.float32)
  for n in range(8):
    members = x[n % 2 :: 2]
    std = np.sqrt(members.var(axis=0) + 1e-8)  # [H, W, C], biased variance over the group
    want[n] = std.reshape(3, 3, 2, 2).mean(axis=(0, 1, 3))
  np.testing.assert_allclose(got[..., :4], x)
  np.testing.assert_allclose(got[..., 4:], want, rtol=1e-5)


def test_ema_beta_half_life_and_rampup():
  hp = training.GanHyperparams(ema_kimg=10.0, ema_rampup=0.05)
  # Early: half-life = 5% of the 320 images seen = 16 images; a batch of 32 is two half-lives.
  assert float(training.ema_beta(hp, 320, 32)) == pytest.approx(0.25)
  # Late: the 10 kimg half-life.
  assert float(training.ema_beta(hp, 10**7, 32)) == pytest.approx(0.5 ** (32 / 10000))
  no_rampup = training.GanHyperparams(ema_kimg=10.0, ema_rampup=None)
  assert float(training.ema_beta(no_rampup, 320, 32)) == pytest.approx(0.5 ** (32 / 10000))


@pytest.fixture(scope='module')
def tiny_gan():
  config = networks.GeneratorConfig(
      z_dim=8, w_dim=8, img_resolution=8, img_channels=1, mapping_layers=2, channel_base=32, channel_max=8
  )
  G = networks.Generator(config)
  D = networks.Discriminator(img_resolution=8, img_channels=1, channel_base=32, channel_max=8, mbstd_group_size=2)
  return G, D


@pytest.mark.slow
def test_style_mixing_switches_latents_at_one_cutoff(tiny_gan):
  G, _ = tiny_gan
  variables = G.init(jax.random.key(0), jnp.zeros((1, 8)))
  rng = jax.random.key(3)
  plain, _ = training.sample_ws(G, variables, rng, 16, style_mixing=0.0, update_w_avg=False)
  np.testing.assert_array_equal(plain, jnp.broadcast_to(plain[:, :1], plain.shape))
  mixed, _ = training.sample_ws(G, variables, rng, 16, style_mixing=1.0, update_w_avg=False)
  np.testing.assert_array_equal(mixed[:, 0], plain[:, 0])  # the first latent is the same z
  changes = [i for i in range(1, G.config.num_ws) if not np.array_equal(mixed[:, i], mixed[:, i - 1])]
  assert len(changes) == 1  # one cutoff, then the second latent for the remaining layers
  cutoff = changes[0]
  np.testing.assert_array_equal(
      mixed[:, cutoff:], jnp.broadcast_to(mixed[:, cutoff : cutoff + 1], mixed[:, cutoff:].shape)
  )


@pytest.mark.slow
def test_r1_is_the_squared_input_gradient_norm(tiny_gan):
  _, D = tiny_gan
  real = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 1)), jnp.float32)
  params = D.init(jax.random.key(1), real)['params']
  r1 = np.asarray(training.r1_penalty(D, params, real))
  # Finite differences of the summed logits (minibatch-std couples the samples) moving only sample 0,
  # along its gradient direction, give the norm of sample 0's gradient.
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x64 = jnp.asarray(real, jnp.float64)
    D64 = D.clone(dtype=jnp.float64)
    total = lambda x: jnp.sum(D64.apply({'params': p64}, x))
    grad = jax.grad(total)(x64).at[1].set(0.0)
    direction = grad / jnp.linalg.norm(grad)
    eps = 1e-5
    slope = (total(x64 + eps * direction) - total(x64 - eps * direction)) / (2 * eps)
  assert r1.shape == (2,)
  np.testing.assert_allclose(r1[0], float(slope) ** 2, rtol=1e-3)


@pytest.mark.slow
def test_train_step_updates_g_d_and_ema(tiny_gan):
  G, D = tiny_gan
  hp = training.GanHyperparams(r1_interval=2)
  state = training.create_state(G, D, hp, seed=0)
  before = jax.tree.map(np.array, state.replace(rng=None))
  real = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
  plain_step, r1_step = training.compile_train_steps(G, D, hp)
  state, metrics = r1_step(state, real)
  assert float(metrics['r1']) > 0 and np.isfinite(float(metrics['loss_d']))
  beta = float(metrics['ema_beta'])
  changed = lambda a, b: not np.array_equal(a, b)
  assert changed(state.g_params['mapping']['fc0']['kernel'], before.g_params['mapping']['fc0']['kernel'])
  assert changed(state.d_params['b8']['conv0']['kernel'], before.d_params['b8']['conv0']['kernel'])
  assert changed(state.g_buffers['mapping']['w_avg'], before.g_buffers['mapping']['w_avg'])  # tracked in training
  # G_ema = G + beta (G_ema_old - G).
  jax.tree.map(
      lambda e, old, new: np.testing.assert_allclose(e, new + beta * (old - new), rtol=1e-5, atol=1e-6),
      state.ema_params,
      before.ema_params,
      state.g_params,
  )
  state, metrics = plain_step(state, real)
  assert float(metrics['r1']) == 0 and int(state.step) == 2


def tiny_gan_config(tfds_dir, steps):
  from configs import gan_demo  # pylint: disable=g-import-not-at-top

  config = gan_demo.get_config(f'tiny,steps={steps}')
  config.data.data_dir = tfds_dir
  config.num_devices = 1
  config.gan.r1_interval = 2
  return config


@pytest.mark.slow
def test_gan_job_resumes_after_a_kill_like_an_uninterrupted_run(tmp_path, tfds_dir):
  straight = str(tmp_path / 'straight')
  jobs.run(tiny_gan_config(tfds_dir, 4), straight)
  killed = str(tmp_path / 'killed')

  class Killed(Exception):
    pass

  def kill_at_2(step):
    if step == 2:
      raise Killed

  from mi_jax.train import gan  # pylint: disable=g-import-not-at-top

  with pytest.raises(Killed):
    gan.train_gan(tiny_gan_config(tfds_dir, 4), killed, on_step=kill_at_2)
  assert not os.path.exists(os.path.join(killed, 'generator'))
  jobs.run(tiny_gan_config(tfds_dir, 4), killed)

  config_a, vars_a, source = generator_io.load_generator(os.path.join(straight, 'generator'))
  config_b, vars_b, _ = generator_io.load_generator(os.path.join(killed, 'generator'))
  assert config_a == config_b and config_a.img_resolution == 16 and source['job'] == 'gan'
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), vars_a, vars_b)
  for workdir in (straight, killed):
    assert sorted(os.listdir(os.path.join(workdir, 'samples'))) == ['fakes_000000.png', 'fakes_000004.png', 'reals.png']
    with open(os.path.join(workdir, 'metrics.csv')) as f:
      assert [line.split(',')[0] for line in f.read().splitlines()[1:]] == ['2', '4']

  bad = tiny_gan_config(tfds_dir, 4)
  bad.generator.channel_max = 32
  with pytest.raises(ValueError, match='config.generator'):
    jobs.run(bad, killed)  # a different architecture in the same workdir is refused
  bad.data.image_size = 12
  with pytest.raises(ValueError, match='config.data.image_size=12'):
    jobs.validate_config(bad)
