"""Convolution and max pooling with a fast path on XLA:CPU; elsewhere they are XLA's own ops.

XLA:CPU runs a k x k convolution (k > 1) over an input map of a few positions (2x2 at stride 1, 4x4 at
stride 2: stage 4 of an ImageNet-stem network at 64 px) with a kernel 50-100x slower than the same
FLOPs as a matmul (`reference/env.md`; openxla/xla#34273), and max pooling's gradient with a
variadic reduce-window over four index arrays. On CPU, `conv_general_dilated` computes such small-map
convolutions as patches times the kernel (one matmul) and `max_pool` as a maximum over the window's
strided slices with its own gradient. Large maps keep XLA's convolution, which is as fast as the
matmul there and whose weight gradient beats the patches one. Parameters are those of `nn.Conv`
(`Conv` is `nn.Conv` with this function), so checkpoints do not depend on the path taken.

The choice is made when a function is traced: `lax.platform_dependent` lowers only the branch of
the platform compiled for. `fast_cpu_path(False)` turns the CPU branch off for functions traced
inside it (to compare or to rule the path out); already compiled functions keep what they traced.
"""

import contextlib
import functools
from typing import Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

SMALL_MAP_POSITIONS = 16  # input maps of at most 4x4 positions take the patches path on CPU
# ... when in x out channels reach this: XLA's slow kernel grows with the channels (3x3 on 2x2 maps at batch 32:
# 0.2 s at 512, 37 ms at 256, 4.5 ms at 128 channels, reference/env.md), while the patches path costs more to
# compile and, inside a scan or while loop (the attacks' optimisation), runs its many small ops slower.
MIN_CHANNEL_PRODUCT = 128 * 128
_NHWC = ('NHWC', 'HWIO', 'NHWC')  # flax's layout for 2-D convolutions

_fast_cpu_path_enabled = True


@contextlib.contextmanager
def fast_cpu_path(enabled: bool):
  """Turns the CPU fast path on or off for functions traced inside the `with` block."""
  global _fast_cpu_path_enabled
  before, _fast_cpu_path_enabled = _fast_cpu_path_enabled, enabled
  try:
    yield
  finally:
    _fast_cpu_path_enabled = before


def _explicit_padding(padding, in_hw, window, strides) -> tuple[tuple[int, int], ...]:
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_hw, window, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _window_taps(x, window, strides, out_hw) -> list:
  """The strided slices of the (padded) NHWC map `x` that each window position reads, row-major."""
  n, _, _, c = x.shape
  (kh, kw), (sh, sw), (oh, ow) = window, strides, out_hw
  return [
      lax.slice(x, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c), (1, sh, sw, 1))
      for i in range(kh)
      for j in range(kw)
  ]


def _output_hw(in_hw, window, strides, padding) -> tuple[int, int]:
  return tuple((size + lo + hi - k) // s + 1 for size, k, s, (lo, hi) in zip(in_hw, window, strides, padding))


def patches_conv(
    lhs,  # Input, NHWC.
    rhs,  # Kernel, HWIO.
    window_strides: Sequence[int],  # Strides over H and W.
    padding,  # 'SAME', 'VALID' or ((top, bottom), (left, right)).
    precision=None,  # The matmul's precision, as the convolution's.
    preferred_element_type=None,  # The matmul's output type, as the convolution's.
) -> jax.Array:
  """An NHWC x HWIO convolution as one matmul of the input's patches (kh*kw*C columns) with the kernel.

  Its gradients are those of slicing, concatenating and a matmul; on small maps all three are fast
  on CPU, where XLA's convolution (and its input gradient) is not.
  """
  kh, kw, cin, cout = rhs.shape
  n, h, w, c = lhs.shape
  assert c == cin, (lhs.shape, rhs.shape)
  strides = tuple(window_strides)
  padding = _explicit_padding(padding, (h, w), (kh, kw), strides)
  out_hw = _output_hw((h, w), (kh, kw), strides, padding)
  padded = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  taps = _window_taps(padded, (kh, kw), strides, out_hw)
  patches = jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]
  out = jnp.dot(
      patches.reshape(-1, kh * kw * cin),
      rhs.reshape(kh * kw * cin, cout),
      precision=precision,
      preferred_element_type=preferred_element_type,
  )
  return out.reshape(n, *out_hw, cout)


def _takes_patches_path(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, groups) -> bool:
  if not _fast_cpu_path_enabled or lhs.ndim != 4 or groups != (1, 1):
    return False
  if any(d not in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation)):
    return False
  if isinstance(padding, str) and padding not in ('SAME', 'VALID'):
    return False
  if dimension_numbers != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
    return False
  small_map = lhs.shape[1] * lhs.shape[2] <= SMALL_MAP_POSITIONS
  wide = rhs.shape[2] * rhs.shape[3] >= MIN_CHANNEL_PRODUCT
  return small_map and wide and rhs.shape[0] * rhs.shape[1] > 1


def conv_general_dilated(
    lhs,  # Input, NHWC as flax passes it.
    rhs,  # Kernel, HWIO.
    window_strides,  # Strides over H and W.
    padding,  # 'SAME', 'VALID' or ((top, bottom), (left, right)).
    lhs_dilation=None,  # Input dilation; only 1 takes the CPU path.
    rhs_dilation=None,  # Kernel dilation; only 1 takes the CPU path.
    dimension_numbers=None,  # Layout; only NHWC/HWIO/NHWC takes the CPU path.
    feature_group_count=1,  # Grouped (e.g. depthwise) convolutions keep XLA's op.
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
  """`lax.conv_general_dilated`, computed as `patches_conv` on CPU for small input maps."""

  def xla_conv(lhs, rhs):
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )

  groups = (feature_group_count, batch_group_count)
  if not _takes_patches_path(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, groups):
    return xla_conv(lhs, rhs)

  def cpu_conv(lhs, rhs):
    return patches_conv(lhs, rhs, window_strides, padding, precision, preferred_element_type)

  return lax.platform_dependent(lhs, rhs, cpu=cpu_conv, default=xla_conv)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_by_taps(x, window, strides, padding):
  return _max_pool_by_taps_fwd(x, window, strides, padding)[0]


def _max_pool_by_taps_fwd(x, window, strides, padding):
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  out_hw = _output_hw(x.shape[1:3], window, strides, padding)
  pooled = functools.reduce(jnp.maximum, _window_taps(padded, window, strides, out_hw))
  return pooled, (padded, pooled)


def _max_pool_by_taps_bwd(window, strides, padding, residuals, grad_pooled):
  """Each output's gradient goes to the first input (row-major in the window) equal to the maximum.

  That is the element XLA's select-and-scatter and torch's max_pool2d pick.
  """
  padded, pooled = residuals
  (oh, ow), (sh, sw) = pooled.shape[1:3], strides
  zero = jnp.zeros((), grad_pooled.dtype)
  taken = jnp.zeros(pooled.shape, bool)
  grad_padded = jnp.zeros(padded.shape, grad_pooled.dtype)
  offsets = [(i, j) for i in range(window[0]) for j in range(window[1])]
  for (i, j), tap in zip(offsets, _window_taps(padded, window, strides, (oh, ow))):
    first_max = (tap == pooled) & ~taken
    taken = taken | first_max
    scatter = (  # lo, hi and interior padding that puts output (y, x) back at input (i + y*sh, j + x*sw)
        (0, 0, 0),
        (i, padded.shape[1] - i - (oh - 1) * sh - 1, sh - 1),
        (j, padded.shape[2] - j - (ow - 1) * sw - 1, sw - 1),
        (0, 0, 0),
    )
    grad_padded = grad_padded + lax.pad(jnp.where(first_max, grad_pooled, zero), zero, scatter)
  (top, bottom), (left, right) = padding
  return (grad_padded[:, top : padded.shape[1] - bottom, left : padded.shape[2] - right, :],)


_max_pool_by_taps.defvjp(_max_pool_by_taps_fwd, _max_pool_by_taps_bwd)


def max_pool(x, window_shape: Sequence[int], strides: Sequence[int], padding='VALID') -> jax.Array:
  """`nn.max_pool` over NHWC maps; on CPU a maximum over strided slices with a select-based gradient."""
  window, strides = tuple(window_shape), tuple(strides)
  if not _fast_cpu_path_enabled or x.ndim != 4:
    return nn.max_pool(x, window, strides=strides, padding=padding)
  explicit = _explicit_padding(padding, x.shape[1:3], window, strides)
  return lax.platform_dependent(
      x,
      cpu=lambda x: _max_pool_by_taps(x, window, strides, explicit),
      default=lambda x: nn.max_pool(x, window, strides=strides, padding=padding),
  )
