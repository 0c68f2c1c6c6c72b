"""PLG-MI's pieces as small pure functions: pseudo-labels, the augmentation, the losses and the GAN steps.

PLG-MI (Yuan et al., AAAI 2023; LetheSec/PLG-MI-Attack top_n_selection.py, train_cgan.py, losses.py):
  1. the target labels the public set: for each class, the `top_n` images with the highest softmax
     probability of that class (an image may serve several classes);
  2. a conditional GAN (mi_jax/gan64/conditional.py) learns those (image, pseudo-label) pairs with the
     hinge loss; the generator's loss adds alpha x the target's max-margin loss on an augmented view of
     its images for the labels it was asked for. Each iteration is one generator step, then `n_dis`
     critic steps (train_cgan.py), Adam(2e-4, betas (0, 0.9)) for both;
  3. the attack optimises z per class under the same max-margin loss (mi_jax/attacks/plgmi.py).

Images are in [0, 1] (the reference's range; our classifiers see 2x - 1). The augmentation is kornia's
(0.6.6) as the reference composes it, per sample: RandomResizedCrop (scale 0.8-1, square), ColorJitter
(brightness and contrast 0.2, each adjustment clamped to [0, 1]; probability `jitter_p`: 0.5 in GAN
training, 1 in the attack), a horizontal flip (p 0.5), RandomRotation (+-5 degrees, p 0.5, zero padding);
bilinear sampling with align_corners=True.
"""

import dataclasses
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mi_jax.attacks import losses as attack_losses
from mi_jax.gan64 import conditional, networks

KIND = 'plgmi'  # the GAN directory's kind (mi_jax/gan64/checkpoint.py)


# ---------------------------------------------------------------------------- pseudo-labels


def top_n_per_class(probabilities: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices [K, n], probabilities [K, n]): per class, the n public images it is most probable for, most
  probable first (ties: the lower index first). An image can be chosen by several classes."""
  if top_n > probabilities.shape[0]:
    raise ValueError(f'top_n={top_n} exceeds the {probabilities.shape[0]} public images')
  order = np.argsort(-probabilities, axis=0, kind='stable')[:top_n].T  # [K, n]
  return order, np.take_along_axis(probabilities.T, order, axis=1)


# ---------------------------------------------------------------------------- augmentation


def _bilinear(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """image [H, W, C] sampled at (rows, cols) [H', W'] bilinearly; outside the image: 0."""
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, [rows, cols], order=1, mode='constant')
  return jax.vmap(sample, in_axes=2, out_axes=2)(image)


@flax.struct.dataclass
class AugmentParams:
  """One sample's draws: the crop box (top, left, side: a square), jitter, flip and rotation."""

  top: jax.Array
  left: jax.Array
  side: jax.Array
  jitter: jax.Array  # bool: apply the colour jitter
  brightness: jax.Array  # factor in [0.8, 1.2]; kornia 0.6 adds factor - 1
  contrast: jax.Array  # factor in [0.8, 1.2]; kornia 0.6 multiplies
  contrast_first: jax.Array  # bool: the order of the two adjustments
  flip: jax.Array  # bool
  angle: jax.Array  # degrees (0 when the rotation is not drawn)


def draw_augment_params(key: jax.Array, size: int, jitter_p: float) -> AugmentParams:
  """kornia's draws for one size x size image: crop area ~ U(0.8, 1) of the image, ratio 1; position uniform."""
  k = jax.random.split(key, 10)
  side = jnp.sqrt(jax.random.uniform(k[0], (), minval=0.8, maxval=1.0)) * size
  return AugmentParams(
      top=jax.random.uniform(k[1]) * (size - side),
      left=jax.random.uniform(k[2]) * (size - side),
      side=side,
      jitter=jax.random.uniform(k[3]) < jitter_p,
      brightness=jax.random.uniform(k[4], minval=0.8, maxval=1.2),
      contrast=jax.random.uniform(k[5], minval=0.8, maxval=1.2),
      contrast_first=jax.random.uniform(k[6]) < 0.5,
      flip=jax.random.uniform(k[7]) < 0.5,
      angle=jnp.where(jax.random.uniform(k[8]) < 0.5, jax.random.uniform(k[9], minval=-5.0, maxval=5.0), 0.0),
  )


def apply_augment(image: jax.Array, p: AugmentParams) -> jax.Array:
  """One image [S, S, C] in [0, 1]: crop (resized back to S), jitter, flip, rotation, in the reference's order."""
  size = image.shape[0]
  grid = jnp.arange(size, dtype=jnp.float32)
  step = (p.side - 1.0) / (size - 1.0)  # align_corners=True: the crop's corner pixels map to the output's
  rows, cols = jnp.meshgrid(p.top + grid * step, p.left + grid * step, indexing='ij')
  x = _bilinear(image, rows, cols)

  def jitter(x):
    brightness = lambda x: jnp.clip(x + (p.brightness - 1.0), 0.0, 1.0)
    contrast = lambda x: jnp.clip(x * p.contrast, 0.0, 1.0)
    return jnp.where(p.contrast_first, brightness(contrast(x)), contrast(brightness(x)))

  x = jnp.where(p.jitter, jitter(x), x)
  # Flip and rotation are one resampling: output (r, c) reads the flipped image at the rotated position.
  center = (size - 1.0) / 2.0
  theta = jnp.deg2rad(p.angle)
  rows, cols = jnp.meshgrid(grid - center, grid - center, indexing='ij')
  src_rows = jnp.cos(theta) * rows + jnp.sin(theta) * cols + center  # positive angles turn counter-clockwise
  src_cols = -jnp.sin(theta) * rows + jnp.cos(theta) * cols + center
  src_cols = jnp.where(p.flip, size - 1.0 - src_cols, src_cols)
  return _bilinear(x, src_rows, src_cols)


def augment(key: jax.Array, images: jax.Array, jitter_p: float) -> jax.Array:
  """Independent draws per image of a batch [B, S, S, C] in [0, 1]."""
  params = jax.vmap(lambda k: draw_augment_params(k, images.shape[1], jitter_p))(jax.random.split(key, images.shape[0]))
  return jax.vmap(apply_augment)(images, params)


# ---------------------------------------------------------------------------- losses


def hinge_critic_loss(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
  """mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
  return jnp.mean(jax.nn.relu(1.0 - real_scores)) + jnp.mean(jax.nn.relu(1.0 + fake_scores))


def hinge_generator_loss(fake_scores: jax.Array) -> jax.Array:
  return -jnp.mean(fake_scores)


# ---------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class Hyperparams:
  lr: float = 2e-4  # Adam, both networks
  betas: tuple[float, float] = (0.0, 0.9)
  n_dis: int = 5  # critic steps per generator step
  alpha: float = 0.2  # weight of the target's max-margin loss in the generator's
  jitter_p: float = 0.5  # the colour jitter's probability in the generator's augmented view


@flax.struct.dataclass
class State:
  step: jax.Array  # iterations (one generator step and n_dis critic steps each)
  g_params: dict
  g_batch_stats: dict
  d_params: dict
  d_stats: dict  # the spectral norms' power-iteration vectors
  g_opt_state: optax.OptState
  d_opt_state: optax.OptState
  rng: jax.Array

  def generator_variables(self) -> dict:
    return {'params': self.g_params, 'batch_stats': self.g_batch_stats}

  def critic_variables(self) -> dict:
    return {'params': self.d_params, 'batch_stats': self.d_stats}


def optimizer(hp: Hyperparams) -> optax.GradientTransformation:
  return optax.adam(hp.lr, b1=hp.betas[0], b2=hp.betas[1], eps=1e-8)


def create_state(config: networks.GanConfig, hp: Hyperparams, seed: int) -> State:
  g_rng, d_rng, rng = jax.random.split(jax.random.key(seed), 3)
  G, D = conditional.ConditionalGenerator(config), conditional.ProjectionCritic(config)
  labels = jnp.zeros((2,), jnp.int32)
  g_vars = jax.jit(G.init)(g_rng, jnp.zeros((2, config.z_dim)), labels)
  d_vars = jax.jit(D.init)(d_rng, jnp.zeros((2, config.resolution, config.resolution, config.img_channels)), labels)
  tx = optimizer(hp)
  return State(
      step=jnp.zeros((), jnp.int32),
      g_params=g_vars['params'],
      g_batch_stats=g_vars['batch_stats'],
      d_params=d_vars['params'],
      d_stats=d_vars['batch_stats'],
      g_opt_state=tx.init(g_vars['params']),
      d_opt_state=tx.init(d_vars['params']),
      rng=rng,
  )


def iteration(
    state: State,
    reals: jax.Array,  # [n_dis, B, R, R, C] pseudo-labelled public images in [0, 1]
    labels: jax.Array,  # [n_dis, B] their pseudo-labels
    *,
    config: networks.GanConfig,
    hp: Hyperparams,
    target: Callable[[jax.Array], jax.Array],  # images in [0, 1] -> the target's logits
) -> tuple[State, dict]:
  """One generator step, then n_dis critic steps (each on fresh fakes of fresh uniform labels)."""
  G, D = conditional.ConditionalGenerator(config), conditional.ProjectionCritic(config)
  tx = optimizer(hp)
  batch = reals.shape[1]
  rng, g_key, scan_key = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)

  def generate(g_params, g_batch_stats, key):
    z_key, y_key = jax.random.split(key)
    y = jax.random.randint(y_key, (batch,), 0, config.num_classes)
    images, updates = G.apply(
        {'params': g_params, 'batch_stats': g_batch_stats},
        jax.random.normal(z_key, (batch, config.z_dim)),
        y,
        train=True,
        mutable=['batch_stats'],
    )
    return images, y, updates['batch_stats']

  def critic(d_params, d_stats, images, y):  # the reference's critic is always in training mode
    scores, updates = D.apply(
        {'params': d_params, 'batch_stats': d_stats}, images, y, update_stats=True, mutable=['batch_stats']
    )
    return scores, updates['batch_stats']

  def generator_loss(g_params, key):
    fake_key, augment_key = jax.random.split(key)
    fake, y, g_batch_stats = generate(g_params, state.g_batch_stats, fake_key)
    scores, d_stats = critic(state.d_params, state.d_stats, fake, y)
    adversarial = hinge_generator_loss(scores)
    inversion = jnp.mean(attack_losses.max_margin_loss(target(augment(augment_key, fake, hp.jitter_p)), y))
    return adversarial + hp.alpha * inversion, (g_batch_stats, d_stats, adversarial, inversion)

  (loss_g, (g_batch_stats, d_stats, adversarial, inversion)), grads = jax.value_and_grad(generator_loss, has_aux=True)(
      state.g_params, g_key
  )
  updates, g_opt_state = tx.update(grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)

  def critic_step(carry, inputs):
    d_params, d_stats, d_opt_state, g_batch_stats = carry
    real, real_y, key = inputs
    fake_key, noise_key = jax.random.split(key)
    fake, fake_y, g_batch_stats = generate(g_params, g_batch_stats, fake_key)
    fake = jax.lax.stop_gradient(fake)
    real = real + jax.random.uniform(noise_key, real.shape, maxval=1.0 / 256.0)  # the reference's dequantisation

    def loss_fn(d_params):
      fake_scores, stats = critic(d_params, d_stats, fake, fake_y)
      real_scores, stats = critic(d_params, stats, real, real_y)
      return hinge_critic_loss(real_scores, fake_scores), (stats, jnp.mean(real_scores), jnp.mean(fake_scores))

    (loss_d, (d_stats, d_real, d_fake)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
    updates, d_opt_state = tx.update(grads, d_opt_state, d_params)
    d_params = optax.apply_updates(d_params, updates)
    return (d_params, d_stats, d_opt_state, g_batch_stats), {'loss_d': loss_d, 'd_real': d_real, 'd_fake': d_fake}

  (d_params, d_stats, d_opt_state, g_batch_stats), d_metrics = jax.lax.scan(
      critic_step,
      (state.d_params, d_stats, state.d_opt_state, g_batch_stats),
      (reals, labels, jax.random.split(scan_key, reals.shape[0])),
      unroll=True,  # XLA:CPU runs convolutions inside a while loop ~25x slower than unrolled (n_dis is small)
  )
  new_state = state.replace(
      step=state.step + 1,
      g_params=g_params,
      g_batch_stats=g_batch_stats,
      d_params=d_params,
      d_stats=d_stats,
      g_opt_state=g_opt_state,
      d_opt_state=d_opt_state,
      rng=rng,
  )
  metrics = {'loss_g': loss_g, 'g_adversarial': adversarial, 'g_max_margin': inversion}
  return new_state, {**metrics, **jax.tree.map(jnp.mean, d_metrics)}
