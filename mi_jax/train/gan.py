"""The `gan` job: train a StyleGAN2 image prior on a public data set, resumable after a kill.

Flow: config -> TFDS source (no augmentation) -> jitted G/D step sharded over the
batch (third_party/stylegan_jax/training.py) -> Orbax checkpoint (state, iterator
state, config) -> metrics (TensorBoard, CSV), sample grids of G_ema from fixed
latents in `<workdir>/samples/`, and at the end the G_ema generator directory
`<workdir>/generator/` that the attack reads.
"""

import math
import os
from typing import Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from mi_jax import config_checks
from mi_jax.data import pipeline, sources
from mi_jax.train import checkpoint, loop, reporting, sharding
from mi_jax.stylegan import checkpoint as generator_io
from mi_jax.stylegan import networks, training

# Config fields whose change makes an existing checkpoint meaningless for the run.
IDENTITY_FIELDS = ('generator', 'discriminator', 'gan', 'data.name', 'data.image_size', 'train.batch_size', 'seed')
GENERATOR_DIR = 'generator'


def generator_config(config: ml_collections.ConfigDict, img_channels: int) -> networks.GeneratorConfig:
  g = config.generator
  return networks.GeneratorConfig(
      z_dim=g.z_dim,
      c_dim=0,
      w_dim=g.w_dim,
      img_resolution=config.data.image_size,
      img_channels=img_channels,
      mapping_layers=g.mapping_layers,
      mapping_lr_multiplier=g.mapping_lr_multiplier,
      w_avg_beta=g.w_avg_beta,
      channel_base=g.channel_base,
      channel_max=g.channel_max,
      conv_clamp=g.conv_clamp or None,
  )


def discriminator(config: ml_collections.ConfigDict, img_channels: int) -> networks.Discriminator:
  d = config.discriminator
  return networks.Discriminator(
      img_resolution=config.data.image_size,
      img_channels=img_channels,
      channel_base=d.channel_base,
      channel_max=d.channel_max,
      mbstd_group_size=d.mbstd_group_size,
      conv_clamp=config.generator.conv_clamp or None,
  )


def hyperparams(config: ml_collections.ConfigDict) -> training.GanHyperparams:
  h = config.gan
  return training.GanHyperparams(
      g_lr=h.g_lr,
      d_lr=h.d_lr,
      betas=tuple(h.betas),
      r1_gamma=h.r1_gamma,
      r1_interval=h.r1_interval,
      style_mixing=h.style_mixing,
      ema_kimg=h.ema_kimg,
      ema_rampup=h.ema_rampup or None,
  )


def validate_config(config: ml_collections.ConfigDict):
  """Fails early, naming the field, on values that would only break deep inside the job."""
  check = config_checks.check_field
  size = config.data.image_size
  check(size >= 4 and size & (size - 1) == 0, 'data.image_size', size, 'expected a power of two >= 4')
  config_checks.check_positive_ints(
      config,
      (
          'generator.z_dim',
          'generator.w_dim',
          'generator.mapping_layers',
          'generator.channel_base',
          'generator.channel_max',
          'discriminator.channel_base',
          'discriminator.channel_max',
          'train.steps',
          'train.batch_size',
          'train.log_every_steps',
          'train.checkpoint_every_steps',
          'train.sample_every_steps',
          'train.keep_checkpoints',
          'train.num_samples',
          'gan.r1_interval',
      ),
  )
  group = config.discriminator.mbstd_group_size
  check(
      group >= 0 and (group == 0 or config.train.batch_size % min(group, config.train.batch_size) == 0),
      'discriminator.mbstd_group_size',
      group,
      'expected 0 or a divisor of train.batch_size',
  )
  check(
      len(config.gan.betas) == 2 and all(0 <= b < 1 for b in config.gan.betas),
      'gan.betas',
      config.gan.betas,
      'expected two values in [0, 1)',
  )
  check(0 <= config.gan.style_mixing <= 1, 'gan.style_mixing', config.gan.style_mixing, 'expected a probability')
  sources.resolve(config.data)


def _sample_fn(G: networks.Generator):
  return jax.jit(lambda variables, z: G.apply(variables, z, noise_mode='const'))


def train_gan(config: ml_collections.ConfigDict, workdir: str, on_step: Callable[[int], None] | None = None) -> dict:
  """Trains (or resumes) the GAN in `workdir`; returns a summary. `on_step(step)` as in trainer.py."""
  mesh = sharding.make_mesh(config.num_devices)

  # ---------------------------------------------------------------- data
  builder = sources.prepare(config.data)
  source = sources.get_source(builder, config.data.train_split)
  img_channels = builder.info.features['image'].shape[-1]
  batch_size, total_steps = config.train.batch_size, config.train.steps
  epochs = math.ceil(total_steps * batch_size / len(source))

  # ---------------------------------------------------------------- models and state
  gen_config = generator_config(config, img_channels)
  G, D = networks.Generator(gen_config), discriminator(config, img_channels)
  hp = hyperparams(config)
  state = jax.device_put(training.create_state(G, D, hp, config.seed), sharding.replicated(mesh))
  # However the job ends (an error, Ctrl-C, SIGTERM), the checkpoint save in flight completes first.
  with checkpoint.Checkpointer(
      checkpoint.checkpoint_dir(workdir), keep=config.train.keep_checkpoints, best_metric=None
  ) as ckpt:
    state, data_state, start_step = loop.restore_latest(ckpt, state, config, workdir, IDENTITY_FIELDS)
    if start_step:
      logging.info('Resuming from %s/checkpoints/%d (%.1f kimg)', workdir, start_step, start_step * batch_size / 1e3)
    train_iter = loop.resumed_iterator(
        pipeline.train_dataset(source, config.data, batch_size, epochs, config.seed, augment=False), data_state
    )
    plain_step, r1_step = training.compile_train_steps(G, D, hp, sharding.replicated(mesh), sharding.data_sharded(mesh))

    # ---------------------------------------------------------------- reporting
    writer = reporting.MetricWriter(workdir, resume_step=start_step)
    progress = reporting.Progress(total_steps, batch_size, name='gan')
    sample = _sample_fn(G)
    fixed_z = np.random.RandomState(config.seed).randn(config.train.num_samples, gen_config.z_dim).astype(np.float32)
    samples_dir = os.path.join(workdir, 'samples')
    os.makedirs(samples_dir, exist_ok=True)

    def write_samples(step):
      images = sample(state.ema_variables(), fixed_z)
      return writer.write_grid(step, 'fakes', images, os.path.join(samples_dir, f'fakes_{step:06d}.png'))

    logging.info(
        'Training a %dx%d StyleGAN2 on %s: %d images, %d steps of %d (%.0f kimg), %d devices',
        gen_config.img_resolution,
        gen_config.img_resolution,
        config.data.name,
        len(source),
        total_steps,
        batch_size,
        total_steps * batch_size / 1e3,
        mesh.devices.size,
    )

    # ---------------------------------------------------------------- loop
    window = loop.MetricWindow()
    for step in range(start_step + 1, total_steps + 1):
      batch = next(train_iter)
      if step == 1:
        writer.write_grid(
            0, 'reals', batch['image'][: config.train.num_samples], os.path.join(samples_dir, 'reals.png')
        )
        write_samples(0)
      with_r1 = step % hp.r1_interval == 0
      state, metrics = (r1_step if with_r1 else plain_step)(state, sharding.shard_batch(batch['image'], mesh))
      window.add({k: v for k, v in metrics.items() if with_r1 or k != 'r1'})  # R1 only where it was computed

      if step % config.train.log_every_steps == 0 or step == total_steps:
        summary = window.flush(step, workdir, 'Lower config.gan.g_lr/d_lr or raise config.gan.r1_gamma and relaunch.')
        summary['kimg'] = step * batch_size / 1e3
        writer.write_scalars(step, summary)
        progress.update(step, {k: summary[k] for k in ('loss_g', 'loss_d', 'd_real', 'd_fake')})
      else:
        progress.update(step)
      if step % config.train.sample_every_steps == 0 or step == total_steps:
        write_samples(step)
      if step % config.train.checkpoint_every_steps == 0 or step == total_steps:
        ckpt.save(step, state, train_iter.get_state(), config, {})
      if on_step is not None:
        ckpt.wait()
        on_step(step)
    ckpt.wait()

    # ---------------------------------------------------------------- export G_ema
    generator_dir = os.path.join(workdir, GENERATOR_DIR)
    if jax.process_index() == 0:
      if not os.path.exists(os.path.join(generator_dir, generator_io.CONFIG_FILE)):
        generator_io.save_generator(
            generator_dir,
            gen_config,
            jax.device_get(state.ema_variables()),
            source={'job': 'gan', 'data': config.data.name, 'steps': total_steps, 'seed': config.seed},
        )
      reporting.save_png(os.path.join(workdir, 'samples.png'), write_samples(total_steps))
    results = {
        'steps': total_steps,
        'kimg': total_steps * batch_size / 1e3,
        'generator': generator_dir,
        'train_examples': len(source),
    }
    reporting.write_results(workdir, results)
    writer.close()
    logging.info('Done: %s', results)
    return results


run = train_gan  # the `gan` job (mi_jax/jobs.py)
