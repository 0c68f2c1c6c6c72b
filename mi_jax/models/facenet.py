"""FaceNet: facenet-pytorch's InceptionResnetV1 in Flax (PPA's KNN-distance embedder).

Parameter names mirror facenet-pytorch's state dict (`repeat_1.0.branch1.1.conv` ->
`repeat_1_0/branch1_1/conv`), so its VGGFace2 file (20180402-114759-vggface2.pt)
imports one to one (mi_jax.convert.torchvision, kind 'generic'). Inputs are 160x160
in [-1, 1]; the output is the L2-normalised 512-d embedding (classify=False), so
squared distances between embeddings lie in [0, 4].
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mi_jax.models import ops
from mi_jax.models.inception import BasicConv, max_pool_3x3


class Block35(nn.Module):
  """35x35 residual block (256 channels), residual scaled by `scale` before the sum."""

  scale: float
  conv: Any

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b0 = c(32, (1, 1), name='branch0')(x)
    b1 = c(32, (3, 3), padding=(1, 1), name='branch1_1')(c(32, (1, 1), name='branch1_0')(x))
    b2 = c(32, (1, 1), name='branch2_0')(x)
    b2 = c(32, (3, 3), padding=(1, 1), name='branch2_1')(b2)
    b2 = c(32, (3, 3), padding=(1, 1), name='branch2_2')(b2)
    up = ops.Conv(256, (1, 1), dtype=x.dtype, name='conv2d')(jnp.concatenate([b0, b1, b2], axis=-1))
    return nn.relu(up * self.scale + x)


class Block17(nn.Module):
  """17x17 residual block (896 channels)."""

  scale: float
  conv: Any

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b0 = c(128, (1, 1), name='branch0')(x)
    b1 = c(128, (1, 1), name='branch1_0')(x)
    b1 = c(128, (1, 7), padding=(0, 3), name='branch1_1')(b1)
    b1 = c(128, (7, 1), padding=(3, 0), name='branch1_2')(b1)
    up = ops.Conv(896, (1, 1), dtype=x.dtype, name='conv2d')(jnp.concatenate([b0, b1], axis=-1))
    return nn.relu(up * self.scale + x)


class Block8(nn.Module):
  """8x8 residual block (1792 channels); the last one has no ReLU."""

  scale: float
  conv: Any
  relu: bool = True

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b0 = c(192, (1, 1), name='branch0')(x)
    b1 = c(192, (1, 1), name='branch1_0')(x)
    b1 = c(192, (1, 3), padding=(0, 1), name='branch1_1')(b1)
    b1 = c(192, (3, 1), padding=(1, 0), name='branch1_2')(b1)
    up = ops.Conv(1792, (1, 1), dtype=x.dtype, name='conv2d')(jnp.concatenate([b0, b1], axis=-1))
    out = up * self.scale + x
    return nn.relu(out) if self.relu else out


class Mixed6a(nn.Module):
  """35x35 -> 17x17 reduction: 256 -> 384 + 256 + 256 = 896 channels."""

  conv: Any

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b1 = c(192, (1, 1), name='branch1_0')(x)
    b1 = c(192, (3, 3), padding=(1, 1), name='branch1_1')(b1)
    b1 = c(256, (3, 3), strides=2, name='branch1_2')(b1)
    return jnp.concatenate([c(384, (3, 3), strides=2, name='branch0')(x), b1, max_pool_3x3(x, 2)], axis=-1)


class Mixed7a(nn.Module):
  """17x17 -> 8x8 reduction: 896 -> 384 + 256 + 256 + 896 = 1792 channels."""

  conv: Any

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b0 = c(384, (3, 3), strides=2, name='branch0_1')(c(256, (1, 1), name='branch0_0')(x))
    b1 = c(256, (3, 3), strides=2, name='branch1_1')(c(256, (1, 1), name='branch1_0')(x))
    b2 = c(256, (1, 1), name='branch2_0')(x)
    b2 = c(256, (3, 3), padding=(1, 1), name='branch2_1')(b2)
    b2 = c(256, (3, 3), strides=2, name='branch2_2')(b2)
    return jnp.concatenate([b0, b1, b2, max_pool_3x3(x, 2)], axis=-1)


class InceptionResnetV1(nn.Module):
  """[N, 160, 160, 3] in [-1, 1] -> [N, 512] unit-norm embeddings."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = lambda *a, **k: BasicConv(*a, train=train, dtype=self.dtype, **k)
    x = jnp.asarray(x, self.dtype)
    x = conv(32, (3, 3), strides=2, name='conv2d_1a')(x)
    x = conv(32, (3, 3), name='conv2d_2a')(x)
    x = conv(64, (3, 3), padding=(1, 1), name='conv2d_2b')(x)
    x = max_pool_3x3(x, 2)
    x = conv(80, (1, 1), name='conv2d_3b')(x)
    x = conv(192, (3, 3), name='conv2d_4a')(x)
    x = conv(256, (3, 3), strides=2, name='conv2d_4b')(x)
    for i in range(5):
      x = Block35(0.17, conv, name=f'repeat_1_{i}')(x)
    x = Mixed6a(conv, name='mixed_6a')(x)
    for i in range(10):
      x = Block17(0.10, conv, name=f'repeat_2_{i}')(x)
    x = Mixed7a(conv, name='mixed_7a')(x)
    for i in range(5):
      x = Block8(0.20, conv, name=f'repeat_3_{i}')(x)
    x = Block8(1.0, conv, relu=False, name='block8')(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(512, use_bias=False, dtype=self.dtype, name='last_linear')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype, name='last_bn')(x)
    # F.normalize: x / max(|x|, 1e-12)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
