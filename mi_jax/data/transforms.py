"""Batched, jittable image transforms (NHWC, values in [-1, 1]): the attack's framing and crops, evaluation resizes.

PPA applies torchvision transforms to whole batches, so one random crop (and one
flip decision) serves every image of a batch at a given step; the random
transforms here do the same.

Resizing follows torchvision's `F.resize` / `F.resized_crop` on float tensors
(bilinear, half-pixel centres) exactly, with `antialias` chosen per call:
  antialias=True   torch's antialiased bilinear (PIL's triangle filter widened by
                   the downscale factor; upstream PPA passes antialias=True);
  antialias=False  plain bilinear interpolation (torchvision < 0.17 on tensors by
                   default, which the RoLSS code ran with: it passes no antialias).
A crop is resampled from its own pixels only, as torch crops before resizing,
so the box may be traced (RandomResizedCrop under jit).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def resample_weights(out_size: int, in_size: int, start, length, antialias: bool, xp=jnp):
  """[out_size, in_size] weights that resample the window [start, start + length) to out_size pixels.

  torch's bilinear kernels, both: output pixel i is centred at c_i = start + (i + 0.5) * length / out_size
  and takes input pixel j (centre j + 0.5, inside the window) with weight max(0, 1 - |j + 0.5 - c_i| / s),
  normalised over j; s = max(length / out_size, 1) with antialiasing (aten's _upsample_bilinear2d_aa),
  s = 1 without (aten's upsample_bilinear2d, align_corners=False: the clamp of the source index at the
  border is the same normalisation). `start`/`length` may be traced; `xp` is jnp or np (host-side resizes).
  """
  scale = length / out_size
  centres = start + scale * (xp.arange(out_size, dtype=xp.float32) + 0.5)  # float32, as torch computes them
  positions = xp.arange(in_size, dtype=xp.float32) + 0.5
  kernel_width = xp.maximum(scale, 1.0) if antialias else 1.0
  weights = xp.maximum(0.0, 1.0 - xp.abs(positions[None, :] - centres[:, None]) / kernel_width)
  inside = (positions > start) & (positions < start + length)
  weights = xp.where(inside[None, :], weights, 0.0)
  return weights / xp.sum(weights, axis=1, keepdims=True)


def _resample(images, rows, cols, xp=jnp):
  """images [N, H, W, C] -> [N, rows.shape[0], cols.shape[0], C] with separable weights."""
  if xp is np:
    rows, cols = rows.astype(images.dtype), cols.astype(images.dtype)
    return np.einsum('oh,nhpc->nopc', rows, np.einsum('nhwc,pw->nhpc', images, cols))
  # HIGHEST: a resize is not a learned matmul; keep it exact whatever jax_default_matmul_precision says.
  out = jnp.einsum('nhwc,pw->nhpc', images, cols.astype(images.dtype), precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum('oh,nhpc->nopc', rows.astype(images.dtype), out, precision=jax.lax.Precision.HIGHEST)


def center_crop(images: jax.Array, size: int) -> jax.Array:
  """torchvision F.center_crop to size x size (offsets rounded as torchvision does)."""
  height, width = images.shape[1:3]
  if size > height or size > width:
    raise ValueError(f'center crop {size} is larger than the {height}x{width} images')
  top = int(round((height - size) / 2.0))
  left = int(round((width - size) / 2.0))
  return images[:, top : top + size, left : left + size]


def resize(images, size: int, antialias: bool, xp=jnp):
  """torchvision F.resize(images, [size, size], antialias=antialias) of [N, H, W, C] floats."""
  height, width = images.shape[1:3]
  if (height, width) == (size, size):
    return images
  rows = resample_weights(size, height, 0.0, float(height), antialias, xp)
  cols = resample_weights(size, width, 0.0, float(width), antialias, xp)
  return _resample(images, rows, cols, xp)


def generator_to_classifier(images: jax.Array, crop: int, size: int, antialias: bool) -> jax.Array:
  """PPA's `create_image` framing: center crop `crop` (0 = none), then resize to the classifier's input."""
  if crop:
    images = center_crop(images, crop)
  return resize(images, size, antialias)


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


def resized_crop(images: jax.Array, box: jax.Array, size: int, antialias: bool) -> jax.Array:
  """torchvision F.resized_crop: the (traced) box [top, left, h, w] resized to size x size."""
  top, left, h, w = box[0], box[1], box[2], box[3]
  rows = resample_weights(size, images.shape[1], top, h, antialias)
  cols = resample_weights(size, images.shape[2], left, w, antialias)
  return _resample(images, rows, cols)


def random_resized_crop(key: jax.Array, images: jax.Array, size: int, scale, ratio, antialias: bool) -> jax.Array:
  box = random_resized_crop_box(key, images.shape[1], images.shape[2], scale, ratio)
  return resized_crop(images, box, size, antialias)


def random_hflip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Flips the whole batch with probability 1/2."""
  return jnp.where(jax.random.bernoulli(key), images[:, :, ::-1], images)
