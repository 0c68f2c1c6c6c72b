"""PLG-MI's conditional GAN (Yuan et al., AAAI 2023; LetheSec/PLG-MI-Attack models/): an SNGAN-projection pair.

  ConditionalGenerator  (z, y) -> Linear -> 4x4 -> residual up-blocks with class-conditional BatchNorm
                        (BatchNorm without affine, then gamma[y] x + beta[y]) -> BatchNorm, ReLU, 1x1 conv,
                        tanh (models/generators/resnet64.py, resblocks.py, links/conditional_batchnorm.py).
  ProjectionCritic      images -> residual down-blocks, every weight spectrally normalised -> ReLU, sum over
                        space -> Linear(.., 1) + <embed(y), h> (Miyato & Koyama's projection;
                        models/discriminators/snresnet64.py, resblocks.py).

Widths follow the reference at 64x64 (`width` 64: the generator starts at 16 x 64 channels and halves per
block; the critic doubles from 64 to 1024 at 2x2); `resolution` 32 drops one block on each side (the digits
demo). Spectral normalisation is flax's SpectralNorm: one power iteration per call with update_stats, u in
the 'batch_stats' collection (torch.nn.utils.spectral_norm's algorithm; the reference's critic is never in
eval mode, so every call iterates). Images are [0, 1]-valued as the reference's data (the generator's tanh
range is wider: the critic teaches it the data's range).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mi_jax.gan64 import networks
from mi_jax.models import layers
from mi_jax.models import ops

_UNIFORM_FAN_AVG = nn.initializers.xavier_uniform()  # the critic's init (xavier_uniform, gain 1)
_UNIFORM_FAN_AVG_RELU = nn.initializers.variance_scaling(2.0, 'fan_avg', 'uniform')  # gain sqrt(2)
# The generator keeps torch's default layer init (its _initialize methods are never called): U(+-1/sqrt(fan_in)).
_TORCH_DEFAULT = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def upsample(x: jax.Array) -> jax.Array:
  """2x bilinear (torch's F.interpolate(mode='bilinear'), half-pixel centres)."""
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, 2 * h, 2 * w, c), 'bilinear', antialias=False)


def downsample(x: jax.Array) -> jax.Array:
  """2x2 average pooling."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ConditionalBatchNorm(nn.Module):
  """BatchNorm without its affine transform, then a per-class scale and shift (gamma[y] init 1, beta[y] init 0)."""

  num_classes: int
  train: bool

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    features = x.shape[-1]
    x = layers.batch_norm(self.train, jnp.float32)(use_scale=False, use_bias=False, name='bn')(x)
    gamma = nn.Embed(self.num_classes, features, embedding_init=nn.initializers.ones, name='gamma')(y)
    beta = nn.Embed(self.num_classes, features, embedding_init=nn.initializers.zeros, name='beta')(y)
    return gamma[:, None, None, :] * x + beta[:, None, None, :]


class GeneratorBlock(nn.Module):
  """CBN, ReLU, up, 3x3 conv, CBN, ReLU, 3x3 conv; plus up and a 1x1 conv of the input."""

  features: int
  num_classes: int
  train: bool

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    h = nn.relu(ConditionalBatchNorm(self.num_classes, self.train, name='cbn1')(x, y))
    conv = lambda kernel, name: ops.Conv(
        self.features, (kernel, kernel), padding=kernel // 2, kernel_init=_TORCH_DEFAULT, name=name
    )
    h = conv(3, 'conv1')(upsample(h))
    h = nn.relu(ConditionalBatchNorm(self.num_classes, self.train, name='cbn2')(h, y))
    h = conv(3, 'conv2')(h)
    return conv(1, 'shortcut')(upsample(x)) + h


class ConditionalGenerator(nn.Module):
  """(z [B, z_dim], y [B]) -> images [B, res, res, C] in (-1, 1) (tanh)."""

  config: networks.GanConfig

  @nn.compact
  def __call__(
      self,
      z: jax.Array,  # latents [B, z_dim] ~ N(0, I)
      y: jax.Array,  # class labels [B] (int)
      train: bool = False,  # BatchNorm on batch statistics (GAN training) or on running ones (the attack)
  ) -> jax.Array:
    c = self.config
    assert z.shape[1:] == (c.z_dim,) and y.shape == z.shape[:1], (z.shape, y.shape)
    base = c.width * 2**c.num_stages  # 1024 channels at 4x4 for 64x64
    x = (
        nn.Dense(base * 16, kernel_init=_TORCH_DEFAULT, name='fc')(z).reshape(-1, base, 4, 4).transpose(0, 2, 3, 1)
    )  # torch's view is NCHW
    for i in range(c.num_stages):
      x = GeneratorBlock(base // 2 ** (i + 1), c.num_classes, train, name=f'block{i}')(x, y)
    x = nn.relu(layers.batch_norm(train, jnp.float32)(name='bn')(x))
    x = ops.Conv(c.img_channels, (1, 1), kernel_init=_TORCH_DEFAULT, name='to_image')(x)
    assert x.shape[1:] == (c.resolution, c.resolution, c.img_channels), x.shape
    return jnp.tanh(x)


def _sn_conv(features: int, kernel: int, init, name: str):
  conv = ops.Conv(features, (kernel, kernel), padding=kernel // 2, kernel_init=init, name=name)
  return nn.SpectralNorm(conv, name=f'{name}_sn')


class CriticBlock(nn.Module):
  """ReLU, 3x3 conv (keeps the width: the reference's hidden width is the input's), ReLU, 3x3 conv, pool;
  plus a 1x1 conv, then pool, of the input. `first`: no leading ReLU, hidden width = output width, and the
  shortcut pools before its conv (the reference's OptimizedBlock)."""

  features: int
  first: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool) -> jax.Array:
    hidden = self.features if self.first else x.shape[-1]
    h = x if self.first else nn.relu(x)
    h = _sn_conv(hidden, 3, _UNIFORM_FAN_AVG_RELU, 'conv1')(h, update_stats=update_stats)
    h = _sn_conv(self.features, 3, _UNIFORM_FAN_AVG_RELU, 'conv2')(nn.relu(h), update_stats=update_stats)
    shortcut = _sn_conv(self.features, 1, _UNIFORM_FAN_AVG, 'shortcut')
    if self.first:
      return downsample(h) + shortcut(downsample(x), update_stats=update_stats)
    return downsample(h) + downsample(shortcut(x, update_stats=update_stats))


class ProjectionCritic(nn.Module):
  """(images [B, res, res, C], y [B]) -> scores [B]: a linear score plus the projection <embed(y), h>."""

  config: networks.GanConfig

  @nn.compact
  def __call__(self, images: jax.Array, y: jax.Array, update_stats: bool = True) -> jax.Array:
    c = self.config
    assert images.shape[1:] == (c.resolution, c.resolution, c.img_channels), images.shape
    h = CriticBlock(c.width, first=True, name='block0')(images, update_stats)
    for i in range(c.num_stages):
      h = CriticBlock(c.width * 2 ** (i + 1), name=f'block{i + 1}')(h, update_stats)
    assert h.shape[1:3] == (2, 2), h.shape
    h = jnp.sum(nn.relu(h), axis=(1, 2))
    score = nn.SpectralNorm(nn.Dense(1, kernel_init=_UNIFORM_FAN_AVG, name='fc'), name='fc_sn')(
        h, update_stats=update_stats
    )[:, 0]
    embed = nn.Embed(c.num_classes, h.shape[-1], embedding_init=_UNIFORM_FAN_AVG, name='embed')
    class_embedding = nn.SpectralNorm(embed, name='embed_sn')(y, update_stats=update_stats)
    return score + jnp.sum(class_embedding * h, axis=1)
