"""The `plgmi_gan` job: PLG-MI's pseudo-labels and its conditional GAN, resumable after a kill.

Flow: the target (config.gan.target) labels the public set (config.data), keeping per class the
`top_n` most probable images (`<workdir>/pseudo_labels.npz`, computed once, on process 0) -> those
images, held in memory at the GAN's resolution -> jitted iterations (one generator step with the
target's max-margin term, n_dis critic steps; mi_jax/gan64/plgmi.py) -> Orbax checkpoints -> metrics
(TensorBoard, CSV), grids of fixed latents (a row per class) in `<workdir>/samples/`, and at the end
the GAN directory `<workdir>/gan/` (kind 'plgmi') that the `attack_plgmi` job reads.

Real batches are drawn from a fresh permutation of the pseudo-labelled pairs each epoch, a function of
(seed, epoch) only, so a resumed run draws the batches the uninterrupted one would have.
"""

import functools
import os

from absl import logging
import grain
import jax
import ml_collections
import numpy as np

from mi_jax import config_checks, multihost
from mi_jax.data import pipeline, sources, transforms
from mi_jax.gan64 import checkpoint as gan_io
from mi_jax.gan64 import conditional, networks, plgmi
from mi_jax.train import checkpoint, loop, reporting, sharding

# Config fields whose change makes an existing checkpoint meaningless for the run.
IDENTITY_FIELDS = ('gan', 'data.name', 'data.image_size', 'train.batch_size', 'seed')
GAN_DIR = 'gan'
PSEUDO_LABELS = 'pseudo_labels.npz'


def hyperparams(config: ml_collections.ConfigDict) -> plgmi.Hyperparams:
  g = config.gan
  return plgmi.Hyperparams(lr=g.lr, betas=tuple(g.betas), n_dis=g.n_dis, alpha=g.alpha, jitter_p=g.jitter_p)


def validate_config(config: ml_collections.ConfigDict):
  """Fails early, naming the field, on values that would only break deep inside the job."""
  check = config_checks.check_field
  sources.resolve(config.data)
  size = config.data.image_size
  check(size in (16, 32, 64, 128), 'data.image_size', size, 'expected 16, 32, 64 or 128 (the GAN doubles from 4x4)')
  config_checks.check_positive_ints(
      config,
      (
          'gan.z_dim',
          'gan.width',
          'gan.n_dis',
          'gan.top_n',
          'train.steps',
          'train.batch_size',
          'train.log_every_steps',
          'train.checkpoint_every_steps',
          'train.sample_every_steps',
          'train.keep_checkpoints',
      ),
  )
  check(config.gan.lr > 0, 'gan.lr', config.gan.lr, 'expected > 0')
  check(config.gan.alpha >= 0, 'gan.alpha', config.gan.alpha, 'expected >= 0')
  check(0 <= config.gan.jitter_p <= 1, 'gan.jitter_p', config.gan.jitter_p, 'expected a probability')
  check(bool(config.gan.target.workdir), 'gan.target.workdir', '', 'PLG-MI trains for one target: name its workdir')
  config_checks.check_checkpoint_choice(config, 'gan.target.checkpoint')


def load_target(config: ml_collections.ConfigDict):
  """(images in [0, 1] -> the target's logits (eval mode, resized to its input size), its class count)."""
  where = f'config.gan.target.workdir={config.gan.target.workdir!r}'
  try:
    model, variables, saved, _, _ = checkpoint.load_classifier(
        os.path.expanduser(config.gan.target.workdir), config.gan.target.checkpoint
    )
  except (FileNotFoundError, checkpoint.CheckpointError) as e:
    raise checkpoint.CheckpointError(f'{where}: {e}') from None
  size = saved['data']['image_size']

  def target(images):  # as the attack shows it its images (mi_jax/attacks/gmi.py to_classifier)
    x = images * 2.0 - 1.0
    return model.apply(variables, x if x.shape[1] == size else transforms.resize(x, size, False), train=False)

  return target, saved['model']['num_classes']


def public_images(source, data: ml_collections.ConfigDict, batch_size: int = 256):
  """Yields (indices, images [n, R, R, C] in [0, 1]) over the public split in its stored order."""
  ds = grain.MapDataset.source(source).map(pipeline.eval_transform(data)).batch(batch_size)
  start = 0
  for i in range(len(ds)):
    images = (np.asarray(ds[i]['image'], np.float32) + 1.0) / 2.0  # the pipeline's [-1, 1] -> [0, 1]
    yield np.arange(start, start + len(images)), images
    start += len(images)


def pseudo_labels(workdir: str, source, data, target, num_classes: int, top_n: int):
  """pseudo_labels.npz ({indices, probabilities} [K, top_n]), computed on the first call (process 0)."""
  path = os.path.join(workdir, PSEUDO_LABELS)

  def compute():
    classify = jax.jit(lambda x: jax.nn.softmax(target(x)))
    probabilities = np.zeros((len(source), num_classes), np.float32)
    for indices, images in public_images(source, data):
      probabilities[indices] = np.asarray(classify(images))
    indices, top = plgmi.top_n_per_class(probabilities, top_n)
    reporting.save_npz(path, indices=indices.astype(np.int64), probabilities=top)
    logging.info(
        'Pseudo-labelled %d public images: top %d per class, mean probability %.3f (lowest kept %.3f)',
        len(source),
        top_n,
        top.mean(),
        top.min(),
    )

  if not os.path.exists(path):
    multihost.run_once('pseudo-labelling', compute)  # the workdir is shared: one process writes
  with np.load(path) as f:
    return f['indices'], f['probabilities']


def load_pairs(source, data, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [M, R, R, C], labels [M]) of every (class, chosen image) pair; each image read once."""
  unique = np.unique(indices)
  position = {int(i): p for p, i in enumerate(unique)}
  transform = pipeline.eval_transform(data)
  images = np.stack([transform.map(source[int(i)])['image'] for i in unique])
  images = np.round((images + 1.0) * 127.5).astype(np.uint8)  # exact: the pipeline's x / 127.5 - 1 of uint8
  rows = np.asarray([position[int(i)] for i in indices.ravel()])
  labels = np.repeat(np.arange(indices.shape[0], dtype=np.int32), indices.shape[1])
  return images[rows], labels


class EpochSampler:
  """Position p of the run's stream of pairs -> a pair: permutation(seed, p // M)[p % M]."""

  def __init__(self, num_pairs: int, seed: int):
    self.num_pairs, self.seed, self._cache = num_pairs, seed, {}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_pairs)}
    return self._cache[epoch]

  def take(self, start: int, count: int) -> np.ndarray:
    positions = np.arange(start, start + count)
    return np.asarray([self._permutation(int(p // self.num_pairs))[p % self.num_pairs] for p in positions])


def train_plgmi_gan(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) PLG-MI's GAN in `workdir`; returns a summary."""
  mesh = sharding.make_mesh(config.num_devices)
  hp = hyperparams(config)
  builder = sources.prepare(config.data)
  source = sources.get_source(builder, config.data.train_split)
  size, batch_size, total_steps = config.data.image_size, config.train.batch_size, config.train.steps

  target, num_classes = load_target(config)
  indices, probabilities = pseudo_labels(workdir, source, config.data, target, num_classes, config.gan.top_n)
  images, labels = load_pairs(source, config.data, indices)
  sampler = EpochSampler(len(labels), config.seed)
  gan_config = networks.GanConfig(
      resolution=size,
      img_channels=images.shape[-1],
      z_dim=config.gan.z_dim,
      width=config.gan.width,
      num_classes=num_classes,
  )
  iteration = jax.jit(functools.partial(plgmi.iteration, config=gan_config, hp=hp, target=target), donate_argnums=0)
  G = conditional.ConditionalGenerator(gan_config)
  sample = jax.jit(lambda variables, z, y: G.apply(variables, z, y))
  rows = min(num_classes, 8)  # the grids: a row per class (the first 8), the same latents in every row
  fixed_z = np.tile(np.random.RandomState(config.seed).randn(8, gan_config.z_dim).astype(np.float32), (rows, 1))
  fixed_y = np.repeat(np.arange(rows, dtype=np.int32), 8)
  samples_dir = os.path.join(workdir, 'samples')
  os.makedirs(samples_dir, exist_ok=True)

  with checkpoint.Checkpointer(
      checkpoint.checkpoint_dir(workdir), keep=config.train.keep_checkpoints, best_metric=None
  ) as ckpt:
    state = jax.device_put(plgmi.create_state(gan_config, hp, config.seed), sharding.replicated(mesh))
    state, _, start_step = loop.restore_latest(ckpt, state, config, workdir, IDENTITY_FIELDS)
    if start_step:
      logging.info('Resuming from %s/checkpoints/%d', workdir, start_step)
    writer = reporting.MetricWriter(workdir, resume_step=start_step)
    progress = reporting.Progress(total_steps, batch_size * (hp.n_dis + 1), name='plgmi_gan')

    def write_samples(step):
      fakes = np.asarray(sample(state.generator_variables(), fixed_z, fixed_y)) * 2.0 - 1.0  # the grid takes [-1, 1]
      return writer.write_grid(step, 'fakes', fakes, os.path.join(samples_dir, f'fakes_{step:06d}.png'))

    logging.info(
        'Training a %dpx PLG-MI GAN on %s: %d pseudo-labelled pairs (%d classes x top %d), %d iterations of '
        '1 generator and %d critic steps, batch %d, %d devices',
        size,
        config.data.name,
        len(labels),
        num_classes,
        config.gan.top_n,
        total_steps,
        hp.n_dis,
        batch_size,
        mesh.devices.size,
    )
    window = loop.MetricWindow()
    per_step = hp.n_dis * batch_size
    batch_sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, 'data'))  # [n_dis, B, ...]
    for step in range(start_step + 1, total_steps + 1):
      chosen = sampler.take((step - 1) * per_step, per_step)
      reals = (images[chosen].astype(np.float32) / 255.0).reshape((hp.n_dis, batch_size) + images.shape[1:])
      if step == 1:
        writer.write_grid(0, 'reals', reals[0][:64] * 2.0 - 1.0, os.path.join(samples_dir, 'reals.png'))
        write_samples(0)
      state, metrics = iteration(  # every process draws the same global batch; each device gets its share
          state,
          jax.device_put(reals, batch_sharded),
          jax.device_put(labels[chosen].reshape(hp.n_dis, batch_size), batch_sharded),
      )
      window.add(metrics)
      if step % config.train.log_every_steps == 0 or step == total_steps:
        summary = window.flush(step, workdir, 'Lower config.gan.lr and relaunch in a new --workdir.')
        writer.write_scalars(step, summary)
        progress.update(step, {k: summary[k] for k in ('loss_d', 'loss_g', 'g_max_margin') if k in summary})
      else:
        progress.update(step)
      if step % config.train.sample_every_steps == 0 or step == total_steps:
        write_samples(step)
      if step % config.train.checkpoint_every_steps == 0 or step == total_steps:
        ckpt.save(step, state, {}, config, {})
    ckpt.wait()

    gan_dir = os.path.join(workdir, GAN_DIR)
    if jax.process_index() == 0 and not os.path.exists(os.path.join(gan_dir, gan_io.META_FILE)):
      gan_io.save_gan(
          gan_dir,
          gan_config,
          plgmi.KIND,
          jax.device_get(state.generator_variables()),
          jax.device_get(state.critic_variables()),
          source={'job': 'plgmi_gan', 'data': config.data.name, 'steps': total_steps, 'seed': config.seed},
      )
    reporting.save_png(os.path.join(workdir, 'samples.png'), write_samples(total_steps))
    results = {
        'steps': total_steps,
        'kind': plgmi.KIND,
        'gan': gan_dir,
        'pseudo_labelled_pairs': int(len(labels)),
        'distinct_public_images': int(len(np.unique(indices))),
        'mean_pseudo_label_probability': float(probabilities.mean()),
    }
    reporting.write_results(workdir, results)
    writer.close()
  logging.info('Done: %s', results)
  return results


run = train_plgmi_gan  # the `plgmi_gan` job (mi_jax/jobs.py)
