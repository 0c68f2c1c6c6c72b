"""Inception-v3 in Flax: torchvision's layout (the evaluation model) and pytorch-fid's FID variant.

Parameter names mirror the torch state-dict keys (`Mixed_5b/branch1x1/conv`,
`.../bn`, `AuxLogits/conv0/conv`), so torchvision and pytorch-fid files map one to
one (mi_jax.convert.torchvision, kind 'generic').

  Inception3(num_classes, transform_input=True, aux_logits=True)
                                   torchvision's inception_v3 as PPA trains its evaluation
                                   model (ImageNet weights force transform_input=True): inputs
                                   in [-1, 1] are re-normalised per channel to ImageNet's
                                   statistics, and in training the auxiliary head's logits
                                   come second, (logits, aux_logits), for the auxiliary loss
                                   (weighted by config.train.aux_loss_weight).
  Inception3(..., fid=True)        pytorch-fid's FID network: average pools that do not count
                                   padding in Mixed_5*/6b-e/7b and a max pool in Mixed_7c.
  model.apply(v, x, features_only=True)  the 2048-d pooled features (FID's pool3, PPA's
                                   evaluation-feature KNN distance).

Evaluation uses the main logits only, as torchvision's eval mode does. The RoLSS code
rebuilds its evaluation model with ImageNet weights before loading the file, so it
evaluates with transform_input=True as trained; upstream PPA rebuilds it without them and
evaluates with transform_input=False (Struppek et al., Plug-and-Play-Attacks,
utils/attack_config_parser.py create_evaluation_model). `transform_input` is a field of the
model config, so both can be had.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mi_jax.models import ops
from mi_jax.models import registry

BN_EPSILON = 1e-3  # torchvision BasicConv2d

# torchvision's transform_input: inputs normalised with mean = std = 0.5 are mapped to ImageNet's statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def transform_input(x):
  """x_c * std_c / 0.5 + (mean_c - 0.5) / 0.5 per RGB channel (torchvision Inception3._transform_input)."""
  std = jnp.asarray(IMAGENET_STD, x.dtype) / 0.5
  mean = (jnp.asarray(IMAGENET_MEAN, x.dtype) - 0.5) / 0.5
  return x * std + mean


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU, torch padding."""

  features: int  # Output channels.
  kernel: Sequence[int]  # (kh, kw).
  strides: int = 1
  padding: Sequence[int] = (0, 0)  # (ph, pw), torch style.
  train: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = ops.Conv(
        self.features,
        tuple(self.kernel),
        strides=(self.strides, self.strides),
        padding=((ph, ph), (pw, pw)),
        use_bias=False,
        dtype=self.dtype,
        name='conv',
    )(x)
    x = nn.BatchNorm(use_running_average=not self.train, momentum=0.9, epsilon=BN_EPSILON, dtype=self.dtype, name='bn')(
        x
    )
    return nn.relu(x)


def _avg_pool_3x3(x, count_include_pad: bool):
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=count_include_pad)


def max_pool_3x3(x, stride: int, pad: int = 0):
  return ops.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
  pool_features: int
  fid: bool = False
  conv: Any = BasicConv

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b1 = c(64, (1, 1), name='branch1x1')(x)
    b5 = c(64, (5, 5), padding=(2, 2), name='branch5x5_2')(c(48, (1, 1), name='branch5x5_1')(x))
    b3 = c(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = c(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = c(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = c(self.pool_features, (1, 1), name='branch_pool')(_avg_pool_3x3(x, count_include_pad=not self.fid))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  conv: Any = BasicConv

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b3 = c(384, (3, 3), strides=2, name='branch3x3')(x)
    bd = c(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = c(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = c(96, (3, 3), strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  fid: bool = False
  conv: Any = BasicConv

  @nn.compact
  def __call__(self, x):
    c, c7 = self.conv, self.channels_7x7
    b1 = c(192, (1, 1), name='branch1x1')(x)
    b7 = c(c7, (1, 1), name='branch7x7_1')(x)
    b7 = c(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = c(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = c(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = c(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = c(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = c(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = c(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = c(192, (1, 1), name='branch_pool')(_avg_pool_3x3(x, count_include_pad=not self.fid))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  conv: Any = BasicConv

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b3 = c(320, (3, 3), strides=2, name='branch3x3_2')(c(192, (1, 1), name='branch3x3_1')(x))
    b7 = c(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = c(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = c(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = c(192, (3, 3), strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
  pool: str = 'avg'  # 'avg' (torchvision), 'avg_exclude_pad' (FID Mixed_7b) or 'max' (FID Mixed_7c).
  conv: Any = BasicConv

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b1 = c(320, (1, 1), name='branch1x1')(x)
    b3 = c(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate(
        [
            c(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
            c(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3),
        ],
        axis=-1,
    )
    bd = c(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = c(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate(
        [
            c(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
            c(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd),
        ],
        axis=-1,
    )
    if self.pool == 'max':
      pooled = max_pool_3x3(x, 1, 1)
    else:
      pooled = _avg_pool_3x3(x, count_include_pad=self.pool == 'avg')
    bp = c(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
  """torchvision's auxiliary classifier on the 768-channel Mixed_6e output (training only)."""

  num_classes: int
  conv: Any = BasicConv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if x.shape[1] < 17 or x.shape[2] < 17:  # its 5x5 conv needs a 5x5 map after the 5x5/3 pool
      raise ValueError(
          f'the auxiliary head needs a Mixed_6e output of at least 17x17 (299px inputs), '
          f'got {x.shape[1]}x{x.shape[2]}'
      )
    x = nn.avg_pool(x, (5, 5), strides=(3, 3))
    x = self.conv(128, (1, 1), name='conv0')(x)
    x = self.conv(768, (5, 5), name='conv1')(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(x)


class Inception3(nn.Module):
  """Inception-v3; inputs NHWC in [-1, 1], at least 75x75 (299x299 in the paper)."""

  num_classes: int  # 1008 for the FID network's (unused) head.
  fid: bool = False  # pytorch-fid's FID variant of the pools.
  transform_input: bool = False  # torchvision's re-normalisation of [-1, 1] inputs to ImageNet statistics.
  aux_logits: bool = False  # The auxiliary head (its logits are returned in training only).
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False):
    """[N, H, W, 3] -> logits, or with `features_only` the 2048-d average-pooled Mixed_7c output.

    With `aux_logits` and `train`: (logits, auxiliary logits).
    """
    if x.shape[1] < 75 or x.shape[2] < 75:
      raise ValueError(f'Inception-v3 needs inputs of at least 75x75, got {x.shape[1]}x{x.shape[2]}')
    conv = lambda *a, **k: BasicConv(*a, train=train, dtype=self.dtype, **k)
    x = jnp.asarray(x, self.dtype)
    if self.transform_input:
      x = transform_input(x)
    x = conv(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x)
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = max_pool_3x3(x, 2)
    x = conv(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = max_pool_3x3(x, 2)
    x = InceptionA(32, self.fid, conv, name='Mixed_5b')(x)
    x = InceptionA(64, self.fid, conv, name='Mixed_5c')(x)
    x = InceptionA(64, self.fid, conv, name='Mixed_5d')(x)
    x = InceptionB(conv, name='Mixed_6a')(x)
    x = InceptionC(128, self.fid, conv, name='Mixed_6b')(x)
    x = InceptionC(160, self.fid, conv, name='Mixed_6c')(x)
    x = InceptionC(160, self.fid, conv, name='Mixed_6d')(x)
    x = InceptionC(192, self.fid, conv, name='Mixed_6e')(x)
    aux = None
    if self.aux_logits and (train or self.is_initializing()):  # the head owns params whether or not it runs
      aux = InceptionAux(self.num_classes, conv, self.dtype, name='AuxLogits')(x)
    x = InceptionD(conv, name='Mixed_7a')(x)
    x = InceptionE('avg_exclude_pad' if self.fid else 'avg', conv, name='Mixed_7b')(x)
    x = InceptionE('max' if self.fid else 'avg', conv, name='Mixed_7c')(x)
    x = jnp.mean(x, axis=(1, 2))
    if features_only:
      return x
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(x)
    return (logits, aux) if self.aux_logits and train else logits


def _build(model_config, architecture, dtype, deploy):
  del architecture, deploy
  return Inception3(
      num_classes=model_config.num_classes,
      transform_input=model_config.get('transform_input', False),
      aux_logits=model_config.get('aux_logits', False),
      dtype=dtype,
  )


# The evaluation model: no skip control; torchvision's module names (the generic importer).
FAMILY = registry.Family(
    name='inception',
    architectures={'inception_v3': None},
    build=_build,
    num_stages=lambda architecture: 0,
    torch_layout='generic',
    options=(('transform_input', False), ('aux_logits', False)),
)
