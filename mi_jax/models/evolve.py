"""The classifiers of the low-resolution MI protocol (GMI, KEDMI, LOMMA): VGG16-BN at 64 px and the
face.evoLVe IR backbones (IR-152 and IR-50 at 64 px, IR-50 at 112 px for the evaluation model).

  vgg16_64    torchvision's vgg16_bn features (13 3x3 convs with BN, five max-pools: 64 -> 2x2x512),
              flattened (2048), BatchNorm1d without shift, a linear head (the reference `VGG16`).
  ir152_64    IR-152 body, then BN2d, Dropout, Linear(512*4*4 -> 512), BN1d, a linear head (`IR152`).
  facenet64   the same on IR-50 (`FaceNet64`).
  facenet112  IR-50 at 112 px with the Linear(512*7*7 -> 512) output layer inside the backbone: the
              protocol's evaluation model (`FaceNet`).

An IR unit is BN -> 3x3 conv -> PReLU -> 3x3 conv (stride) -> BN, added to a shortcut: a strided 1x1-pool
(no parameters) or, where the width changes, a strided 1x1 conv with BN; no activation after the sum.
Skip control as in our ResNets: every stage's setting multiplies the shortcuts of all of its units
(0 removes them, the projection of the first unit included). VGG16 has no skips (`model.skip = ()`).

`model.unit_range_input=True` feeds the network (x + 1) / 2 of our [-1, 1] images: the reference
trains on ToTensor's [0, 1] without normalisation, so its published weights need it.

Module names mirror the reference state-dict keys (`feature_3`, `feature/body_11/shortcut_layer_0`,
`output_layer_3`, `fc_layer`), so the published checkpoints import by name (convert/torchvision.py,
layout 'typed'). Flattening is channel-major as in torch.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mi_jax.models import layers
from mi_jax.models import ops
from mi_jax.models import registry
from mi_jax.models import skip as skip_lib

VGG16_CHANNELS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # per max-pool block
IR_UNITS = {50: (3, 4, 14, 3), 152: (3, 8, 36, 3)}  # units per stage (get_blocks)
IR_DEPTHS = (64, 128, 256, 512)
DROPOUT = 0.5  # nn.Dropout() of the reference output layers


def _flatten_channel_major(x):
  return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def _conv(features: int, kernel: int, strides: int, use_bias: bool, dtype, name: str) -> nn.Conv:
  pad = kernel // 2
  return ops.Conv(
      features,
      (kernel, kernel),
      strides=(strides, strides),
      padding=((pad, pad), (pad, pad)),
      use_bias=use_bias,
      kernel_init=nn.initializers.xavier_uniform(),  # the reference initialises convs and linears so
      dtype=dtype,
      name=name,
  )


class PReLU(nn.Module):
  """torch PReLU(num_parameters=C): one slope per channel, 0.25 at the start."""

  @nn.compact
  def __call__(self, x):
    alpha = self.param('alpha', nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)


def _input(x, unit_range: bool, dtype):
  """Our [-1, 1] images; (x + 1) / 2 for weights trained on the reference's [0, 1] (ToTensor only)."""
  x = jnp.asarray(x, dtype)
  return (x + 1.0) / 2.0 if unit_range else x


class VGG16(nn.Module):
  num_classes: int
  unit_range_input: bool = False  # the published weights expect [0, 1]: see _input
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = layers.batch_norm(train, self.dtype)
    x = _input(x, self.unit_range_input, self.dtype)
    index = 0  # position in torchvision's `features` Sequential: conv, BN, ReLU per conv, a pool per block
    for stage, channels in enumerate(VGG16_CHANNELS):
      x = self.perturb(f'stage{stage + 1}_input', x)
      for c in channels:
        x = _conv(c, 3, 1, True, self.dtype, f'feature_{index}')(x)
        x = nn.relu(norm(name=f'feature_{index + 1}')(x))
        index += 3
      x = ops.max_pool(x, (2, 2), strides=(2, 2))
      index += 1
      if stage < 4:
        layers.sow_hidden(self, x)  # BiDO's VGG16 features: the first four blocks' outputs, then the final one
    assert x.shape[1:3] == (2, 2), f'vgg16_64 takes 64x64 images (got a {x.shape[1]}x{x.shape[2]} final map)'
    x = _flatten_channel_major(x)
    x = norm(use_bias=False, name='bn')(x)  # the reference freezes this BN's shift at 0
    layers.sow_hidden(self, x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='fc_layer')(x)


class IRUnit(nn.Module):
  """bottleneck_IR: res(x) + k * shortcut(x)."""

  depth: int
  strides: int
  norm: Any
  dtype: Any

  @nn.compact
  def __call__(self, x, skip_scale):
    in_channels = x.shape[-1]

    def shortcut():
      if in_channels == self.depth:  # MaxPool2d(1, stride): a strided subsampling
        return x[:, :: self.strides, :: self.strides]
      y = _conv(self.depth, 1, self.strides, False, self.dtype, 'shortcut_layer_0')(x)
      return self.norm(name='shortcut_layer_1')(y)

    removed = isinstance(skip_scale, float) and skip_scale == 0.0
    if removed and in_channels != self.depth and self.is_initializing():
      shortcut()  # a removed projection still owns its parameters, so weights move between skip variants
    r = self.norm(name='res_layer_0')(x)
    r = _conv(self.depth, 3, 1, False, self.dtype, 'res_layer_1')(r)
    r = PReLU(name='res_layer_2')(r)
    r = _conv(self.depth, 3, self.strides, False, self.dtype, 'res_layer_3')(r)
    r = self.norm(name='res_layer_4')(r)
    return skip_lib.add_skip(r, shortcut, skip_scale)


class IRBackbone(nn.Module):
  """face.evoLVe Backbone64 (no output layer) or Backbone112 (with it)."""

  units: Sequence[int]
  skip: Sequence[Any]
  with_output_layer: bool  # Backbone112: BN2d, Dropout, Linear(512*7*7 -> 512), BN1d inside
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    skip_lib.check_count(self.skip, len(self.units))
    norm = layers.batch_norm(train, self.dtype)
    x = _conv(64, 3, 1, False, self.dtype, 'input_layer_0')(jnp.asarray(x, self.dtype))
    x = PReLU(name='input_layer_2')(norm(name='input_layer_1')(x))
    layers.sow_hidden(self, x)
    index = 0
    for stage, (count, depth) in enumerate(zip(self.units, IR_DEPTHS)):
      skip_scale = skip_lib.stage_skip_scale(self, stage + 1, self.skip[stage], self.dtype)
      x = self.perturb(f'stage{stage + 1}_input', x)
      for j in range(count):
        x = IRUnit(depth, 2 if j == 0 else 1, norm, self.dtype, name=f'body_{index}')(x, skip_scale)
        index += 1
      layers.sow_hidden(self, x)
    if self.with_output_layer:
      x = _output_layer(self, x, norm, train, self.dtype)
    return x


def _output_layer(module: nn.Module, x, norm, train: bool, dtype):
  """BN2d -> Dropout -> channel-major Flatten -> Linear(-> 512) -> BN1d (`output_layer` 0, 1, 2, 3, 4)."""
  x = norm(name='output_layer_0')(x)
  x = nn.Dropout(DROPOUT, deterministic=not train)(x)
  x = nn.Dense(512, kernel_init=nn.initializers.xavier_uniform(), dtype=dtype, name='output_layer_3')(
      _flatten_channel_major(x)
  )
  return norm(name='output_layer_4')(x)


class IRClassifier(nn.Module):
  """An IR backbone and a linear head over its 512-d feature (the protocol's IR152, FaceNet64 and FaceNet)."""

  units: Sequence[int]
  num_classes: int
  input_size: int  # 64 (output layer outside the backbone) or 112 (inside it)
  skip: Sequence[Any] = (1.0, 1.0, 1.0, 1.0)
  unit_range_input: bool = False  # the published weights expect [0, 1]: see _input
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.shape[1:3] != (self.input_size, self.input_size):
      raise ValueError(f'this IR network takes {self.input_size}x{self.input_size} images, got {x.shape[1:3]}')
    x = _input(x, self.unit_range_input, self.dtype)
    inside = self.input_size == 112
    x = IRBackbone(self.units, tuple(self.skip), inside, self.dtype, name='feature')(x, train)
    if not inside:
      x = _output_layer(self, x, layers.batch_norm(train, self.dtype), train, self.dtype)
    layers.sow_hidden(self, x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.xavier_uniform(), dtype=self.dtype, name='fc_layer')(
        x
    )


def _build(model_config, architecture, dtype, deploy):
  del deploy
  kind, depth, size = architecture
  unit_range = model_config.get('unit_range_input', False)
  if kind == 'vgg':
    return VGG16(num_classes=model_config.num_classes, unit_range_input=unit_range, dtype=dtype)
  return IRClassifier(IR_UNITS[depth], model_config.num_classes, size, tuple(model_config.skip), unit_range, dtype)


FAMILY = registry.Family(
    name='evolve',
    architectures={
        'vgg16_64': ('vgg', 16, 64),
        'ir152_64': ('ir', 152, 64),
        'facenet64': ('ir', 50, 64),
        'facenet112': ('ir', 50, 112),
    },
    build=_build,
    num_stages=lambda architecture: 0 if architecture[0] == 'vgg' else len(IR_DEPTHS),  # VGG16 has no skips
    records_hidden=True,
    torch_layout='typed',
    options=(('unit_range_input', False),),
)
