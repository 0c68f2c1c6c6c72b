"""What an attack leaves in its workdir: the half of the attack interface that evaluation reads.

Every attack (mi_jax/attacks) writes, and the metrics and analyses read only through this module:

  attack.json              `settings` (the attack's job config, with its generator directory and the
                           framing: centre crop, antialias), `target_config`, `target_step`,
                           `target_metrics` and the attack's summary;
  final/class_<c>.npz      `w` [n, w_dim] and `scores` [n] of the images kept for class c, best first
                           (scores: the target's final-selection confidence);
  optimized/batch_<i>.npz  every optimised latent (`w`, `classes`) and its batch's per-step log:
                           `loss`, `finite`, `w_grad_abs_mean`, `w_grad_abs_std`, `grad_norm/<stage>`.

Images are rendered for the metrics from the latents with the generator the attack used, float and
unclipped, as PPA regenerates them for every metric (`make_renderer`). An attack whose images are not a
function of a small latent (IF-GMI: w and a feature map) stores them instead: `images` next to `w`,
framed as the target sees them (centre crop) and resized as its attack.json says; they are then the
renderer's input in place of `w`. PLG-MI's latent is (z, class): the class is its last column.
"""

import functools
import glob
import json
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax import errors
from mi_jax.data import transforms
from mi_jax.gan64 import checkpoint as gan_io
from mi_jax.gan64 import conditional as gan_conditional
from mi_jax.gan64 import networks as gan_networks
from mi_jax.stylegan import checkpoint as generator_io
from mi_jax.stylegan import networks

ATTACK_FILE = 'attack.json'
GRAD_NORM_PREFIX = 'grad_norm/'  # per-stage norms of dL/dz_i in the batch logs
STORED_IMAGE_JOBS = ('attack_ifgmi',)  # attacks that store `images` (render inputs) next to `w`


class AttackOutputError(errors.MiJaxError, ValueError):
  """An attack workdir that does not hold what is asked of it."""


def final_path(workdir: str, target_class: int) -> str:
  return os.path.join(workdir, 'final', f'class_{target_class:05d}.npz')


def batch_path(workdir: str, batch: int) -> str:
  return os.path.join(workdir, 'optimized', f'batch_{batch:05d}.npz')


def read_attack(workdir: str) -> dict:
  """attack.json of a finished attack."""
  path = os.path.join(workdir, ATTACK_FILE)
  if not os.path.exists(path):
    raise AttackOutputError(f'{workdir} holds no {ATTACK_FILE}: the attack has not finished')
  with open(path) as f:
    return json.load(f)


def render_input(arrays) -> np.ndarray:
  """What the renderer takes for each image of an npz's arrays: the stored `images` if any, else `w`."""
  return arrays['images'] if 'images' in arrays else arrays['w']


def final_latents(workdir: str):
  """(renderer inputs [N, ...] (render_input), target classes [N], final-selection confidences [N]) of the
  kept images, class by class."""
  paths = sorted(glob.glob(os.path.join(workdir, 'final', 'class_*.npz')))
  if not paths:
    raise AttackOutputError(f'{workdir} holds no final latents (final/class_*.npz): run the attack first')
  ws, targets, confidences = [], [], []
  for path in paths:
    with np.load(path) as f:
      ws.append(render_input(f))
      confidences.append(f['scores'])
      targets.append(np.full(len(f['scores']), int(os.path.basename(path)[len('class_') : -len('.npz')])))
  return np.concatenate(ws), np.concatenate(targets), np.concatenate(confidences)


def batch_logs(workdir: str) -> Iterator[dict]:
  """Each finished optimisation batch's arrays (w, classes and the per-step log), in batch order."""
  paths = sorted(glob.glob(os.path.join(workdir, 'optimized', 'batch_*[0-9].npz')))
  if not paths:
    raise AttackOutputError(f'{workdir} holds no optimised latents (optimized/batch_*.npz): run the attack first')
  for path in paths:
    with np.load(path) as f:
      yield {k: f[k] for k in f.files}


def optimized_latents(workdir: str):
  """(renderer inputs [M, ...] (render_input), target classes [M]) of every optimised latent, before final selection."""
  batches = list(batch_logs(workdir))
  return np.concatenate([render_input(b) for b in batches]), np.concatenate([b['classes'] for b in batches])


def make_renderer(workdir: str, antialias: bool | None = None):
  """render(w [B, latent_dim], size) -> float images [B, size, size, C] in about [-1, 1], framed as the attack framed them.

  A StyleGAN2 attack (PPA): the generator (const noise, one w for every layer), the attack's centre crop,
  then the resize to `size`. A low-resolution GAN attack (GMI, KEDMI; PLG-MI on (z, class)): the
  generator on z, mapped from [0, 1] to [-1, 1], then the resize. IF-GMI: its stored images, resized. Resizes antialiased per
  `antialias` (None: as the attack's own).
  """
  settings = read_attack(workdir)['settings']
  generator_dir = settings['generator']['dir']
  antialias = settings['attack'].get('antialias', True) if antialias is None else antialias
  if settings['job'] in STORED_IMAGE_JOBS:  # the stored images, already framed: only the resize is left

    @functools.partial(jax.jit, static_argnums=1)
    def resize_stored(images, size):
      images = images.astype(np.float32)
      return images if size == images.shape[1] else transforms.resize(images, size, antialias)

    return resize_stored

  if os.path.exists(os.path.join(os.path.expanduser(generator_dir), gan_io.META_FILE)):
    gan_config, kind, g_vars, _ = gan_io.load_gan(generator_dir)
    if kind == 'plgmi':  # PLG-MI's conditional generator: the class is the latent's last column
      conditional_generator = gan_conditional.ConditionalGenerator(gan_config)
      generate = lambda w: conditional_generator.apply(g_vars, w[:, :-1], w[:, -1].astype(jnp.int32))
    else:
      gan64_generator = gan_networks.Generator(gan_config)
      generate = lambda z: gan64_generator.apply(g_vars, z)

    @functools.partial(jax.jit, static_argnums=1)
    def render_gan64(w, size):
      images = generate(w) * 2.0 - 1.0
      return images if size == images.shape[1] else transforms.resize(images, size, antialias)

    return render_gan64

  gen_config, gen_vars, _ = generator_io.load_generator(generator_dir)
  G = networks.Generator(gen_config)
  crop = settings['attack']['center_crop']

  @functools.partial(jax.jit, static_argnums=1)
  def render(w, size):
    images = G.apply(gen_vars, w[:, None], noise_mode='const', method=G.synthesize)
    return transforms.generator_to_classifier(images, crop, size, antialias)

  return render
