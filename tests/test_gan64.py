"""The low-resolution GANs: parity with torch definitions of the reference networks (random weights, imported
by their published key names), and objectives with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax.convert import gan64 as gan64_convert
from mi_jax.gan64 import networks

torch = pytest.importorskip('torch')
tnn = torch.nn


from torch_gan64 import TorchGenerator, TorchMinibatchCritic, TorchWGANCritic  # pylint: disable=g-import-not-at-top,wrong-import-position


def _randomise(module, seed=0):
  """Non-trivial norm statistics and affine parameters (fresh ones are 0/1 and would hide a wrong mapping)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d, tnn.InstanceNorm2d)):
        m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
      if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
  return module.eval()


def _published(module):
  """The state dict as the reference code saves it: DataParallel's prefix, in a {'state_dict': ...} wrapper."""
  return {'state_dict': {f'module.{k}': v.detach().numpy() for k, v in module.state_dict().items()}}


def _imported(module, network, config):
  state = _published(module)['state_dict']
  return gan64_convert.to_flax(state, network, config.num_stages)


@pytest.mark.parametrize('resolution, channels', [(64, 3), (32, 1)])
def test_generator_parity(resolution, channels):
  config = networks.GanConfig(resolution=resolution, img_channels=channels, width=16)
  reference = _randomise(TorchGenerator(dim=16, channels=channels, stages=config.num_stages))
  z = np.random.RandomState(0).randn(4, 100).astype(np.float32)
  expected = reference(torch.from_numpy(z)).detach().numpy().transpose(0, 2, 3, 1)
  got = networks.Generator(config).apply(_imported(reference, 'generator', config), z)
  assert got.shape == (4, resolution, resolution, channels)
  np.testing.assert_allclose(got, expected, atol=2e-5)


@pytest.mark.parametrize('resolution, channels', [(64, 3), (32, 1)])
def test_wgan_critic_parity(resolution, channels):
  config = networks.GanConfig(resolution=resolution, img_channels=channels, width=16)
  reference = _randomise(TorchWGANCritic(channels, 16, config.num_stages))
  images = np.random.RandomState(1).uniform(0, 1, (3, resolution, resolution, channels)).astype(np.float32)
  expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).detach().numpy()
  got = networks.WGANCritic(config).apply(_imported(reference, 'wgan_critic', config), images)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_minibatch_critic_parity():
  config = networks.GanConfig(width=8, num_classes=10, mbd_kernels=6, mbd_kernel_dim=5)
  reference = _randomise(TorchMinibatchCritic(dim=8, classes=10, kernels=6, kernel_dim=5))
  with torch.no_grad():
    reference.mbd1.T.mul_(0.05)  # keeps exp(-|.|_1) away from 0, so the batch term is exercised
  images = np.random.RandomState(2).uniform(0, 1, (5, 64, 64, 3)).astype(np.float32)
  feat, logits = reference(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  got_feat, got_logits = networks.MinibatchCritic(config).apply(
      _imported(reference, 'minibatch_critic', config), images
  )
  np.testing.assert_allclose(got_feat, feat.detach().numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got_logits, logits.detach().numpy(), rtol=1e-4, atol=1e-4)
  # The batch term is real: a sample's logits change with its batch-mates.
  alone = networks.MinibatchCritic(config).apply(_imported(reference, 'minibatch_critic', config), images[:1])[1]
  assert np.abs(alone - got_logits[:1]).max() > 1e-3


def test_unknown_keys_are_named():
  config = networks.GanConfig(width=16)
  state = _published(TorchGenerator(dim=16))['state_dict']
  state['module.extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r"keys the reference generator does not have: \['extra.weight'\]"):
    gan64_convert.to_flax(state, 'generator', config.num_stages)


# ------------------------------------------------------------------ objectives with known answers

from mi_jax.gan64 import losses  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_gradient_penalty_of_a_linear_critic_is_known():
  """D(x) = <w, x> has gradient w everywhere, so the penalty is (|w| - 1)^2 whatever the interpolation."""
  w = np.random.RandomState(0).randn(1, 4, 4, 2).astype(np.float32)
  critic = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
  real, fake = np.zeros((3, 4, 4, 2), np.float32), np.ones((3, 4, 4, 2), np.float32)
  gp = losses.gradient_penalty(critic, real, fake, jnp.array([0.1, 0.5, 0.9]))
  np.testing.assert_allclose(gp, (np.linalg.norm(w) - 1) ** 2, rtol=1e-5)


def test_gradient_penalty_of_the_critic_equals_torch_autograd():
  config = networks.GanConfig(resolution=32, img_channels=1, width=8)
  reference = _randomise(TorchWGANCritic(1, 8, config.num_stages))
  rng = np.random.RandomState(3)
  real, fake = (rng.uniform(0, 1, (4, 32, 32, 1)).astype(np.float32) for _ in range(2))
  alpha = rng.uniform(0, 1, 4).astype(np.float32)
  x_hat = torch.from_numpy((real + alpha[:, None, None, None] * (fake - real)).transpose(0, 3, 1, 2))
  x_hat.requires_grad_(True)
  (grads,) = torch.autograd.grad(reference(x_hat).sum(), x_hat)
  expected = ((grads.flatten(1).norm(dim=1) - 1) ** 2).mean().item()
  variables = _imported(reference, 'wgan_critic', config)
  critic = lambda x: networks.WGANCritic(config).apply(variables, x)
  np.testing.assert_allclose(losses.gradient_penalty(critic, real, fake, alpha), expected, rtol=1e-4)


def test_wgan_losses():
  real, fake = jnp.array([1.0, 3.0]), jnp.array([-2.0, 0.0])
  assert float(losses.wgan_critic_loss(real, fake)) == pytest.approx(-1.0 - 2.0)
  assert float(losses.wgan_generator_loss(fake)) == pytest.approx(1.0)


def test_real_and_fake_losses_are_the_log_sigmoid_of_the_logsumexp():
  logits = np.random.RandomState(4).randn(6, 5) * 3
  p_real = 1 / (1 + np.exp(-np.log(np.exp(logits).sum(1))))
  np.testing.assert_allclose(losses.real_loss(jnp.asarray(logits)), -np.log(p_real), rtol=1e-5)
  np.testing.assert_allclose(losses.fake_loss(jnp.asarray(logits)), -np.log(1 - p_real), rtol=1e-5)
  # Stable where the naive formula overflows.
  assert np.all(np.isfinite(losses.real_loss(jnp.full((2, 3), 1e3)))) and np.all(
      np.isfinite(losses.fake_loss(jnp.full((2, 3), -1e3)))
  )


def test_kedmi_objectives_at_a_hand_computed_point():
  """All-zero logits over K classes: LSE = log K, uniform soft labels, entropy log K per sample."""
  K, B = 4, 3
  zeros = jnp.zeros((B, K))
  expected_d = np.log(K) + 0.5 * (np.log((K + 1) / K) + np.log(K + 1))
  np.testing.assert_allclose(losses.kedmi_discriminator_loss(zeros, zeros, zeros, zeros), expected_d, rtol=1e-6)
  fake_features, real_features = jnp.array([[1.0, 2.0], [3.0, 2.0]]), jnp.array([[0.0, 0.0], [0.0, 1.0]])
  # batch means (2, 2) and (0, 0.5): |diff| = (2, 1.5), mean 1.75; entropy summed over the batch: 2 log K.
  got = losses.kedmi_generator_loss(fake_features, real_features, jnp.zeros((2, K)), entropy_weight=0.1)
  np.testing.assert_allclose(got, 1.75 + 0.1 * 2 * np.log(K), rtol=1e-6)


def test_kedmi_discriminator_loss_equals_the_reference_formulas_in_torch():
  rng = np.random.RandomState(5)
  labelled, teacher, real, fake = (rng.randn(4, 7).astype(np.float32) * 2 for _ in range(4))
  t = lambda a: torch.from_numpy(a)
  soft_xent = -(torch.softmax(t(teacher), 1) * torch.log_softmax(t(labelled), 1)).sum() / 4
  lse_real, lse_fake = torch.logsumexp(t(real), 1), torch.logsumexp(t(fake), 1)
  unlabelled = 0.5 * (
      torch.mean(torch.nn.functional.softplus(lse_real))
      - torch.mean(lse_real)
      + torch.mean(torch.nn.functional.softplus(lse_fake))
  )
  np.testing.assert_allclose(
      losses.kedmi_discriminator_loss(labelled, teacher, real, fake), (soft_xent + unlabelled).item(), rtol=1e-5
  )


# ------------------------------------------------------------------ training steps and the gan64 job

import os  # pylint: disable=g-import-not-at-top,wrong-import-position

from mi_jax import jobs  # pylint: disable=g-import-not-at-top,wrong-import-position
from mi_jax.gan64 import checkpoint as gan_io, training  # pylint: disable=g-import-not-at-top,wrong-import-position
from mi_jax.train import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_critic_step_loss_is_wasserstein_plus_weighted_penalty_and_generator_steps_move_g_only():
  config = networks.GanConfig(resolution=16, img_channels=1, width=4, z_dim=8)
  hp = training.Hyperparams(gp_weight=10.0)
  state = training.create_state(config, hp, seed=0)
  real = np.random.RandomState(0).uniform(0, 1, (4, 16, 16, 1)).astype(np.float32)
  new, metrics = training.critic_step(state, {'real': real}, config=config, hp=hp)
  np.testing.assert_allclose(metrics['loss_d'], metrics['d_fake'] - metrics['d_real'] + 10 * metrics['gp'], rtol=1e-5)
  changed = lambda a, b: any(np.abs(x - y).max() > 0 for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert changed(new.d_params, state.d_params) and not changed(new.g_params, state.g_params)
  assert changed(new.g_batch_stats, state.g_batch_stats)  # the generator made the fakes in training mode
  after_g, g_metrics = training.generator_step(new, {'real': real}, config=config, hp=hp)
  assert changed(after_g.g_params, new.g_params) and not changed(after_g.d_params, new.d_params)
  assert np.isfinite(g_metrics['loss_g']) and int(after_g.step) == 1


def _tiny_gan64_config(tfds_dir, kind, target=''):
  from configs import gan64  # pylint: disable=g-import-not-at-top

  config = gan64.get_config(('kedmi,' if kind == 'kedmi' else '') + 'tiny')
  config.data.data_dir = tfds_dir
  config.num_devices = 1
  config.gan.target.workdir = target
  return config


@pytest.fixture(scope='module')
def tiny_target(tmp_path_factory, tfds_dir):
  """A 16px classifier of the private digits: the teacher of KEDMI's GAN."""
  from configs import baseline  # pylint: disable=g-import-not-at-top
  from mi_jax.train import trainer  # pylint: disable=g-import-not-at-top

  config = baseline.get_config('tiny,epochs=1')
  config.data.data_dir, config.num_devices = tfds_dir, 1
  workdir = str(tmp_path_factory.mktemp('gan64_target'))
  trainer.train_and_evaluate(config, workdir)
  return workdir


class _Killed(Exception):
  pass


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['wgan_gp', 'kedmi'])
def test_gan64_job_resumes_after_a_kill_like_an_uninterrupted_run(tmp_path, tfds_dir, tiny_target, kind, monkeypatch):
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  jobs.run(_tiny_gan64_config(tfds_dir, kind, tiny_target), straight)
  save = checkpoint.Checkpointer.save

  def save_then_die(self, step, *args):
    save(self, step, *args)
    if step == 5:
      raise _Killed

  monkeypatch.setattr(checkpoint.Checkpointer, 'save', save_then_die)
  with pytest.raises(_Killed):
    jobs.run(_tiny_gan64_config(tfds_dir, kind, tiny_target), killed)
  monkeypatch.setattr(checkpoint.Checkpointer, 'save', save)
  assert checkpoint.latest_step_in(killed) == 5 and not os.path.exists(os.path.join(killed, 'gan'))
  jobs.run(_tiny_gan64_config(tfds_dir, kind, tiny_target), killed)

  config_a, kind_a, g_a, d_a = gan_io.load_gan(os.path.join(straight, 'gan'))
  config_b, kind_b, g_b, d_b = gan_io.load_gan(os.path.join(killed, 'gan'))
  assert config_a == config_b and kind_a == kind_b == kind and config_a.resolution == 16
  assert config_a.num_classes == (5 if kind == 'kedmi' else 1)
  for a, b in zip(jax.tree.leaves((g_a, d_a)), jax.tree.leaves((g_b, d_b))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert sorted(os.listdir(os.path.join(killed, 'samples'))) == [
      'fakes_000000.png',
      'fakes_000005.png',
      'fakes_000010.png',
      'reals.png',
  ]


@pytest.mark.slow
def test_kedmi_gan_needs_a_target_of_its_size(tmp_path, tfds_dir, tiny_target):
  config = _tiny_gan64_config(tfds_dir, 'kedmi', tiny_target)
  config.data.image_size = 32
  with pytest.raises(checkpoint.CheckpointError, match='takes 16px images, the GAN makes config.data.image_size=32px'):
    jobs.run(config, str(tmp_path / 'run'))
  config.gan.target.workdir = ''
  with pytest.raises(ValueError, match='config.gan.target.workdir'):
    jobs.validate_config(config)


def test_a_directory_without_a_gan_is_named(tmp_path):
  with pytest.raises(gan_io.GanDirectoryError, match=r'config.generator.dir=.*holds no gan64.json'):
    gan_io.load_gan(str(tmp_path))


@pytest.mark.parametrize('kind', ['wgan_gp', 'kedmi'])
def test_published_files_import_into_a_gan_directory(tmp_path, kind):
  """Generator and critic saved as the reference code saves them -> a GAN directory whose networks give torch's outputs."""
  generator = _randomise(TorchGenerator(dim=8))
  critic = _randomise(TorchWGANCritic(dim=8) if kind == 'wgan_gp' else TorchMinibatchCritic(dim=8, classes=7))
  for name, net in (('G', generator), ('D', critic)):
    torch.save({'state_dict': {f'module.{k}': v for k, v in net.state_dict().items()}}, tmp_path / f'{name}.tar')
  config, got_kind = gan64_convert.import_files(str(tmp_path / 'G.tar'), str(tmp_path / 'D.tar'), str(tmp_path / 'gan'))
  assert got_kind == kind and (config.resolution, config.width, config.z_dim) == (64, 8, 100)
  loaded_config, loaded_kind, g_vars, d_vars = gan_io.load_gan(str(tmp_path / 'gan'))
  assert loaded_config == config and loaded_kind == kind
  z = np.random.RandomState(6).randn(3, 100).astype(np.float32)
  images = networks.Generator(config).apply(g_vars, z)
  np.testing.assert_allclose(images, generator(torch.from_numpy(z)).detach().numpy().transpose(0, 2, 3, 1), atol=2e-5)
  critic_net = networks.WGANCritic(config) if kind == 'wgan_gp' else networks.MinibatchCritic(config)
  expected = critic(torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2)))
  got = critic_net.apply(d_vars, images)
  if kind == 'kedmi':
    got, expected = got[1], expected[1]
  np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-4, atol=1e-4)
