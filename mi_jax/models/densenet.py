"""DenseNet-121/161/169/201 in Flax with per-stage control of the concatenative skips.

Structurally identical to torchvision's DenseNet (BN-ReLU-conv1x1-BN-ReLU-conv3x3
dense layers, bn_size 4, transitions halving the channels, norm5 + ReLU + global
pool + classifier); names mirror its state-dict keys
(`denseblock2/denselayer3/conv1`, `transition1/norm`, `norm5`, `classifier`).

Inside a dense block every layer sees the concatenation of the block input and
all earlier layers' outputs: those are the skip connections. A stage's skip
setting k acts on them in one of two ways (`skip_mode`):

  'truncate'  the official RoLSS code (Koh et al.): after each layer, the
              previously newest feature map is cut to its first round(k * C)
              channels (Python's round). k = 0 leaves a plain chain (each layer
              sees only its predecessor; the block outputs the last layer's
              `growth` channels). k < 1 changes parameter shapes, so TTS
              transplants must re-initialise what no longer fits.
  'scale'     every carried feature map except the newest is multiplied by k.
              The parameter tree never changes (k = 0 gives the same function
              as the chain, with unused weights kept) and k can be learnt
              ('learn', clipped to [0, 1]).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mi_jax.models import layers
from mi_jax.models import ops
from mi_jax.models import registry
from mi_jax.models import skip as skip_lib

# torchvision DenseNet: kaiming_normal_ with the default fan_in mode.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def _conv(features, kernel, dtype, name):
  pad = kernel // 2
  return ops.Conv(
      features,
      (kernel, kernel),
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      kernel_init=conv_kernel_init,
      dtype=dtype,
      name=name,
  )


def truncated_channels(channels: int, k: float) -> int:
  """Channels a truncated feature map keeps: Python's (banker's) round, as the official code."""
  return round(channels * k)


class DenseLayer(nn.Module):
  growth_rate: int  # Channels this layer adds.
  bn_size: int  # Bottleneck width multiplier (4).
  norm: Any  # BatchNorm bound to train/eval.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm(name='norm1')(x))
    y = _conv(self.bn_size * self.growth_rate, 1, self.dtype, 'conv1')(y)
    y = nn.relu(self.norm(name='norm2')(y))
    return _conv(self.growth_rate, 3, self.dtype, 'conv2')(y)


class DenseBlock(nn.Module):
  num_layers: int
  growth_rate: int
  bn_size: int
  norm: Any
  skip_mode: str = 'truncate'  # 'truncate' (official) or 'scale'; see the module docstring.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, skip_scale):
    features = [x]
    for j in range(self.num_layers):
      new = DenseLayer(self.growth_rate, self.bn_size, self.norm, self.dtype, name=f'denselayer{j + 1}')(
          jnp.concatenate(features, axis=-1)
      )
      if self.skip_mode == 'truncate':
        if skip_scale != 1.0:
          features[-1] = features[-1][..., : truncated_channels(features[-1].shape[-1], skip_scale)]
      elif self.skip_mode == 'scale':
        if not (isinstance(skip_scale, float) and skip_scale == 1.0):
          features[-1] = skip_scale * features[-1]
      else:
        raise ValueError(f"skip_mode {self.skip_mode!r}: expected 'truncate' or 'scale'")
      features.append(new)
    return jnp.concatenate(features, axis=-1)


class DenseNet(nn.Module):
  """torchvision-layout DenseNet whose dense blocks take a skip setting each."""

  growth_rate: int  # 32 (121/169/201) or 48 (161).
  block_config: Sequence[int]  # Layers per dense block.
  num_init_features: int  # Stem channels (64, or 96 for 161).
  num_classes: int
  skip: Sequence[Any] = (1.0, 1.0, 1.0, 1.0)  # Per-block setting: 1 keep, 0 remove, k, 'learn' (scale mode).
  skip_mode: str = 'truncate'
  bn_size: int = 4
  width: int = 0  # Demos: stem channels = width, growth = width // 2 (0 = the paper's).
  stem: str = 'imagenet'  # 'imagenet': 7x7/2 conv + 3x3/2 max-pool; 'small': 3x3/1 conv.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    skip_lib.check_count(self.skip, len(self.block_config), 'dense blocks')
    norm = layers.batch_norm(train, self.dtype)
    growth = self.width // 2 if self.width else self.growth_rate
    x = jnp.asarray(x, self.dtype)
    if self.stem == 'imagenet':
      x = ops.Conv(
          self.width or self.num_init_features,
          (7, 7),
          strides=(2, 2),
          padding=((3, 3), (3, 3)),
          use_bias=False,
          kernel_init=conv_kernel_init,
          dtype=self.dtype,
          name='conv0',
      )(x)
      x = nn.relu(norm(name='norm0')(x))
      x = ops.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    elif self.stem == 'small':
      x = _conv(self.width or self.num_init_features, 3, self.dtype, 'conv0')(x)
      x = nn.relu(norm(name='norm0')(x))
    else:
      raise ValueError(f"stem {self.stem!r}: expected 'imagenet' or 'small'")
    layers.sow_hidden(self, x)

    for i, num_layers in enumerate(self.block_config):
      if skip_lib.parse_skip(self.skip[i])[0] == 'learn' and self.skip_mode != 'scale':
        raise ValueError("a learnable DenseNet skip needs skip_mode='scale' (truncation is not differentiable)")
      skip_scale = skip_lib.stage_skip_scale(self, i + 1, self.skip[i], self.dtype)
      x = self.perturb(f'stage{i + 1}_input', x)
      x = DenseBlock(num_layers, growth, self.bn_size, norm, self.skip_mode, self.dtype, name=f'denseblock{i + 1}')(
          x, skip_scale
      )
      if i != len(self.block_config) - 1:
        x = Transition(x.shape[-1] // 2, norm, self.dtype, name=f'transition{i + 1}')(x)
      layers.sow_hidden(self, x)

    x = nn.relu(norm(name='norm5')(x))
    x = jnp.mean(x, axis=(1, 2))
    layers.sow_hidden(self, x)
    return nn.Dense(self.num_classes, dtype=self.dtype, bias_init=nn.initializers.zeros, name='classifier')(x)


class Transition(nn.Module):
  features: int
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.norm(name='norm')(x))
    x = _conv(self.features, 1, self.dtype, 'conv')(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


DENSENET_CONFIGS = {
    'densenet121': (32, (6, 12, 24, 16), 64),
    'densenet161': (48, (6, 12, 36, 24), 96),
    'densenet169': (32, (6, 12, 32, 32), 64),
    'densenet201': (32, (6, 12, 48, 32), 64),
}


def _build(model_config, architecture, dtype, deploy):
  del deploy
  mode, skip = model_config.skip_mode, tuple(model_config.skip)
  if mode not in ('truncate', 'scale'):
    raise ValueError(f"config.model.skip_mode={mode!r}: expected 'truncate' (official) or 'scale'")
  if mode == 'truncate' and any(isinstance(s, str) for s in skip):
    raise ValueError("config.model.skip: a learnable DenseNet skip needs config.model.skip_mode='scale'")
  growth, blocks, init_features = architecture
  return DenseNet(
      growth_rate=growth,
      block_config=blocks,
      num_init_features=init_features,
      num_classes=model_config.num_classes,
      skip=skip,
      skip_mode=mode,
      width=model_config.width,  # 0 = the architecture's own (DenseNet-161: 96 / 48)
      stem=model_config.stem,
      dtype=dtype,
  )


FAMILY = registry.Family(
    name='densenet',
    architectures=DENSENET_CONFIGS,
    build=_build,
    num_stages=lambda architecture: len(architecture[1]),
    concatenative_skips=True,
    records_hidden=True,
    torch_layout='densenet',
)
