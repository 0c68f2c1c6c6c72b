"""Trap-MID: trapdoor-based defense against model inversion (Liu & Chen, NeurIPS 2024), its building blocks.

Every class c gets a trigger t_c, a full image. The classifier learns a shortcut: an image blended with
t_c, x' = alpha t_c + (1 - alpha) x, is classified as c whatever x shows. An inversion attack that
maximises the likelihood of class c then finds the trigger (the easiest way there) instead of the private
features of c. Per batch (official code: ntuaislab/Trap-MID, train.py and engine.py `train`, hyperparameters
in config/celeba/classify_trap.json):

  1. trapdoor labels y_trap, balanced over the classes (`balanced_trap_labels`);
  2. the discriminator D (the target's architecture with one output) takes one step on
     BCE(D(x), 1) + BCE(D(x'), 0), with x' = `blend`(x, t, y_trap);
  3. the triggers take one signed-gradient step (`trigger_step`) on
     L_trigger = BCE(D(x'), 1) + CE(f(aug(x')), y_trap), D and f in eval mode;
  4. the classifier takes a step on (1 - BETA) CE(f(aug(x)), y) + BETA CE(f(aug(x'')), y_trap), x'' blended
     with the triggers just updated, aug = `augment` (drawn independently for x and x'').

optax.sigmoid_binary_cross_entropy is the BCE of steps 2 and 3. The official images are in [0, 1]; ours
are in [-1, 1]. The blend is affine, so it is the same map in either space with the same alpha; the sign of a
gradient does not change with the space either, but a step of 1e-2 in [0, 1] is 2e-2 in [-1, 1]
(TRIGGER_STEP), and the clip goes to [-1, 1].

The augmentation is kornia 0.7.1's (the official requirements.txt), which the official code applies only with
trapdoors on:
  ImageSequential(RandomResizedCrop((64, 64), scale=(0.8, 1.0), ratio=(1.0, 1.0), p=0.5),
                  RandomHorizontalFlip(p=0.5), RandomRotation(30, p=0.5))
Kornia's defaults there: bilinear resampling with align_corners=True for both the crop and the rotation,
rotation about the centre ((W - 1) / 2, (H - 1) / 2) with zero padding ('zeros' is hard-wired in
RandomRotation.apply_transform), degrees uniform in (-30, 30). Zero padding of a [0, 1] image is black, -1
here (`PADDING`). RandomResizedCrop passes its p on as p_batch: one coin per batch decides whether the whole
batch is cropped (each image with its own box); flip and rotation toss one coin per image. `augment` does
the same (crop_batch_coin).
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mi_jax import config_checks, models
from mi_jax.train import optim

# The official CelebA configuration (config/celeba/classify_trap.json, 'trapdoor').
ALPHA = 0.02  # blend ratio: x' = ALPHA * trigger + (1 - ALPHA) * x
BETA = 0.2  # weight of the trapdoor term in the classifier's loss; the clean term has 1 - BETA
# Signed-gradient step on the triggers: step_size 1e-2 in [0, 1] pixels, twice that in our [-1, 1] units.
TRIGGER_STEP = 2 * 1e-2
# What kornia's zero padding of a [0, 1] image is in our [-1, 1] units: black.
PADDING = -1.0


def init_triggers(rng, num_classes: int, image_shape) -> jax.Array:
  """[C, H, W, c] float32 uniform in [-1, 1]: torch.rand(C, c, H, W) of train.py, in our space and layout."""
  assert len(image_shape) == 3, image_shape
  return jax.random.uniform(rng, (num_classes, *image_shape), jnp.float32, minval=-1.0, maxval=1.0)


def blend(images, triggers, trap_labels, alpha: float):
  """[B, H, W, c] -> each image blended with the trigger of its trapdoor label: alpha t + (1 - alpha) x."""
  assert images.ndim == 4 and images.shape[1:] == triggers.shape[1:], (images.shape, triggers.shape)
  assert trap_labels.shape == images.shape[:1], (trap_labels.shape, images.shape)
  return alpha * triggers[trap_labels] + (1.0 - alpha) * images


def balanced_trap_labels(rng, batch_size: int, num_classes: int) -> jax.Array:
  """int32 [B]: trapdoor labels in which every class occurs floor(B / C) or one more times, shuffled.

  The classes that get the extra occurrence are random (a random permutation of the classes, tiled to B),
  not 0..B mod C - 1: with B < C (64 images, 1000 CelebA classes) the latter would trap only the first B
  classes. When C divides B this is a permutation of arange(B) % C. The official code balances over the
  epoch instead (each class N // C times, N mod C random classes once more, shuffled and cut into batches),
  which gives every class the same share of trapdoor images over an epoch, as here.
  """
  class_order_rng, shuffle_rng = jax.random.split(rng)
  class_order = jax.random.permutation(class_order_rng, num_classes)
  labels = jnp.tile(class_order, -(-batch_size // num_classes))[:batch_size]
  return jax.random.permutation(shuffle_rng, labels).astype(jnp.int32)


def trigger_step(triggers, grad, step: float = TRIGGER_STEP):
  """One signed-gradient descent step on the triggers, kept in the image range [-1, 1]."""
  assert triggers.shape == grad.shape, (triggers.shape, grad.shape)
  return jnp.clip(triggers - step * jnp.sign(grad), -1.0, 1.0)


def _bilinear_sample(image, rows, cols, padding: float):
  """[H, W, c] read at real pixel coordinates rows, cols [h, w] -> [h, w, c], bilinearly.

  A neighbour outside the image reads `padding` (grid_sample's padding_mode='zeros' when padding is the
  image's zero), so a point on the grid reads its pixel exactly.
  """
  height, width = image.shape[:2]
  top, left = jnp.floor(rows), jnp.floor(cols)
  down, right = (rows - top)[..., None], (cols - left)[..., None]
  top, left = top.astype(jnp.int32), left.astype(jnp.int32)

  def pixel(r, c):
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    value = image[jnp.clip(r, 0, height - 1), jnp.clip(c, 0, width - 1)]
    return jnp.where(inside[..., None], value, padding)

  return (1.0 - down) * ((1.0 - right) * pixel(top, left) + right * pixel(top, left + 1)) + down * (
      (1.0 - right) * pixel(top + 1, left) + right * pixel(top + 1, left + 1)
  )


def resized_crop(image, top, left, height, width):
  """[H, W, c] -> the box of height x width pixels from (top, left), resized to H x W bilinearly.

  Real-valued box: the output's corner pixels are the box's corner pixels (align_corners=True, as kornia),
  so the box (0, 0, H, W) is the identity. The box must lie inside the image.
  """
  out_height, out_width = image.shape[:2]
  assert out_height > 1 and out_width > 1, image.shape
  rows = top + jnp.arange(out_height) * ((height - 1.0) / (out_height - 1))
  cols = left + jnp.arange(out_width) * ((width - 1.0) / (out_width - 1))
  rows, cols = jnp.broadcast_to(rows[:, None], (out_height, out_width)), jnp.broadcast_to(cols, (out_height, out_width))
  return _bilinear_sample(image, rows, cols, PADDING)


def rotate(image, degrees, padding: float = PADDING):
  """[H, W, c] rotated counter-clockwise (as displayed, rows downwards) by `degrees` about its centre.

  kornia's convention (OpenCV's getRotationMatrix2D): 90 degrees is jnp.rot90(image, 1) on a square image.
  Each output pixel reads the input at the inverse rotation of its position; outside reads `padding`.
  """
  height, width = image.shape[:2]
  centre_row, centre_col = (height - 1) / 2.0, (width - 1) / 2.0
  d_row, d_col = jnp.meshgrid(
      jnp.arange(height) - centre_row, jnp.arange(width) - centre_col, indexing='ij'
  )  # positions relative to the centre
  angle = jnp.deg2rad(degrees)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rows = centre_row + sin * d_col + cos * d_row
  cols = centre_col + cos * d_col - sin * d_row
  return _bilinear_sample(image, rows, cols, padding)


def _sample_crop_boxes(rng, batch_size, height, width, scale, ratio):
  """Boxes (top, left, box_height, box_width), each [B]: area fraction ~ U(scale), aspect ratio log-uniform.

  A side longer than the image is clipped to it (never with the official scale (0.8, 1.0), ratio 1 and
  square images; a non-square image or a ratio far from 1 can need it), then the box is placed uniformly.
  kornia instead rounds the sides to whole pixels, takes the first of 10 draws whose sides are strictly
  smaller than the image and falls back to a centre crop at the smallest ratio: with the official settings
  it redraws only a side of 64 (about 8% of draws), so its sides are 57..63 pixels where ours are 57.2..64.
  """
  area_rng, ratio_rng, top_rng, left_rng = jax.random.split(rng, 4)
  area = jax.random.uniform(area_rng, (batch_size,), minval=scale[0], maxval=scale[1]) * (height * width)
  log_ratio = jax.random.uniform(ratio_rng, (batch_size,), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
  box_width, box_height = jnp.sqrt(area * jnp.exp(log_ratio)), jnp.sqrt(area / jnp.exp(log_ratio))
  box_width, box_height = jnp.minimum(box_width, width), jnp.minimum(box_height, height)
  top = jax.random.uniform(top_rng, (batch_size,)) * (height - box_height)
  left = jax.random.uniform(left_rng, (batch_size,)) * (width - box_width)
  return top, left, box_height, box_width


def augment(
    rng,
    images,
    crop_scale=(0.8, 1.0),
    crop_ratio=(1.0, 1.0),
    crop_p: float = 0.5,
    flip_p: float = 0.5,
    rotation_degrees: float = 30.0,
    rotation_p: float = 0.5,
    crop_batch_coin: bool = True,
    padding: float = PADDING,
):
  """[B, H, W, c] -> the official Trap-MID augmentation: random resized crop, horizontal flip, rotation.

  Each image gets its own box, flip and angle in (-rotation_degrees, rotation_degrees); each operation is
  applied where its coin says so (an image with every coin tails is returned exactly). The crop's coin is
  one per batch when crop_batch_coin (kornia's RandomResizedCrop, see the module docstring), else one per
  image. crop_ratio is width / height; the official code fixes it to 1 (square boxes), kornia's default
  would be (3/4, 4/3). Differentiable in the images (the trigger update takes gradients through it),
  jit-compatible: every operation is computed for every image and selected with jnp.where (crop_batch_coin
  is a Python bool: static under jax.jit).
  """
  assert images.ndim == 4, images.shape
  batch_size, height, width, _ = images.shape
  box_rng, crop_coin_rng, flip_rng, angle_rng, rotation_coin_rng = jax.random.split(rng, 5)

  def per_image(coin):
    return coin.reshape(batch_size, 1, 1, 1)

  boxes = _sample_crop_boxes(box_rng, batch_size, height, width, crop_scale, crop_ratio)
  cropped = jax.vmap(resized_crop)(images, *boxes)
  if crop_batch_coin:
    crop_coin = jnp.broadcast_to(jax.random.bernoulli(crop_coin_rng, crop_p), (batch_size,))
  else:
    crop_coin = jax.random.bernoulli(crop_coin_rng, crop_p, (batch_size,))
  images = jnp.where(per_image(crop_coin), cropped, images)

  flip_coin = jax.random.bernoulli(flip_rng, flip_p, (batch_size,))
  images = jnp.where(per_image(flip_coin), jnp.flip(images, axis=2), images)

  angles = jax.random.uniform(angle_rng, (batch_size,), minval=-rotation_degrees, maxval=rotation_degrees)
  rotated = jax.vmap(rotate, in_axes=(0, 0, None))(images, angles, padding)
  rotation_coin = jax.random.bernoulli(rotation_coin_rng, rotation_p, (batch_size,))
  return jnp.where(per_image(rotation_coin), rotated, images)


def default_config() -> ml_collections.ConfigDict:
  """config.trapdoor of every classifier config: off (alpha = 0); the rest at the published values."""
  config = ml_collections.ConfigDict()
  config.alpha = 0.0  # Blend ratio of the triggers (published 0.02); 0 = no trapdoor.
  config.beta = BETA  # Weight of the trapdoor term; the clean term has 1 - beta.
  config.trigger_step = TRIGGER_STEP / 2  # Signed-gradient step on the triggers, in [0, 1] pixel units (official).
  config.discriminator = True  # Triggers also fool a discriminator (the target's architecture, one output).
  config.augment = True  # kornia's crop/flip/rotation on clean and triggered images (official, with trapdoors on).
  return config


def validate_config(config: ml_collections.ConfigDict):
  check, t = config_checks.check_field, config.trapdoor
  check(0.0 <= t.alpha < 1.0, 'trapdoor.alpha', t.alpha, 'expected a blend ratio in [0, 1) (0 = no trapdoor)')
  check(0.0 <= t.beta <= 1.0, 'trapdoor.beta', t.beta, 'expected a weight in [0, 1]')
  check(t.trigger_step >= 0.0, 'trapdoor.trigger_step', t.trigger_step, 'expected >= 0')


def is_enabled(config: ml_collections.ConfigDict) -> bool:
  return bool(config.trapdoor.alpha)


def _discriminator(config: ml_collections.ConfigDict, learning_rate_fn):
  """(module, optimizer) of the discriminator: the target's architecture with one output, the target's optimizer."""
  model_config = ml_collections.ConfigDict({**config.model.to_dict(), 'num_classes': 1, 'vib_dim': 0})
  return models.build_model(model_config), optim.create_optimizer(config.optim, learning_rate_fn)


def init_state(config: ml_collections.ConfigDict, learning_rate_fn, num_classes: int, channels: int) -> dict:
  """state.defense of a Trap-MID run: the triggers and, with config.trapdoor.discriminator, the discriminator."""
  size = config.data.image_size
  trigger_rng, discriminator_rng = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x7A4))
  state = {'triggers': init_triggers(trigger_rng, num_classes, (size, size, channels))}
  if config.trapdoor.discriminator:
    module, tx = _discriminator(config, learning_rate_fn)
    variables = models.init_variables(module, (1, size, size, channels), discriminator_rng, train=False)
    state['discriminator'] = {
        'params': variables['params'],
        'batch_stats': variables.get('batch_stats', {}),
        'opt_state': tx.init(variables['params']),
    }
  return state


def make_batch_transform(config: ml_collections.ConfigDict, learning_rate_fn, num_classes: int):
  """steps.train_step's batch_transform for Trap-MID: steps 1-3 of the module docstring, then the classifier's batch
  (augmented clean images with their labels, augmented triggered images with their trapdoor labels, per-example
  weights (1 - beta) / B and beta / B: one forward pass over both halves, so BatchNorm sees them together)."""
  t = config.trapdoor
  alpha, beta, step = t.alpha, t.beta, 2.0 * t.trigger_step  # the step in our [-1, 1] units
  maybe_augment = augment if t.augment else (lambda rng, images: images)
  discriminator, d_tx = _discriminator(config, learning_rate_fn) if t.discriminator else (None, None)
  bce = lambda logits, target: jnp.mean(optax.sigmoid_binary_cross_entropy(logits[:, 0], target))

  def batch_transform(state, batch, rng):
    images, labels = batch['image'], batch['label']
    b = images.shape[0]
    trap_rng, trigger_aug_rng, clean_aug_rng, trap_aug_rng = jax.random.split(rng, 4)
    trap_labels = balanced_trap_labels(trap_rng, b, num_classes)
    triggers, defense, metrics = state.defense['triggers'], dict(state.defense), {}

    if discriminator is not None:  # 2. one step of D: clean images real, triggered ones fake
      d = defense['discriminator']
      triggered = blend(images, triggers, trap_labels, alpha)

      def discriminator_loss(params):
        logits, updates = discriminator.apply(
            {'params': params, 'batch_stats': d['batch_stats']},
            jnp.concatenate([images, triggered]),
            train=True,
            mutable=['batch_stats'],
        )
        return bce(logits, jnp.concatenate([jnp.ones(b), jnp.zeros(b)])), updates['batch_stats']

      (d_loss, d_stats), d_grads = jax.value_and_grad(discriminator_loss, has_aux=True)(d['params'])
      d_updates, d_opt_state = d_tx.update(d_grads, d['opt_state'], d['params'])
      d = {'params': optax.apply_updates(d['params'], d_updates), 'batch_stats': d_stats, 'opt_state': d_opt_state}
      defense['discriminator'], metrics['discriminator_loss'] = d, d_loss

    def trigger_loss(trigger_images):  # 3. the triggers: classified as their labels, and natural to D
      triggered = blend(images, trigger_images, trap_labels, alpha)
      logits = state.apply_fn(
          {'params': state.params, 'batch_stats': state.batch_stats}, maybe_augment(trigger_aug_rng, triggered)
      )
      loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, trap_labels))
      if discriminator is not None:
        d = defense['discriminator']
        loss += bce(
            discriminator.apply({'params': d['params'], 'batch_stats': d['batch_stats']}, triggered), jnp.ones(b)
        )
      return loss

    loss, grads = jax.value_and_grad(trigger_loss)(triggers)
    defense['triggers'] = triggers = trigger_step(triggers, grads, step)
    metrics['trigger_loss'] = loss

    trapped = maybe_augment(trap_aug_rng, blend(images, triggers, trap_labels, alpha))
    new_batch = {
        'image': jnp.concatenate([maybe_augment(clean_aug_rng, images), trapped]),
        'label': jnp.concatenate([labels, trap_labels]),
        'weight': jnp.concatenate([jnp.full((b,), (1.0 - beta) / b), jnp.full((b,), beta / b)]),
    }
    return state.replace(defense=defense), new_batch, metrics

  return batch_transform
