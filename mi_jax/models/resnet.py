"""ResNet-18..152 in Flax with per-stage control of the skip connections.

Structurally identical to torchvision's ResNet (v1.5: the stride of a bottleneck
sits on its 3x3 conv; explicit torch padding everywhere) so that torchvision
weights map onto it one to one. Parameter names mirror torchvision's state-dict
keys (`conv1`, `bn1`, `layer3_0/downsample_conv`, `fc`, ...).

Skip control. Every stage takes one setting, shared by all of its blocks:
  1.0        keep the shortcut (plain ResNet);
  0.0        remove it -- including the projection shortcut of the stage's first
             block (RoLSS when only the last stage is 0);
  k in (0,1) scale it: out = relu(residual + k * shortcut)      (SSF, fixed k);
  'learn'    a learnable k per stage, initialised at 1 and clipped to [0, 1]
             in the forward pass (SSF, learnable); 'learn:0.2' starts at 0.2.
Removing or scaling a skip never changes the parameter tree (a removed
projection still owns its params, they just receive no gradient), so weights
move freely between variants; only 'learn' adds one scalar `skip_scale_stage{i}`.

`legacy_stage3_split` reproduces a leftover of the released RoLSS code
(Pillowkoh/RoLSS, models/torchvision/models/resnet.py: `layer3` is built with
`split=0.8`): the stage-3 blocks from index int(split * n) on (never the first)
lose their skip whatever the config says, in every model built with that file
(ResNet-18: 1 of 2, ResNet-34/50: 2 of 6, ResNet-101: 5 of 23, ResNet-152: 8 of
36). 1.0 (the default) turns it off; 0.8 gives numbers made with that file.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mi_jax.models import layers
from mi_jax.models import ops
from mi_jax.models import registry
from mi_jax.models import skip as skip_lib

ModuleDef = Any

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu').
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _conv(features, kernel, strides=1, dtype=jnp.float32, name=None):
  pad = kernel // 2
  return ops.Conv(
      features,
      (kernel, kernel),
      strides=(strides, strides),
      padding=((pad, pad), (pad, pad)),  # torch padding, not 'SAME'
      use_bias=False,
      kernel_init=conv_kernel_init,
      dtype=dtype,
      name=name,
  )


class BasicBlock(nn.Module):
  """3x3 -> 3x3 block of ResNet-18/34."""

  features: int  # Output channels of the block.
  strides: int = 1  # Stride of the first conv (and of the projection).
  norm: ModuleDef = nn.BatchNorm  # Normalisation layer, already bound to train/eval.
  dtype: Any = jnp.float32  # Computation dtype of the convs.
  expansion = 1

  @nn.compact
  def __call__(self, x, skip_scale):
    y = _conv(self.features, 3, self.strides, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = _conv(self.features, 3, dtype=self.dtype, name='conv2')(y)
    y = self.norm(name='bn2')(y)
    return nn.relu(self._add_shortcut(y, x, skip_scale))

  def _add_shortcut(self, residual, x, skip_scale):
    """residual + k * shortcut(x); the shortcut is computed only when k can be non-zero."""
    if isinstance(skip_scale, float) and skip_scale == 0.0 and self.is_initializing():
      self._shortcut(x)  # a removed projection still owns params: the tree must not depend on skip
    return skip_lib.add_skip(residual, lambda: self._shortcut(x), skip_scale)

  def _shortcut(self, x):
    if x.shape[-1] != self.features * self.expansion or self.strides != 1:
      x = _conv(self.features * self.expansion, 1, self.strides, dtype=self.dtype, name='downsample_conv')(x)
      x = self.norm(name='downsample_bn')(x)
    return x


class Bottleneck(BasicBlock):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 block of ResNet-50/101/152."""

  expansion = 4

  @nn.compact
  def __call__(self, x, skip_scale):
    y = _conv(self.features, 1, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = _conv(self.features, 3, self.strides, dtype=self.dtype, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = _conv(self.features * self.expansion, 1, dtype=self.dtype, name='conv3')(y)
    y = self.norm(name='bn3')(y)
    return nn.relu(self._add_shortcut(y, x, skip_scale))


class ResNet(nn.Module):
  """torchvision-layout ResNet whose stages take a skip setting each."""

  stage_sizes: Sequence[int]  # Blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
  block_cls: Callable  # BasicBlock or Bottleneck.
  num_classes: int  # Size of the classifier head.
  skip: Sequence[Any] = (1.0, 1.0, 1.0, 1.0)  # Per-stage skip setting, see the module docstring.
  width: int = 64  # Channels of the stem and stage 1 (torchvision: 64).
  stem: str = 'imagenet'  # 'imagenet': 7x7/2 conv + 3x3/2 max-pool; 'small': 3x3/1 conv, no pool (<= 64px inputs).
  legacy_stage3_split: float = 1.0  # The RoLSS release's split=0.8 leftover (module docstring); 1.0 = off.
  dtype: Any = jnp.float32  # Computation dtype; params stay float32.

  @nn.compact
  def __call__(self, x, train: bool = False):
    skip_lib.check_count(self.skip, len(self.stage_sizes))
    plain_from = legacy_split_start(self.stage_sizes[2], self.legacy_stage3_split)
    norm = layers.batch_norm(train, self.dtype)
    x = jnp.asarray(x, self.dtype)
    if self.stem == 'imagenet':
      x = _conv(self.width, 7, 2, dtype=self.dtype, name='conv1')(x)
      x = nn.relu(norm(name='bn1')(x))
      x = ops.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    elif self.stem == 'small':
      x = _conv(self.width, 3, 1, dtype=self.dtype, name='conv1')(x)
      x = nn.relu(norm(name='bn1')(x))
    else:
      raise ValueError(f"stem {self.stem!r}: expected 'imagenet' or 'small'")
    layers.sow_hidden(self, x)

    for i, num_blocks in enumerate(self.stage_sizes):
      skip_scale = skip_lib.stage_skip_scale(self, i + 1, self.skip[i], self.dtype)
      # Named perturbation point: the gradient w.r.t. it is dL/dz_i at the stage input.
      x = self.perturb(f'stage{i + 1}_input', x)
      for j in range(num_blocks):
        block = self.block_cls(
            features=self.width * 2**i,
            strides=2 if i > 0 and j == 0 else 1,
            norm=norm,
            dtype=self.dtype,
            name=f'layer{i + 1}_{j}',
        )
        x = block(x, 0.0 if i == 2 and j >= plain_from else skip_scale)
        layers.sow_hidden(self, x)

    x = jnp.mean(x, axis=(1, 2))
    layers.sow_hidden(self, x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(x)


def legacy_split_start(num_blocks: int, split: float) -> int:
  """Index of the first stage-3 block the RoLSS release builds without a skip (num_blocks = none).

  Its `_make_layer` builds block 0 with the configured skip, blocks 1 .. int(split * n) - 1 likewise
  and the rest with skip 0; int(split * n) < 1 would make it build an extra block, so it is refused.
  """
  if not 0.0 < split <= 1.0:
    raise ValueError(f'legacy_stage3_split={split}: expected a value in (0, 1] (1 = off; the release used 0.8)')
  start = int(split * num_blocks)
  if start < 1:
    raise ValueError(
        f'legacy_stage3_split={split} keeps int({split} * {num_blocks}) = {start} stage-3 blocks; the '
        'released code would then build an extra block: expected at least 1'
    )
  return start


RESNET_STAGES = {
    'resnet18': ((2, 2, 2, 2), BasicBlock),
    'resnet34': ((3, 4, 6, 3), BasicBlock),
    'resnet50': ((3, 4, 6, 3), Bottleneck),
    'resnet101': ((3, 4, 23, 3), Bottleneck),
    'resnet152': ((3, 8, 36, 3), Bottleneck),
}


def _build(model_config, stages, dtype, deploy):
  del deploy
  stage_sizes, block_cls = stages
  split = model_config.get('legacy_stage3_split', 1.0)
  try:
    legacy_split_start(stage_sizes[2], split)
  except ValueError as e:
    raise ValueError(f'config.model.{e}') from None
  return ResNet(
      stage_sizes=stage_sizes,
      block_cls=block_cls,
      num_classes=model_config.num_classes,
      skip=tuple(model_config.skip),
      width=model_config.width or 64,
      stem=model_config.stem,
      legacy_stage3_split=split,
      dtype=dtype,
  )


FAMILY = registry.Family(
    name='resnet',
    architectures=RESNET_STAGES,
    build=_build,
    num_stages=lambda stages: len(stages[0]),
    records_hidden=True,
    torch_layout='resnet',
    options=(('legacy_stage3_split', 1.0),),
)
