"""EfficientNet-B0 (torchvision layout) with skip control per MBConv stage.

The network is torchvision's `efficientnet_b0`: a 3x3/2 stem, the seven MBConv
stages of its table (torchvision's features[1]..features[7]), a 1x1 head conv
to 4x the last stage's channels, global average pooling, dropout 0.2 and the
linear classifier. An MBConv block is expand 1x1 (absent when the expanded
width equals the input width) -> depthwise kxk -> squeeze-excitation
(max(1, in // 4) channels of the block input) -> linear 1x1 projection, with
SiLU and BatchNorm (torch defaults: eps 1e-5, momentum 0.1) throughout;
stochastic depth ('row' mode, 0.2 * block index / number of blocks) drops the
residual branch of the blocks that have a shortcut.

Skip control -- OUR definition, not the official code's: the RoLSS release
(Pillowkoh/RoLSS) vendors torchvision's efficientnet.py unmodified, with no
skip setting at all, although the paper reports stage-wise skip removal for
EfficientNet-B0 (its Figure 3). We define it as the release defines it for
MobileNetV2 (see mobilenet.py): the seven MBConv stages are the skip stages,
and stage i's factor k multiplies the identity of every block of the stage
that has one (torchvision's use_res_connect: stride 1 and as many output as
input channels):

    out = stochastic_depth(block(x)) + k * x

so k = 1 is torchvision's block, and k = 0 keeps stochastic depth on what is
left (in training a dropped sample's block output is then zero), as the
release's ConvNeXt and ResNet removals keep their branch untouched. At full
width, stage 1 (one block, 32 -> 16 channels) and stage 7 (one block,
192 -> 320) have no shortcut: a setting other than 1 there is refused, naming
config.model.skip[i], rather than silently ignored.
"""

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mi_jax.models import layers
from mi_jax.models import mobilenet
from mi_jax.models import ops
from mi_jax.models import registry
from mi_jax.models import skip as skip_lib

# (expand ratio, kernel, first stride, input channels, output channels, blocks) per stage, at width and depth
# multiplier 1 -- torchvision's _efficientnet_conf('efficientnet_b0') table.
B0_SETTING = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
# torchvision's init: kaiming_normal_(mode='fan_out') for every conv (the squeeze-excitation 1x1 convs too) ...
conv_kernel_init = mobilenet.conv_kernel_init  # kaiming normal, fan_out (torchvision)
# ... and U(-1/sqrt(out), 1/sqrt(out)) for the classifier: a uniform of variance scale/out has limit sqrt(3 scale/out).
classifier_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_out', 'uniform')


def stage_blocks(block_setting, width_mult: float = 1.0, depth_mult: float = 1.0):
  """Per stage, its blocks as (expand ratio, kernel, stride, in channels, out channels), as torchvision builds them:
  channels rounded with make_divisible(c * width_mult), ceil(n * depth_mult) blocks, the first with the stage's
  stride and input width, the others stride 1 at the output width."""
  stages = []
  for expand, kernel, stride, c_in, c_out, n in block_setting:
    c_in, c_out = mobilenet.make_divisible(c_in * width_mult), mobilenet.make_divisible(c_out * width_mult)
    n = int(math.ceil(n * depth_mult))
    stages.append(
        tuple((expand, kernel, stride, c_in, c_out) if j == 0 else (expand, kernel, 1, c_out, c_out) for j in range(n))
    )
  return tuple(stages)


def has_shortcut(block) -> bool:
  """torchvision's use_res_connect: stride 1 and as many output as input channels."""
  _, _, stride, c_in, c_out = block
  return stride == 1 and c_in == c_out


def drop_rates(block_setting, depth_mult: float = 1.0, stochastic_depth: float = 0.2):
  """Per stage, the stochastic-depth probability of each block: stochastic_depth * block index / number of blocks
  (torchvision's linear rule; the first block is never dropped, the last almost at the full rate)."""
  counts = [len(stage) for stage in stage_blocks(block_setting, 1.0, depth_mult)]
  total, out = sum(counts), []
  for i, n in enumerate(counts):
    first = sum(counts[:i])
    out.append(tuple(stochastic_depth * (first + j) / total for j in range(n)))
  return tuple(out)


def check_skip_fits(skip, block_setting, width_mult, depth_mult, field: str = 'skip'):
  """A stage none of whose blocks has a shortcut takes only the neutral setting 1 (`field` names the setting)."""
  for i, stage in enumerate(stage_blocks(block_setting, width_mult, depth_mult)):
    if not any(has_shortcut(block) for block in stage) and skip[i] != 1:
      raise ValueError(
          f'{field}[{i}]={skip[i]!r}: EfficientNet stage {i + 1} has no residual connection to remove or scale '
          '(none of its blocks has stride 1 and equal input and output widths); set it to 1'
      )


# conv -> BN -> SiLU (torchvision's Conv2dNormActivation with SiLU): MobileNetV2's block with another activation.
ConvBNAct = functools.partial(mobilenet.ConvBN, activation=nn.silu)


class SqueezeExcitation(nn.Module):
  squeeze: int  # Bottleneck channels: max(1, block input channels // 4).
  dtype: Any = jnp.float32  # Compute dtype.

  @nn.compact
  def __call__(self, x):

    def conv(features, name):  # torchvision's fc1/fc2 are 1x1 convs with bias
      return ops.Conv(features, (1, 1), kernel_init=conv_kernel_init, dtype=self.dtype, name=name)

    scale = jnp.mean(x, axis=(1, 2), keepdims=True)
    scale = nn.silu(conv(self.squeeze, 'fc1')(scale))
    return x * nn.sigmoid(conv(x.shape[-1], 'fc2')(scale))


class MBConv(nn.Module):
  expand_ratio: int  # Hidden width = make_divisible(input channels * expand_ratio).
  kernel: int  # Depthwise kernel size (3 or 5).
  strides: int  # Depthwise stride (1 or 2).
  features: int  # Output channels.
  drop_rate: float  # Stochastic-depth probability of the residual branch (blocks with a shortcut only).
  norm: Any  # layers.batch_norm(train, dtype).
  dtype: Any = jnp.float32  # Compute dtype.

  @nn.compact
  def __call__(self, x, skip_scale, train: bool):
    channels = x.shape[-1]
    hidden = mobilenet.make_divisible(channels * self.expand_ratio)
    y = x
    if hidden != channels:  # torchvision omits the expansion when it would not change the width
      y = ConvBNAct(hidden, 1, norm=self.norm, dtype=self.dtype, name='expand')(y)
    depthwise = ConvBNAct(hidden, self.kernel, self.strides, hidden, norm=self.norm, dtype=self.dtype, name='depthwise')
    y = depthwise(y)
    y = SqueezeExcitation(max(1, channels // 4), self.dtype, name='se')(y)
    y = ConvBNAct(self.features, 1, act=False, norm=self.norm, dtype=self.dtype, name='project')(y)
    if not has_shortcut((self.expand_ratio, self.kernel, self.strides, channels, self.features)):
      return y
    if train and self.drop_rate > 0:  # 'row' mode: drop the whole residual branch per sample
      keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.drop_rate, (y.shape[0], 1, 1, 1))
      y = y * keep.astype(y.dtype) / (1.0 - self.drop_rate)
    return skip_lib.add_skip(y, lambda: x, skip_scale)


class EfficientNet(nn.Module):
  num_classes: int  # Classifier outputs.
  skip: Sequence[Any] = (1.0,) * 7  # Per MBConv stage; see the module docstring.
  block_setting: Sequence[Sequence[int]] = B0_SETTING  # (expand, kernel, stride, in, out, blocks) per stage.
  width_mult: float = 1.0  # Channels: make_divisible(c * width_mult), as torchvision.
  depth_mult: float = 1.0  # Blocks per stage: ceil(n * depth_mult), as torchvision.
  stochastic_depth: float = 0.2  # Largest drop probability, linear in block index.
  dropout: float = 0.2  # Before the classifier, as torchvision.
  dtype: Any = jnp.float32  # Compute dtype.

  @nn.compact
  def __call__(self, x, train: bool = False):
    skip_lib.check_count(self.skip, len(self.block_setting))
    check_skip_fits(self.skip, self.block_setting, self.width_mult, self.depth_mult)
    norm = layers.batch_norm(train, self.dtype)
    stages = stage_blocks(self.block_setting, self.width_mult, self.depth_mult)
    rates = drop_rates(self.block_setting, self.depth_mult, self.stochastic_depth)
    x = jnp.asarray(x, self.dtype)
    x = ConvBNAct(stages[0][0][3], 3, 2, norm=norm, dtype=self.dtype, name='stem')(x)
    for i, stage in enumerate(stages):
      skip_scale = skip_lib.stage_skip_scale(self, i + 1, self.skip[i], self.dtype)
      x = self.perturb(f'stage{i + 1}_input', x)
      for j, (expand, kernel, stride, _, c_out) in enumerate(stage):
        block = MBConv(expand, kernel, stride, c_out, rates[i][j], norm, self.dtype, name=f'block{i + 1}_{j}')
        x = block(x, skip_scale, train)
    x = ConvBNAct(4 * stages[-1][-1][4], 1, norm=norm, dtype=self.dtype, name='head')(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=classifier_kernel_init, dtype=self.dtype, name='classifier')(x)


# Model name -> (block table, width multiplier, depth multiplier, dropout), as torchvision's builder sets them.
EFFICIENTNET_CONFIGS = {'efficientnet_b0': (B0_SETTING, 1.0, 1.0, 0.2)}


def _build(model_config, architecture, dtype, deploy):
  del deploy
  block_setting, width_mult, depth_mult, dropout = architecture
  if model_config.width:  # demos: width = stem channels (32 at full width), as MobileNetV2
    width_mult = model_config.width / 32
  skip = tuple(model_config.skip)
  check_skip_fits(skip, block_setting, width_mult, depth_mult, field='config.model.skip')
  return EfficientNet(
      num_classes=model_config.num_classes,
      skip=skip,
      block_setting=block_setting,
      width_mult=width_mult,
      depth_mult=depth_mult,
      dropout=dropout,
      dtype=dtype,
  )


FAMILY = registry.Family(
    name='efficientnet',
    architectures=EFFICIENTNET_CONFIGS,
    build=_build,
    num_stages=lambda architecture: len(architecture[0]),
    torch_layout='efficientnet',
    residual_stages=lambda model_config, architecture: tuple(
        any(has_shortcut(block) for block in stage)
        for stage in stage_blocks(
            architecture[0], model_config.width / 32 if model_config.width else architecture[1], architecture[2]
        )
    ),
)
