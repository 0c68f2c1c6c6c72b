"""Batched, jittable image transforms of the attack (NHWC, values in [-1, 1]).

PPA applies torchvision transforms to whole batches, so one random crop (and one
flip decision) serves every image of a batch at a given step; the random
transforms here do the same. Resizing is bilinear with antialiasing
(`jax.image`), as torchvision's `antialias=True`.
"""

import math

import jax
import jax.numpy as jnp


def center_crop(images: jax.Array, size: int) -> jax.Array:
  """torchvision F.center_crop to size x size (offsets rounded as torchvision does)."""
  height, width = images.shape[1:3]
  if size > height or size > width:
    raise ValueError(f'center crop {size} is larger than the {height}x{width} images')
  top = int(round((height - size) / 2.0))
  left = int(round((width - size) / 2.0))
  return images[:, top:top + size, left:left + size]


def resize(images: jax.Array, size: int) -> jax.Array:
  if images.shape[1:3] == (size, size):
    return images
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), 'linear', antialias=True)


def generator_to_classifier(images: jax.Array, crop: int, size: int) -> jax.Array:
  """PPA's `create_image` framing: center crop `crop` (0 = none), then resize to the classifier's input."""
  if crop:
    images = center_crop(images, crop)
  return resize(images, size)


def random_resized_crop_box(key: jax.Array, height: int, width: int, scale, ratio) -> jax.Array:
  """torchvision RandomResizedCrop.get_params under jit: float [top, left, h, w].

  Ten proposals are drawn at once and the first that fits is taken, as the
  reference's loop does; if none fits, the centred fallback crop.
  """
  area_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
  area = height * width
  target_area = area * jax.random.uniform(area_key, (10,), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(ratio_key, (10,), minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
  w = jnp.round(jnp.sqrt(target_area * aspect))
  h = jnp.round(jnp.sqrt(target_area / aspect))
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(fits)
  w, h = w[first], h[first]
  top = jnp.floor(jax.random.uniform(top_key, (10,))[first] * (height - h + 1))
  left = jnp.floor(jax.random.uniform(left_key, (10,))[first] * (width - w + 1))
  # Fallback: the whole image clamped to the ratio range, centred.
  in_ratio = width / height
  if in_ratio < min(ratio):
    fw, fh = width, round(width / min(ratio))
  elif in_ratio > max(ratio):
    fw, fh = round(height * max(ratio)), height
  else:
    fw, fh = width, height
  fallback = jnp.array([(height - fh) // 2, (width - fw) // 2, fh, fw], jnp.float32)
  box = jnp.stack([top, left, h, w]).astype(jnp.float32)
  return jnp.where(jnp.any(fits), box, fallback)


def resized_crop(images: jax.Array, box: jax.Array, size: int) -> jax.Array:
  """Crop the (traced) box [top, left, h, w] and resize it to size x size, in one resampling."""
  top, left, h, w = box[0], box[1], box[2], box[3]
  scale = jnp.stack([size / h, size / w])
  translation = -jnp.stack([top, left]) * scale
  out_shape = (images.shape[0], size, size, images.shape[3])
  return jax.image.scale_and_translate(images, out_shape, (1, 2), scale, translation, 'linear', antialias=True)


def random_resized_crop(key: jax.Array, images: jax.Array, size: int, scale, ratio) -> jax.Array:
  box = random_resized_crop_box(key, images.shape[1], images.shape[2], scale, ratio)
  return resized_crop(images, box, size)


def random_hflip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Flips the whole batch with probability 1/2."""
  return jnp.where(jax.random.bernoulli(key), images[:, :, ::-1], images)
