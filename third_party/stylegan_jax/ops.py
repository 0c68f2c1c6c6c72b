"""Numerical building blocks of StyleGAN2 in lax: FIR resampling, bias + activation, modulated conv.

Layout is NHWC and kernels are HWIO throughout. Each op follows the semantics
of the reference (`_ref`) implementations of StyleGAN2-ADA's custom CUDA ops,
re-derived from their documentation (NVlabs/stylegan2-ada-pytorch, torch_utils/ops/*.py docstrings):

  upfirdn2d:  zero-insert upsampling (up-1 zeros after every pixel) -> pad/crop
              -> true convolution with the FIR filter -> keep every down-th pixel.
  bias_act:   x + b -> activation -> * gain -> clamp to [-clamp, clamp].
"""

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_DIMS = ('NHWC', 'HWIO', 'NHWC')

# activation -> (function, default gain). The gains keep unit variance through
# the layer (He init), so every layer's gain is visible here rather than in the weights.
ACTIVATIONS = {
    'linear': (lambda x, alpha: x, 1.0),
    'relu': (lambda x, alpha: jax.nn.relu(x), math.sqrt(2)),
    'lrelu': (lambda x, alpha: jnp.where(x >= 0, x, x * alpha), math.sqrt(2)),
}
LRELU_ALPHA = 0.2


def accumulation_dtype(dtype) -> jnp.dtype:
  """float32 for low-precision compute dtypes (bf16, fp16), else the dtype itself (float64 in tests)."""
  return jnp.promote_types(dtype, jnp.float32)


def _pair(value) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def _padding4(padding) -> tuple[int, int, int, int]:
  """(x0, x1, y0, y1) from an int, (x, y) or (x0, x1, y0, y1), as in the reference ops."""
  if isinstance(padding, int):
    return (padding,) * 4
  if len(padding) == 2:
    px, py = padding
    return px, px, py, py
  return tuple(padding)


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1), normalize: bool = True, gain: float = 1.0) -> np.ndarray:
  """2-D FIR filter [fh, fw] (float32): the outer product of `taps`, summing to `gain`.

  The reference keeps long (>= 8 taps) filters separable; the outer product is the
  same linear operator, so one 2-D form serves every length.
  """
  f = np.asarray(taps, np.float64)
  if f.ndim == 1:
    f = np.outer(f, f)
  assert f.ndim == 2, f.shape
  if normalize:
    f = f / f.sum()
  return (f * gain).astype(np.float32)


def _separable(f: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
  """(vertical, horizontal) taps whose outer product is `f`, or None if `f` is not rank one."""
  total = f.sum()
  if total == 0:
    return None
  fy, fx = f.sum(axis=1), f.sum(axis=0) / total
  return (fy, fx) if np.allclose(np.outer(fy, fx), f, rtol=1e-6, atol=1e-8) else None


def _correlate_axis(x: jax.Array, taps: np.ndarray, axis: int, stride: int) -> jax.Array:
  """Valid 1-D correlation along `axis`, keeping every `stride`-th output: a sum of strided slices."""
  n_out = (x.shape[axis] - len(taps)) // stride + 1
  if n_out <= 0:
    raise ValueError(f'upfirdn2d: {x.shape[axis]} pixels (after padding) are fewer than the {len(taps)} filter taps')
  terms = [
      jax.lax.slice_in_dim(x, k, k + stride * (n_out - 1) + 1, stride, axis) * jnp.asarray(t, x.dtype)
      for k, t in enumerate(taps)
      if t != 0
  ]
  return functools.reduce(jnp.add, terms)


def upfirdn2d(
    x: jax.Array,  # [N, H, W, C] input.
    f: np.ndarray,  # [fh, fw] FIR filter (see setup_filter).
    up=1,  # Upsampling factor: int or (x, y).
    down=1,  # Downsampling factor: int or (x, y).
    padding=0,  # Pad (>0) or crop (<0) after upsampling: int, (x, y) or (x0, x1, y0, y1).
    flip_filter: bool = False,  # False = convolution (as the reference), True = correlation.
    gain: float = 1.0,  # Scales the filter (the image's overall gain).
) -> jax.Array:
  """Upsample, FIR-filter and downsample each channel.

  One `lax.pad` does the zero insertion (interior padding; the extra up-1 at the
  end gives the reference's zeros *after* every pixel) and the pad/crop
  (negative edges crop). The filter then runs as sums of shifted, strided slices,
  separably when it is rank one: XLA fuses these into a few elementwise loops,
  where a depthwise dilated conv is slow on CPU.
  """
  upx, upy = _pair(up)
  downx, downy = _pair(down)
  padx0, padx1, pady0, pady1 = _padding4(padding)
  f = np.asarray(f, np.float64) * gain
  assert f.ndim == 2, f'expected a 2-D filter, got shape {f.shape}'
  if not flip_filter:
    f = f[::-1, ::-1]  # a convolution is a correlation with the flipped filter
  zero = jnp.zeros((), x.dtype)
  x = jax.lax.pad(x, zero, ((0, 0, 0), (pady0, pady1 + upy - 1, upy - 1), (padx0, padx1 + upx - 1, upx - 1), (0, 0, 0)))
  factors = _separable(f)
  if factors is not None:
    x = _correlate_axis(x, factors[0], axis=1, stride=downy)
    return _correlate_axis(x, factors[1], axis=2, stride=downx)
  rows = [
      _correlate_axis(jax.lax.slice_in_dim(x, k, x.shape[1] - f.shape[0] + 1 + k, axis=1), f[k], 2, downx)
      for k in range(f.shape[0])
  ]
  return jax.lax.slice_in_dim(functools.reduce(jnp.add, rows), 0, None, downy, axis=1)


def upsample2d(x: jax.Array, f: np.ndarray, up: int = 2, padding: int = 0, gain: float = 1.0) -> jax.Array:
  """2x (or `up`x) upsampling with the FIR filter; keeps the image's mean (`gain * up**2`)."""
  fh, fw = f.shape
  p = _padding4(padding)
  pads = (p[0] + (fw + up - 1) // 2, p[1] + (fw - up) // 2, p[2] + (fh + up - 1) // 2, p[3] + (fh - up) // 2)
  return upfirdn2d(x, f, up=up, padding=pads, gain=gain * up * up)


def downsample2d(x: jax.Array, f: np.ndarray, down: int = 2, padding: int = 0, gain: float = 1.0) -> jax.Array:
  """FIR filtering then keeping every `down`-th pixel."""
  fh, fw = f.shape
  p = _padding4(padding)
  pads = (p[0] + (fw - down + 1) // 2, p[1] + (fw - down) // 2, p[2] + (fh - down + 1) // 2, p[3] + (fh - down) // 2)
  return upfirdn2d(x, f, down=down, padding=pads, gain=gain)


def bias_act(
    x: jax.Array,  # [..., C] activations.
    b: jax.Array | None = None,  # [C] bias, added on the channel (last) axis.
    act: str = 'linear',  # 'linear', 'relu' or 'lrelu'.
    alpha: float = LRELU_ALPHA,  # lrelu slope.
    gain: float | None = None,  # None = the activation's default gain.
    clamp: float | None = None,  # Clamp the output to [-clamp, clamp]; None = off.
) -> jax.Array:
  """x + b, activation, * gain, clamp (the reference order; the clamp also runs in fp32)."""
  if act not in ACTIVATIONS:
    raise ValueError(f'unknown activation {act!r}; known: {sorted(ACTIVATIONS)}')
  fn, default_gain = ACTIVATIONS[act]
  gain = default_gain if gain is None else gain
  if b is not None:
    x = x + b.astype(x.dtype)
  x = fn(x, alpha)
  if gain != 1:
    x = x * jnp.asarray(gain, x.dtype)
  if clamp is not None and clamp >= 0:
    x = jnp.clip(x, -clamp, clamp)
  return x


def conv2d_resample(
    x: jax.Array,  # [N, H, W, I] input.
    w: jax.Array,  # [kh, kw, I, O] kernel, torch orientation re-laid to HWIO.
    f: np.ndarray | None = None,  # FIR filter for up/down; None only if up == down == 1.
    up: int = 1,  # Integer upsampling factor (up == 2 or down == 2, not both).
    down: int = 1,  # Integer downsampling factor.
    padding: int = 0,  # Padding of the (un-resampled) conv.
) -> jax.Array:
  """2-D convolution with optional FIR up/downsampling, as StyleGAN2's `conv2d_resample`.

  Up: the reference runs a stride-`up` transposed conv (a true convolution of the
  zero-upsampled input) and then the FIR filter. lax convs correlate, so the
  transposed conv is a dilated correlation with the spatially flipped kernel.
  Down: FIR filter first, then a strided conv.
  """
  kh, kw = w.shape[:2]
  assert kh == kw, w.shape
  if up > 1 and down > 1:
    raise NotImplementedError('up and down together')
  if up == 1 and down == 1:
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((padding, padding), (padding, padding)), dimension_numbers=_DIMS)
  fh, fw = f.shape
  if down > 1:
    pads = (
        padding + (fw - down + 1) // 2,
        padding + (fw - down) // 2,
        padding + (fh - down + 1) // 2,
        padding + (fh - down) // 2,
    )
    x = upfirdn2d(x, f, padding=pads)
    return jax.lax.conv_general_dilated(x, w, (down, down), 'VALID', dimension_numbers=_DIMS)
  if kw == 1:  # 1x1: convolve, then upsample
    x = jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=_DIMS)
    return upsample2d(x, f, up=up, padding=padding)
  # Pads left for the FIR after the transposed conv's full output (torch: px0 - (kw-1), px1 - (kw-up)).
  fir0 = padding + (fw + up - 1) // 2 - (kw - 1)
  fir1 = padding + (fw - up) // 2 - (kw - up)
  assert fir0 >= 0 and fir1 >= 0, (fir0, fir1)
  # Zero insertion by interior padding, then a plain conv: XLA:CPU is slow on lhs-dilated convs.
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (kh - 1, kh - 1, up - 1), (kw - 1, kw - 1, up - 1), (0, 0, 0)))
  x = jax.lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), 'VALID', dimension_numbers=_DIMS)
  return upfirdn2d(x, f, padding=(fir0, fir1, fir0, fir1), gain=up * up)


def modulated_conv2d(
    x: jax.Array,  # [N, H, W, I] input.
    weight: jax.Array,  # [kh, kw, I, O] shared kernel (no equalized-LR gain: demod removes it).
    styles: jax.Array,  # [N, I] per-sample input-channel scales.
    noise: jax.Array | None = None,  # Broadcastable to the output; added after demodulation.
    up: int = 1,  # 1 or 2.
    padding: int = 0,  # Conv padding.
    resample_filter: np.ndarray | None = None,  # FIR filter for up=2.
    demodulate: bool = True,  # Normalize each output channel to unit expected variance.
) -> jax.Array:
  """StyleGAN2's modulated convolution, non-fused form (one shared-weight conv).

  Scaling the input by the styles, convolving with the shared weight and scaling
  the output by the demodulation coefficients equals convolving with the
  per-sample kernel weight * styles * dcoefs (the reference's fused form) exactly
  in real arithmetic.
  """
  batch, in_channels = styles.shape
  assert x.shape[0] == batch and x.shape[-1] == in_channels, (x.shape, styles.shape)
  assert weight.shape[2] == in_channels, (weight.shape, in_channels)
  x = x * styles[:, None, None, :].astype(x.dtype)
  x = conv2d_resample(x, weight.astype(x.dtype), f=resample_filter, up=up, padding=padding)
  if demodulate:
    # sum over (kh, kw, i) of (weight * styles)^2, without materialising the per-sample kernels.
    acc = accumulation_dtype(x.dtype)
    sq = jnp.einsum('ni,io->no', jnp.square(styles.astype(acc)), jnp.sum(jnp.square(weight.astype(acc)), axis=(0, 1)))
    dcoefs = jax.lax.rsqrt(sq + 1e-8)
    x = x * dcoefs[:, None, None, :].astype(x.dtype)
  if noise is not None:
    x = x + noise.astype(x.dtype)
  return x
