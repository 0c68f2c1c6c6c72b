"""The GANs of the low-resolution MI protocol (GMI, KEDMI, LOMMA): a DCGAN-style generator and two critics.

  Generator        z -> 4x4 -> stride-2 up-convolutions -> sigmoid image in [0, 1] (GMI and KEDMI share it).
  WGANCritic       GMI's WGAN-GP critic (`DGWGAN`): stride-2 convolutions with instance norm -> one score.
  MinibatchCritic  KEDMI's discriminator: the same trunk (instance norm from the first layer), minibatch
                   discrimination, and one logit per private class (its "real" score is their logsumexp).

Sizes follow the reference networks at 64x64 (`width` 64: 512 channels at 4x4); `resolution` 32 drops
one stage for the digits demo. Feature maps are flattened in torch's channel-major order so that
published weights import unchanged (mi_jax/convert/gan64.py). Torch layer defaults throughout:
BatchNorm eps 1e-5 and momentum 0.1, InstanceNorm eps 1e-5 with an affine transform, LeakyReLU 0.2.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mi_jax.models import layers
from mi_jax.models import ops

LEAKY_SLOPE = 0.2  # the critics' LeakyReLU


@dataclasses.dataclass(frozen=True)
class GanConfig:
  """The architecture of one low-resolution GAN (stored with its generator, mi_jax/gan64/checkpoint.py)."""

  resolution: int = 64  # image side: 64 (the protocol) or 32 (the digits demo)
  img_channels: int = 3  # 3 (CelebA, FFHQ) or 1 (digits)
  z_dim: int = 100  # latent size
  width: int = 64  # channels of the generator's last and the critics' first hidden layer
  num_classes: int = 1000  # MinibatchCritic's logits: the target's classes (KEDMI)
  mbd_kernels: int = 64  # MinibatchCritic: minibatch-discrimination kernels (B in Salimans et al.)
  mbd_kernel_dim: int = 50  # MinibatchCritic: the dimension each kernel compares in (C)

  @property
  def num_stages(self) -> int:
    """Resolution doublings between the 4x4 base and the image."""
    stages = int(math.log2(self.resolution)) - 2
    if 2 ** (stages + 2) != self.resolution or stages < 2:
      raise ValueError(f'GAN resolution {self.resolution}: expected a power of two >= 16')
    return stages

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> 'GanConfig':
    return cls(**d)


def _flatten_channel_major(x: jax.Array) -> jax.Array:
  """NHWC -> [N, C*H*W] in torch's NCHW order (the order the published linear weights expect)."""
  return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def _up_conv(features: int, use_bias: bool, name: str) -> nn.ConvTranspose:
  """torch ConvTranspose2d(k=5, stride=2, padding=2, output_padding=1): doubles the side.

  As a convolution of the 2x-dilated input: padding (k-1-p, k-1-p+output_padding) = (2, 3); the importer
  flips torch's kernel, since lax.conv_transpose does not (transpose_kernel=False)."""
  return nn.ConvTranspose(
      features, kernel_size=(5, 5), strides=(2, 2), padding=((2, 3), (2, 3)), use_bias=use_bias, name=name
  )


class Generator(nn.Module):
  """z [B, z_dim] -> images [B, res, res, C] in [0, 1]."""

  config: GanConfig

  @nn.compact
  def __call__(
      self,
      z: jax.Array,  # latents [B, z_dim]; the attacks clip them to [-1, 1]
      train: bool = False,  # BatchNorm on batch statistics (GAN training) or on running ones (attacks)
  ) -> jax.Array:
    c = self.config
    assert z.shape[1:] == (c.z_dim,), z.shape
    batch_norm = layers.batch_norm(train, jnp.float32)
    base = c.width * 2 ** (c.num_stages - 1)  # 512 channels at 4x4 for 64x64
    x = nn.Dense(base * 16, use_bias=False, name='fc')(z)
    x = nn.relu(batch_norm(name='fc_bn')(x))  # BatchNorm1d over the 8192 features, before the reshape
    x = x.reshape(-1, base, 4, 4).transpose(0, 2, 3, 1)  # torch's view(B, -1, 4, 4) is channel-major
    for i in range(c.num_stages - 1):
      x = _up_conv(base // 2 ** (i + 1), use_bias=False, name=f'up{i}')(x)
      x = nn.relu(batch_norm(name=f'up{i}_bn')(x))
    x = _up_conv(c.img_channels, use_bias=True, name='to_image')(x)
    assert x.shape[1:] == (c.resolution, c.resolution, c.img_channels), x.shape
    return nn.sigmoid(x)


def _down_conv(features: int, kernel: int, name: str) -> nn.Conv:
  """torch Conv2d(k, stride=2, padding=k // 2): halves the side."""
  pad = kernel // 2
  return ops.Conv(features, kernel_size=(kernel, kernel), strides=(2, 2), padding=((pad, pad), (pad, pad)), name=name)


def _instance_norm(name: str) -> nn.InstanceNorm:
  return nn.InstanceNorm(epsilon=layers.BN_EPSILON, name=name)  # torch InstanceNorm2d(affine=True)


class WGANCritic(nn.Module):
  """GMI's critic: images [B, res, res, C] in [0, 1] -> unbounded scores [B] (higher: more real)."""

  config: GanConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    c = self.config
    assert images.shape[1:] == (c.resolution, c.resolution, c.img_channels), images.shape
    x = nn.leaky_relu(_down_conv(c.width, 5, 'conv0')(images), LEAKY_SLOPE)  # the first layer has no norm
    for i in range(1, c.num_stages):
      x = _down_conv(c.width * 2**i, 5, f'conv{i}')(x)
      x = nn.leaky_relu(_instance_norm(f'norm{i}')(x), LEAKY_SLOPE)
    assert x.shape[1:3] == (4, 4), x.shape
    x = ops.Conv(1, kernel_size=(4, 4), padding='VALID', name='score')(x)
    return x.reshape(-1)


class MinibatchDiscrimination(nn.Module):
  """Salimans et al. (2016): each sample's closeness to the rest of the batch, appended to its features.

  o[i, b] = sum_j exp(-|M_i,b - M_j,b|_1) - 1 with M = x T (the -1 removes i's own term). The output
  depends on the whole batch, also when an attack optimises through it.
  """

  kernels: int  # B
  kernel_dim: int  # C

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, features = x.shape
    T = self.param('T', nn.initializers.normal(1.0), (features, self.kernels, self.kernel_dim))
    M = (x @ T.reshape(features, -1)).reshape(n, self.kernels, self.kernel_dim)
    l1 = jnp.abs(M[:, None] - M[None, :]).sum(-1)  # [N, N, B]
    closeness = jnp.exp(-l1).sum(1) - 1.0  # [N, B]
    return jnp.concatenate([x, closeness], axis=1)


class MinibatchCritic(nn.Module):
  """KEDMI's discriminator: images in [0, 1] -> (features [B, F] before minibatch discrimination, logits [B, K])."""

  config: GanConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    c = self.config
    assert images.shape[1:] == (c.resolution, c.resolution, c.img_channels), images.shape
    x = images
    channels = [c.width * 2**i for i in range(c.num_stages - 1)]
    kernels = [5] * (c.num_stages - 1) + [3]  # the last down-sampling is a 3x3 that keeps the channels
    for i, (features, kernel) in enumerate(zip(channels + channels[-1:], kernels)):
      x = _down_conv(features, kernel, f'conv{i}')(x)
      x = nn.leaky_relu(_instance_norm(f'norm{i}')(x), LEAKY_SLOPE)
    assert x.shape[1:3] == (4, 4), x.shape
    features = _flatten_channel_major(x)
    mixed = MinibatchDiscrimination(c.mbd_kernels, c.mbd_kernel_dim, name='mbd')(features)
    return features, nn.Dense(c.num_classes, name='fc')(mixed)
