"""MobileNetV2 (torchvision layout) with skip control per inverted-residual group.

The seven groups of the (t, c, n, s) table are the stages, as in the official
RoLSS code: group i's factor k multiplies the identity of every block of the
group that has one (stride 1, same width): out = k * x + block(x). Group 7
(160 -> 320 channels, one block) has no residual, so its setting changes
nothing -- the released `skip: [1,1,1,1,1,1,0]` (Pillowkoh/RoLSS, configs/training/targets/FaceScrub/
mobilenetv2/skip.yaml) is a no-op;
`build_model` refuses a non-1 setting there rather than silently ignore it.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mi_jax.models import layers
from mi_jax.models import ops
from mi_jax.models import registry
from mi_jax.models import skip as skip_lib

# (expansion t, channels c, blocks n, first stride s) -- torchvision's inverted_residual_setting.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision _make_divisible: round to a multiple of divisor, never below 90% of value."""
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * value else new


def groups_with_residual(width_mult: float = 1.0) -> tuple[bool, ...]:
  """Whether each group has at least one block with an identity shortcut."""
  channels, out = make_divisible(32 * width_mult), []
  for _, c, n, s in INVERTED_RESIDUAL_SETTING:
    c = make_divisible(c * width_mult)
    out.append(any((s if j == 0 else 1) == 1 and (channels if j == 0 else c) == c for j in range(n)))
    channels = c
  return tuple(out)


def relu6(x):
  return jnp.clip(x, 0.0, 6.0)


class ConvBN(nn.Module):
  """torchvision's Conv2dNormActivation: conv (no bias, 'same' padding) -> BN -> activation."""

  features: int  # Output channels.
  kernel: int = 1  # Square kernel size; padded by (kernel - 1) // 2 on each side, as torchvision.
  strides: int = 1
  groups: int = 1  # Channel groups (= channels for a depthwise conv).
  act: bool = True  # The activation after BN (False for the linear projection).
  norm: Any = nn.BatchNorm  # layers.batch_norm(train, dtype).
  dtype: Any = jnp.float32  # Compute dtype.
  activation: Callable = relu6  # MobileNetV2's ReLU6; EfficientNet's SiLU.

  @nn.compact
  def __call__(self, x):
    pad = (self.kernel - 1) // 2
    x = ops.Conv(
        self.features,
        (self.kernel, self.kernel),
        strides=(self.strides, self.strides),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=self.groups,
        use_bias=False,
        kernel_init=conv_kernel_init,
        dtype=self.dtype,
        name='conv',
    )(x)
    x = self.norm(name='bn')(x)
    return self.activation(x) if self.act else x


class InvertedResidual(nn.Module):
  features: int
  strides: int
  expand_ratio: int
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, skip_scale):
    hidden = int(round(x.shape[-1] * self.expand_ratio))
    y = x
    if self.expand_ratio != 1:
      y = ConvBN(hidden, 1, norm=self.norm, dtype=self.dtype, name='expand')(y)
    y = ConvBN(hidden, 3, self.strides, groups=hidden, norm=self.norm, dtype=self.dtype, name='depthwise')(y)
    y = ConvBN(self.features, 1, act=False, norm=self.norm, dtype=self.dtype, name='project')(y)
    if self.strides == 1 and x.shape[-1] == self.features:  # torchvision use_res_connect
      return skip_lib.add_skip(y, lambda: x, skip_scale)
    return y


class MobileNetV2(nn.Module):
  num_classes: int
  skip: Sequence[Any] = (1.0,) * 7  # Per inverted-residual group; see the module docstring.
  block_setting: Sequence[Sequence[int]] = INVERTED_RESIDUAL_SETTING  # (t, c, n, s) per group.
  width_mult: float = 1.0
  dropout: float = 0.2  # Before the classifier, as torchvision.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    skip_lib.check_count(self.skip, len(self.block_setting), 'groups')
    norm = layers.batch_norm(train, self.dtype)
    x = jnp.asarray(x, self.dtype)
    x = ConvBN(make_divisible(32 * self.width_mult), 3, 2, norm=norm, dtype=self.dtype, name='stem')(x)
    for i, (t, c, n, s) in enumerate(self.block_setting):
      skip_scale = skip_lib.stage_skip_scale(self, i + 1, self.skip[i], self.dtype)
      x = self.perturb(f'stage{i + 1}_input', x)
      for j in range(n):
        x = InvertedResidual(
            make_divisible(c * self.width_mult), s if j == 0 else 1, t, norm, self.dtype, name=f'block{i + 1}_{j}'
        )(x, skip_scale)
    x = ConvBN(make_divisible(1280 * max(1.0, self.width_mult)), 1, norm=norm, dtype=self.dtype, name='head')(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype, name='classifier')(x)


def _build(model_config, architecture, dtype, deploy):
  del architecture, deploy
  skip = tuple(model_config.skip)
  width_mult = model_config.width / 32 if model_config.width else 1.0  # width = stem channels
  for i, has_residual in enumerate(groups_with_residual(width_mult)):
    if not has_residual and skip[i] != 1:
      raise ValueError(
          f'config.model.skip[{i}]={skip[i]!r}: MobileNetV2 group {i + 1} has no residual '
          'connection to remove or scale'
      )
  return MobileNetV2(num_classes=model_config.num_classes, skip=skip, width_mult=width_mult, dtype=dtype)


FAMILY = registry.Family(
    name='mobilenet',
    architectures={'mobilenet_v2': INVERTED_RESIDUAL_SETTING},
    build=_build,
    num_stages=len,
    residual_stages=lambda model_config, _: groups_with_residual(
        model_config.width / 32 if model_config.width else 1.0
    ),
)
