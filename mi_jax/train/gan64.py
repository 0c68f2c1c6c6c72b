"""The `gan64` job: train GMI's (WGAN-GP) or KEDMI's GAN on a public data set, resumable after a kill.

Flow: config -> TFDS source (no augmentation, images in [0, 1] at config.data.image_size) -> jitted
critic and generator steps (mi_jax/gan64/training.py) sharded over the batch -> Orbax checkpoint
(state, iterator state, config) -> metrics (TensorBoard, CSV), sample grids of fixed latents in
`<workdir>/samples/`, and at the end the GAN directory `<workdir>/gan/` (generator and critic) that the
GMI/KEDMI attacks read. KEDMI's GAN learns the soft labels of a target classifier
(config.gan.target.workdir): it is made for that target's classes.
"""

import functools
import math
import os
from typing import Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from mi_jax import config_checks
from mi_jax.data import pipeline, sources
from mi_jax.gan64 import checkpoint as gan_io
from mi_jax.gan64 import networks, training
from mi_jax.train import checkpoint, loop, reporting, sharding

# Config fields whose change makes an existing checkpoint meaningless for the run.
IDENTITY_FIELDS = ('gan', 'data.name', 'data.image_size', 'train.batch_size', 'seed')
GAN_DIR = 'gan'
TEACHER_MODES = ('train', 'eval')


def hyperparams(config: ml_collections.ConfigDict) -> training.Hyperparams:
  g = config.gan
  return training.Hyperparams(
      kind=g.kind,
      lr=g.lr,
      betas=tuple(g.betas),
      n_critic=g.n_critic,
      gp_weight=g.gp_weight,
      entropy_weight=g.entropy_weight,
  )


def validate_config(config: ml_collections.ConfigDict):
  """Fails early, naming the field, on values that would only break deep inside the job."""
  check = config_checks.check_field
  sources.resolve(config.data)
  check(config.gan.kind in training.KINDS, 'gan.kind', config.gan.kind, f'expected one of {training.KINDS}')
  size = config.data.image_size
  check(size in (16, 32, 64, 128), 'data.image_size', size, 'expected 16, 32, 64 or 128 (the GAN doubles from 4x4)')
  config_checks.check_positive_ints(
      config,
      (
          'gan.z_dim',
          'gan.width',
          'gan.n_critic',
          'train.steps',
          'train.batch_size',
          'train.log_every_steps',
          'train.checkpoint_every_steps',
          'train.sample_every_steps',
          'train.keep_checkpoints',
          'train.num_samples',
      ),
  )
  check(config.gan.lr > 0, 'gan.lr', config.gan.lr, 'expected > 0')
  if config.gan.kind == 'kedmi':
    check(bool(config.gan.target.workdir), 'gan.target.workdir', '', "KEDMI's GAN learns a target's soft labels")
    config_checks.check_checkpoint_choice(config, 'gan.target.checkpoint')
    check(
        config.gan.teacher_mode in TEACHER_MODES,
        'gan.teacher_mode',
        config.gan.teacher_mode,
        f'expected one of {TEACHER_MODES}',
    )


def make_teacher(config: ml_collections.ConfigDict, resolution: int) -> tuple[Callable, int]:
  """(images in [0, 1] -> the target's logits, its class count) for KEDMI's soft labels.

  teacher_mode 'train' normalises with batch statistics, as the KEDMI code leaves the target in training
  mode; 'eval' uses the running ones (the toolbox).
  """
  where = f'config.gan.target.workdir={config.gan.target.workdir!r}'
  try:
    model, variables, saved, _, _ = checkpoint.load_classifier(
        os.path.expanduser(config.gan.target.workdir), config.gan.target.checkpoint
    )
  except (FileNotFoundError, checkpoint.CheckpointError) as e:
    raise checkpoint.CheckpointError(f'{where}: {e}') from None
  if saved['data']['image_size'] != resolution:
    raise checkpoint.CheckpointError(
        f'{where}: the target takes {saved["data"]["image_size"]}px images, the GAN makes '
        f'config.data.image_size={resolution}px ones'
    )
  train = config.gan.teacher_mode == 'train'

  def teacher(images):
    x = images * 2.0 - 1.0  # our classifiers take [-1, 1]
    if train:
      return model.apply(variables, x, train=True, mutable=['batch_stats'])[0]
    return model.apply(variables, x, train=False)

  return teacher, saved['model']['num_classes']


def _to_unit_range(images: np.ndarray) -> np.ndarray:
  return (images + 1.0) / 2.0  # the pipeline's [-1, 1] -> the generator's [0, 1]


def train_gan64(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the GAN in `workdir`; returns a summary."""
  mesh = sharding.make_mesh(config.num_devices)
  hp = hyperparams(config)

  # ---------------------------------------------------------------- data
  builder = sources.prepare(config.data)
  source = sources.get_source(builder, config.data.train_split)
  batch_size, total_steps = config.train.batch_size, config.train.steps
  names = ('labelled', 'real', 'real2') if hp.kind == 'kedmi' else ('real',)  # KEDMI draws three batches a step
  epochs = math.ceil(total_steps * len(names) * batch_size / len(source))

  # ---------------------------------------------------------------- models and state
  teacher, num_classes = make_teacher(config, config.data.image_size) if hp.kind == 'kedmi' else (None, 1)
  gan_config = networks.GanConfig(
      resolution=config.data.image_size,
      img_channels=builder.info.features['image'].shape[-1],
      z_dim=config.gan.z_dim,
      width=config.gan.width,
      num_classes=num_classes,
  )
  replicated = sharding.replicated(mesh)
  critic_step = jax.jit(
      functools.partial(training.critic_step, config=gan_config, hp=hp, teacher=teacher), donate_argnums=0
  )
  generator_step = jax.jit(functools.partial(training.generator_step, config=gan_config, hp=hp), donate_argnums=0)
  G = networks.Generator(gan_config)
  sample = jax.jit(lambda variables, z: G.apply(variables, z))
  fixed_z = np.random.RandomState(config.seed).randn(config.train.num_samples, gan_config.z_dim).astype(np.float32)
  samples_dir = os.path.join(workdir, 'samples')
  os.makedirs(samples_dir, exist_ok=True)

  # However the job ends (an error, Ctrl-C, SIGTERM), the checkpoint save in flight completes first.
  with checkpoint.Checkpointer(
      checkpoint.checkpoint_dir(workdir), keep=config.train.keep_checkpoints, best_metric=None
  ) as ckpt:
    state = jax.device_put(training.create_state(gan_config, hp, config.seed), replicated)
    state, data_state, start_step = loop.restore_latest(ckpt, state, config, workdir, IDENTITY_FIELDS)
    if start_step:
      logging.info('Resuming from %s/checkpoints/%d', workdir, start_step)
    train_iter = loop.resumed_iterator(
        pipeline.train_dataset(source, config.data, batch_size, epochs, config.seed, augment=False), data_state
    )
    writer = reporting.MetricWriter(workdir, resume_step=start_step)
    progress = reporting.Progress(total_steps, batch_size, name='gan64')

    def write_samples(step):
      images = np.asarray(sample(state.generator_variables(), fixed_z)) * 2.0 - 1.0  # the grid takes [-1, 1]
      return writer.write_grid(step, 'fakes', images, os.path.join(samples_dir, f'fakes_{step:06d}.png'))

    logging.info(
        'Training a %dx%d %s GAN on %s: %d images, %d critic steps of %d, a generator step every %d, %d devices',
        gan_config.resolution,
        gan_config.resolution,
        hp.kind,
        config.data.name,
        len(source),
        total_steps,
        batch_size,
        hp.n_critic,
        mesh.devices.size,
    )
    window = loop.MetricWindow()
    for step in range(start_step + 1, total_steps + 1):
      batch = {name: sharding.shard_batch(_to_unit_range(next(train_iter)['image']), mesh) for name in names}
      if step == 1:
        reals = np.asarray(batch['real'])[: config.train.num_samples] * 2.0 - 1.0
        writer.write_grid(0, 'reals', reals, os.path.join(samples_dir, 'reals.png'))
        write_samples(0)
      state, metrics = critic_step(state, batch)
      if step % hp.n_critic == 0:  # after critic steps n_critic, 2 n_critic, ... as the reference
        state, g_metrics = generator_step(state, batch)
        metrics = {**metrics, **g_metrics}
      window.add(metrics)
      if step % config.train.log_every_steps == 0 or step == total_steps:
        summary = window.flush(step, workdir, 'Lower config.gan.lr and relaunch in a new --workdir.')
        writer.write_scalars(step, summary)
        progress.update(step, {k: summary[k] for k in ('loss_d', 'loss_g', 'd_real', 'd_fake') if k in summary})
      else:
        progress.update(step)
      if step % config.train.sample_every_steps == 0 or step == total_steps:
        write_samples(step)
      if step % config.train.checkpoint_every_steps == 0 or step == total_steps:
        ckpt.save(step, state, train_iter.get_state(), config, {})
    ckpt.wait()

    # ---------------------------------------------------------------- export
    gan_dir = os.path.join(workdir, GAN_DIR)
    if jax.process_index() == 0 and not os.path.exists(os.path.join(gan_dir, gan_io.META_FILE)):
      gan_io.save_gan(
          gan_dir,
          gan_config,
          hp.kind,
          jax.device_get(state.generator_variables()),
          jax.device_get({'params': state.d_params}),
          source={'job': 'gan64', 'data': config.data.name, 'steps': total_steps, 'seed': config.seed},
      )
    reporting.save_png(os.path.join(workdir, 'samples.png'), write_samples(total_steps))
    results = {'steps': total_steps, 'kind': hp.kind, 'gan': gan_dir, 'train_examples': len(source)}
    reporting.write_results(workdir, results)
    writer.close()
  logging.info('Done: %s', results)
  return results


run = train_gan64  # the `gan64` job (mi_jax/jobs.py)
