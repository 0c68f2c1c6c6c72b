"""ConvNeXt (torchvision layout) with per-stage skip control.

Block: 7x7 depthwise conv -> LayerNorm -> Linear 4x -> GELU -> Linear -> layer
scale (init 1e-6) -> stochastic depth -> + k * input, k being the stage's skip
setting (the official RoLSS code keeps or drops the `+ input` per stage; here
it may also be scaled or learnt, as for the other targets).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mi_jax.models import ops
from mi_jax.models import registry
from mi_jax.models import skip as skip_lib

trunc_normal = nn.initializers.truncated_normal(0.02)  # torchvision: trunc_normal_(std=0.02), zero bias


class Block(nn.Module):
  dim: int
  drop_path: float  # Stochastic-depth probability of this block.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, skip_scale, train: bool):
    y = ops.Conv(
        self.dim,
        (7, 7),
        padding=((3, 3), (3, 3)),
        feature_group_count=self.dim,
        kernel_init=trunc_normal,
        dtype=self.dtype,
        name='dwconv',
    )(x)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm')(y)
    y = nn.Dense(4 * self.dim, kernel_init=trunc_normal, dtype=self.dtype, name='pwconv1')(y)
    y = jax.nn.gelu(y, approximate=False)
    y = nn.Dense(self.dim, kernel_init=trunc_normal, dtype=self.dtype, name='pwconv2')(y)
    y = y * self.param('layer_scale', nn.initializers.constant(1e-6), (self.dim,), jnp.float32).astype(self.dtype)
    if train and self.drop_path > 0:  # 'row' mode: drop the whole residual branch per sample
      keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.drop_path, (x.shape[0], 1, 1, 1))
      y = y * keep / (1.0 - self.drop_path)
    return skip_lib.add_skip(y, lambda: x, skip_scale)


class ConvNeXt(nn.Module):
  depths: Sequence[int]  # Blocks per stage, (3, 3, 9, 3) for Tiny.
  dims: Sequence[int]  # Channels per stage, (96, 192, 384, 768) for Tiny.
  num_classes: int
  skip: Sequence[Any] = (1.0, 1.0, 1.0, 1.0)
  stochastic_depth: float = 0.1  # Largest drop-path probability (last block), linear in block index.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    skip_lib.check_count(self.skip, len(self.depths))
    layer_norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    x = jnp.asarray(x, self.dtype)
    x = ops.Conv(
        self.dims[0],
        (4, 4),
        strides=(4, 4),
        padding='VALID',
        kernel_init=trunc_normal,
        dtype=self.dtype,
        name='stem_conv',
    )(x)
    x = layer_norm('stem_norm')(x)
    total, block_id = sum(self.depths), 0
    for i, depth in enumerate(self.depths):
      skip_scale = skip_lib.stage_skip_scale(self, i + 1, self.skip[i], self.dtype)
      if i > 0:
        x = layer_norm(f'downsample{i}_norm')(x)
        x = ops.Conv(
            self.dims[i],
            (2, 2),
            strides=(2, 2),
            padding='VALID',
            kernel_init=trunc_normal,
            dtype=self.dtype,
            name=f'downsample{i}_conv',
        )(x)
      x = self.perturb(f'stage{i + 1}_input', x)
      for j in range(depth):
        drop = self.stochastic_depth * block_id / (total - 1.0)
        x = Block(self.dims[i], drop, self.dtype, name=f'stage{i + 1}_{j}')(x, skip_scale, train)
        block_id += 1
    x = jnp.mean(x, axis=(1, 2))
    x = layer_norm('head_norm')(x)
    return nn.Dense(self.num_classes, kernel_init=trunc_normal, dtype=self.dtype, name='head')(x)


CONVNEXT_CONFIGS = {  # depths, dims, stochastic depth (torchvision)
    'convnext_tiny': ((3, 3, 9, 3), (96, 192, 384, 768), 0.1),
    'convnext_small': ((3, 3, 27, 3), (96, 192, 384, 768), 0.4),
    'convnext_base': ((3, 3, 27, 3), (128, 256, 512, 1024), 0.5),
}


def _build(model_config, architecture, dtype, deploy):
  del deploy
  depths, dims, stochastic_depth = architecture
  if model_config.width:  # demos: stage widths width, 2*width, 4*width, 8*width
    dims = tuple(model_config.width * 2**i for i in range(4))
  return ConvNeXt(
      depths=depths,
      dims=dims,
      num_classes=model_config.num_classes,
      skip=tuple(model_config.skip),
      stochastic_depth=stochastic_depth,
      dtype=dtype,
  )


FAMILY = registry.Family(
    name='convnext', architectures=CONVNEXT_CONFIGS, build=_build, num_stages=lambda architecture: len(architecture[0])
)
