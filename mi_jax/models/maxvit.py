"""MaxViT-T (torchvision layout) with the RoLSS code's per-stage skip control.

Architecture (torchvision `maxvit_t`, MaxViT paper): a stem (3x3/2 conv + BN + GELU, 3x3 conv), four
stages of (2, 2, 5, 2) layers with (64, 128, 256, 512) channels, attention heads of 32 channels,
7x7 windows/grids, stochastic depth rising linearly to 0.2 over the 11 layers, and a head of
average pool -> LayerNorm -> Linear -> tanh -> Linear (no bias). Each layer is
  MBConv            proj(x) + branch(x): branch = BN -> 1x1 (4x) -> BN/GELU -> 3x3 depthwise (the
                    stage's stride 2 in its first layer) -> BN/GELU -> squeeze-excitation -> 1x1;
                    proj = 3x3/2 avg-pool + 1x1 conv where the shape changes, else the identity;
  window attention  x + attn(LN(x)), then x + mlp(LN(x)), attention within 7x7 windows;
  grid attention    the same over a 7x7 grid of tokens strided across the whole map,
attention using a learnt relative-position bias (table of (2*7 - 1)^2 entries per head).

Skip control, as in the official code (Pillowkoh/RoLSS, models/torchvision/models/maxvit.py, with
its configs configs/training/targets/FaceScrub/maxvit/skip.yaml and configs/attacking/FaceScrub/maxvit/
skip.yaml). Stage i's factor k = config.model.skip[i] (1, 0, k in (0, 1) or 'learn', see skip.py) acts
on the layers config.model.maxvit_layers[i] names -- 'mbconv', 'window', 'grid' joined by '+', or
'none' -- among the first config.model.maxvit_leading_layers[i] layers of the stage (0 = all):
  * attention layers (window, grid): x = attn(x) + k * x for the attention residual, and
    x = mlp(x) + k * x for the MLP residual; config.model.residual_branch ('all', 'attention', 'mlp',
    the official `mode`) says which of the two take k;
  * MBConv (residual_branch does not apply to it, as in the official code): the official code puts k
    on the residual BRANCH, proj(x) + k * branch(x), the opposite of every other skip in the study --
    with k = 0 a stride-1 MBConv becomes the identity instead of losing its shortcut. That looks like a
    bug; both readings exist: config.model.maxvit_mbconv_factor_on = 'branch' (the official code, the
    default) or 'identity' (k * proj(x) + branch(x), consistent with the attention layers and ResNet).
Official knobs and their names here (official `cfg` per stage [mbconv, window, grid], 0 = apply the
factor, 1 = keep the plain residual):
  cfg [1, 1, 0] -> maxvit_layers 'grid'; [1, 0, 1] -> 'window'; [0, 0, 0] -> 'mbconv+window+grid';
  [1, 1, 1] -> 'none' (see official_to_config); itr -> maxvit_leading_layers (itr >= n_layers -> 0 = all;
  the official itr = 0 covers no layer -> 'none').
Defaults are the official code's when cfg/itr are not given: cfg [1, 1, 1] in every stage (the factor
acts nowhere) and itr = all layers. A stage whose skip setting is not 1 while maxvit_layers names no
layer for it would be a silent no-op there; build_model refuses it instead. The released training
config is skip [0, 0, 1, 1], mode all, cfg [[1,1,0], [1,1,0], [1,1,1], [1,1,1]], itr [2, 2, 5, 2], i.e.
skip=(0, 0, 1, 1), maxvit_layers=('grid', 'grid', 'none', 'none'). (Its attack config's cfg
[[1,0,1], [1,0,1], ...] never reaches the model: the official attack code, utils/attack_config_parser.py,
builds the target from skip and mode only, so cfg falls back to its default and the released attacks ran
the trained weights through the plain forward, every residual in place.)

BatchNorm momentum: the official file's BatchNorms have torch momentum 0.99 (running statistics are
nearly the last batch's; torchvision later fixed it to 0.01); config.model.maxvit_bn_momentum takes
either (default the official 0.99); only the running statistics differ. Removing or scaling a residual never changes the
parameter tree; only 'learn' adds one scalar `skip_scale_stage{i}` per stage.

Sizes: config.model.width > 0 shrinks the model for demos and tests: stem width, stage channels
width * (1, 2, 4, 8), heads of width // 2 channels (maxvit_t is width 64). config.model.
maxvit_partition_size (0 = 7) is the window/grid size; every stage's map must be divisible by it,
e.g. image sizes that are multiples of 32 * partition (224 for 7, 64 for 2).
"""

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.models import ops
from mi_jax.models import registry
from mi_jax.models import skip as skip_lib

# torchvision's _init_weights: normal(std 0.02) for conv and linear weights, zero biases. (Its
# trunc_normal_(std=0.02) of the position-bias tables cuts at +-2 absolute, i.e. never: also a normal.)
weight_init = nn.initializers.normal(0.02)
BN_EPSILON = 1e-3  # torchvision maxvit: BatchNorm2d(eps=1e-3)
# BatchNorm momentum in torch's convention (the new batch's weight): the official file's 0.99 (running
# statistics are nearly the last batch's), torchvision's later fix 0.01; config.model.maxvit_bn_momentum.
OFFICIAL_BN_MOMENTUM, TORCHVISION_BN_MOMENTUM = 0.99, 0.01
LN_EPSILON = 1e-5  # torch nn.LayerNorm default
LAYER_KINDS = ('mbconv', 'window', 'grid')  # the three parts of a MaxViT layer, in forward order
RESIDUAL_BRANCHES = ('all', 'attention', 'mlp')
MBCONV_FACTOR_ON = ('branch', 'identity')


class MaxViTSpec(NamedTuple):
  stem_channels: int
  block_channels: tuple[int, ...]  # channels per stage
  block_layers: tuple[int, ...]  # layers per stage
  head_dim: int  # channels per attention head
  partition_size: int  # window and grid side
  stochastic_depth: float  # drop probability of the last layer (linear from 0 over all layers)


MAXVIT_CONFIGS = {'maxvit_t': MaxViTSpec(64, (64, 128, 256, 512), (2, 2, 5, 2), 32, 7, 0.2)}


def _gelu(x):
  return jax.nn.gelu(x, approximate=False)  # torch nn.GELU()


def _conv_output_size(size: int) -> int:
  """Side of a 3x3 / stride 2 / padding 1 conv's output (torchvision's _get_conv_output_shape)."""
  return (size - 1) // 2 + 1


def drop_path(module: nn.Module, y, rate: float, train: bool):
  """Stochastic depth, torchvision mode 'row': the whole branch of a sample is dropped, the rest rescaled."""
  if not train or rate == 0.0:
    return y
  keep = jax.random.bernoulli(module.make_rng('dropout'), 1.0 - rate, (y.shape[0],) + (1,) * (y.ndim - 1))
  return y * keep.astype(y.dtype) / (1.0 - rate)


def relative_position_index(size: int) -> np.ndarray:
  """[size^2, size^2] -> row of the bias table for each (query, key) pair of a size x size partition."""
  coords = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing='ij')).reshape(2, -1)
  delta = coords[:, :, None] - coords[:, None, :] + (size - 1)  # offsets shifted to 0 .. 2 size - 2
  return delta[0] * (2 * size - 1) + delta[1]


def _check_entries(field: str, values, num_stages: int):
  if len(values) != num_stages:
    raise ValueError(
        f'config.model.{field}={tuple(values)} has {len(values)} entries; the model has {num_stages} stages'
    )


def parse_layers(entry) -> frozenset:
  """One stage's maxvit_layers entry ('grid', 'mbconv+window', 'none') -> the set of layer kinds."""
  if not isinstance(entry, str):
    raise ValueError(f"entry {entry!r}: expected 'none' or some of {'/'.join(LAYER_KINDS)} joined by '+'")
  if entry == 'none':
    return frozenset()
  kinds = entry.split('+')
  if any(kind not in LAYER_KINDS for kind in kinds) or len(set(kinds)) != len(kinds):
    raise ValueError(f"entry {entry!r}: expected 'none' or distinct names of {', '.join(LAYER_KINDS)} joined by '+'")
  return frozenset(kinds)


def stage_plans(
    skip: Sequence[Any],
    block_layers: Sequence[int],
    residual_branch: str,
    layers_with_factor: Sequence[str],
    leading_layers: Sequence[int],
    mbconv_factor_on: str,
) -> list[list[frozenset]]:
  """Validates the skip options; per stage, per layer, the residuals that take the stage's factor.

  Each layer's set holds some of 'mbconv', 'window_attention', 'window_mlp', 'grid_attention',
  'grid_mlp'. Errors name the config.model field at fault.
  """
  num_stages = len(block_layers)
  _check_entries('skip', skip, num_stages)
  _check_entries('maxvit_layers', layers_with_factor, num_stages)
  _check_entries('maxvit_leading_layers', leading_layers, num_stages)
  if residual_branch not in RESIDUAL_BRANCHES:
    raise ValueError(f'config.model.residual_branch={residual_branch!r}: expected one of {RESIDUAL_BRANCHES}')
  if mbconv_factor_on not in MBCONV_FACTOR_ON:
    raise ValueError(f'config.model.maxvit_mbconv_factor_on={mbconv_factor_on!r}: expected one of {MBCONV_FACTOR_ON}')
  sub_blocks = {'all': ('attention', 'mlp'), 'attention': ('attention',), 'mlp': ('mlp',)}[residual_branch]
  plans = []
  for i, num_layers in enumerate(block_layers):
    try:
      kinds = parse_layers(layers_with_factor[i])
    except ValueError as e:
      raise ValueError(f'config.model.maxvit_layers[{i}]: {e}') from None
    leading = leading_layers[i]
    if isinstance(leading, bool) or not isinstance(leading, (int, np.integer)) or not 0 <= leading <= num_layers:
      raise ValueError(
          f'config.model.maxvit_leading_layers[{i}]={leading!r}: expected an integer in 0..{num_layers} '
          f'(stage {i + 1} has {num_layers} layers; 0 = all)'
      )
    if not kinds and skip[i] != 1:
      raise ValueError(
          f"config.model.skip[{i}]={skip[i]!r} would change nothing: config.model.maxvit_layers[{i}]='none' "
          "names no layer of that stage whose residuals take the factor (e.g. 'mbconv+window+grid')"
      )
    residuals = set()
    if 'mbconv' in kinds:
      residuals.add('mbconv')
    for kind in ('window', 'grid'):
      if kind in kinds:
        residuals.update(f'{kind}_{sub}' for sub in sub_blocks)
    plans.append([frozenset(residuals) if j < (leading or num_layers) else frozenset() for j in range(num_layers)])
  return plans


def official_to_config(cfgs, itrs, block_layers=MAXVIT_CONFIGS['maxvit_t'].block_layers):
  """The official code's `cfg` ([[mbconv, window, grid] per stage], 0 = apply) and `itr` -> (maxvit_layers,
  maxvit_leading_layers). None stands for the official default of each. Its itr = 0 covers no layer (here
  0 means all): the stage becomes 'none'."""
  if cfgs is None:
    cfgs = [[1, 1, 1]] * len(block_layers)
  if itrs is None:
    itrs = block_layers
  names, leading = [], []
  for cfg, itr, num_layers in zip(cfgs, itrs, block_layers):
    kinds = [kind for kind, keep in zip(LAYER_KINDS, cfg) if not keep]
    names.append('+'.join(kinds) if kinds and itr > 0 else 'none')
    leading.append(0 if itr >= num_layers or names[-1] == 'none' else itr)
  return tuple(names), tuple(leading)


class MBConv(nn.Module):
  """MBConv with squeeze-excitation; the factor on its branch or its shortcut (module docstring)."""

  features: int  # output channels
  strides: int  # 2 in a stage's first layer
  drop_rate: float  # stochastic-depth probability of the layer
  factor_on: str = 'branch'  # 'branch' (official) or 'identity'
  bn_momentum: float = OFFICIAL_BN_MOMENTUM  # torch's convention: the weight of the new batch's statistics
  expansion: float = 4.0  # hidden channels = expansion * features
  squeeze: float = 0.25  # squeeze-excitation channels = squeeze * features
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32

  @nn.compact
  def __call__(self, x, skip_scale, train: bool):
    norm = lambda name: nn.BatchNorm(
        use_running_average=not train, momentum=1.0 - self.bn_momentum, epsilon=BN_EPSILON, dtype=self.dtype, name=name
    )
    conv = lambda features, kernel=1, name=None, **kw: ops.Conv(
        features, (kernel, kernel), kernel_init=weight_init, dtype=self.dtype, name=name, **kw
    )
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      if self.strides == 2:  # torch AvgPool2d(3, 2, padding=1) counts the zero padding
        shortcut = nn.avg_pool(shortcut, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)
      shortcut = conv(self.features, name='proj')(shortcut)
    hidden = int(self.features * self.expansion)
    y = norm('pre_norm')(x)
    y = _gelu(norm('conv_a_bn')(conv(hidden, use_bias=False, name='conv_a')(y)))
    y = conv(
        hidden,
        3,
        strides=(self.strides, self.strides),
        padding=((1, 1), (1, 1)),
        feature_group_count=hidden,
        use_bias=False,
        name='conv_b',
    )(y)
    y = _gelu(norm('conv_b_bn')(y))
    scale = jnp.mean(y, axis=(1, 2), keepdims=True)
    scale = nn.silu(conv(int(self.features * self.squeeze), name='se_reduce')(scale))
    y = y * jax.nn.sigmoid(conv(hidden, name='se_expand')(scale))
    y = drop_path(self, conv(self.features, name='conv_c')(y), self.drop_rate, train)
    if self.factor_on == 'branch':  # the official code: proj(x) + k * branch(x)
      return skip_lib.add_skip(shortcut, lambda: y, skip_scale)
    return skip_lib.add_skip(y, lambda: shortcut, skip_scale)


class RelativePositionAttention(nn.Module):
  """Multi-head self-attention within each partition, with a learnt relative-position bias."""

  head_dim: int  # channels per head
  partition_size: int  # partitions are partition_size x partition_size tokens
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32

  @nn.compact
  def __call__(self, x):  # [B, groups, tokens, C]
    batch, groups, tokens, channels = x.shape
    if channels % self.head_dim:
      raise ValueError(f'{channels} channels are not divisible by the head size {self.head_dim}')
    heads = channels // self.head_dim
    dense = lambda features, name: nn.Dense(features, kernel_init=weight_init, dtype=self.dtype, name=name)
    q, k, v = jnp.split(dense(3 * channels, 'to_qkv')(x), 3, axis=-1)
    q, k, v = (t.reshape(batch, groups, tokens, heads, self.head_dim) for t in (q, k, v))
    k = k * channels**-0.5  # torchvision scales by the full feature size, not the head size
    logits = jnp.einsum('bgihd,bgjhd->bghij', q, k)
    size = self.partition_size
    table = self.param('relative_position_bias_table', weight_init, ((2 * size - 1) ** 2, heads), jnp.float32)
    bias = table[relative_position_index(size)].transpose(2, 0, 1)  # [heads, tokens, tokens]
    weights = jax.nn.softmax(logits.astype(jnp.float32) + bias, axis=-1).astype(self.dtype)
    out = jnp.einsum('bghij,bgjhd->bgihd', weights, v).reshape(batch, groups, tokens, channels)
    return dense(channels, 'merge')(out)


def partition(x, size: int, kind: str):
  """[B, H, W, C] -> [B, groups, size * size, C]: windows of adjacent tokens, or grids of tokens H / size apart."""
  b, h, w, c = x.shape
  if kind == 'window':
    x = x.reshape(b, h // size, size, w // size, size, c).transpose(0, 1, 3, 2, 4, 5)
  else:
    x = x.reshape(b, size, h // size, size, w // size, c).transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(b, -1, size * size, c)


def departition(x, size: int, kind: str, height: int, width: int):
  """The inverse of `partition`."""
  b, _, _, c = x.shape
  if kind == 'window':
    x = x.reshape(b, height // size, width // size, size, size, c).transpose(0, 1, 3, 2, 4, 5)
  else:
    x = x.reshape(b, height // size, width // size, size, size, c).transpose(0, 3, 1, 4, 2, 5)
  return x.reshape(b, height, width, c)


class PartitionAttention(nn.Module):
  """Window or grid attention layer: an attention and an MLP sub-block, each with its residual."""

  kind: str  # 'window' or 'grid'
  head_dim: int  # channels per head
  partition_size: int  # window / grid side
  drop_rate: float  # stochastic-depth probability of the layer
  mlp_ratio: int = 4  # MLP hidden channels / channels
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32

  @nn.compact
  def __call__(self, x, attention_scale, mlp_scale, train: bool):
    _, height, width, channels = x.shape
    layer_norm = lambda name: nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name=name)
    dense = lambda features, name: nn.Dense(features, kernel_init=weight_init, dtype=self.dtype, name=name)
    tokens = partition(x, self.partition_size, self.kind)
    y = RelativePositionAttention(self.head_dim, self.partition_size, self.dtype, name='attention')(
        layer_norm('attn_norm')(tokens)
    )
    tokens = skip_lib.add_skip(drop_path(self, y, self.drop_rate, train), lambda: tokens, attention_scale)
    y = _gelu(dense(self.mlp_ratio * channels, 'mlp_hidden')(layer_norm('mlp_norm')(tokens)))
    y = dense(channels, 'mlp_out')(y)
    tokens = skip_lib.add_skip(drop_path(self, y, self.drop_rate, train), lambda: tokens, mlp_scale)
    return departition(tokens, self.partition_size, self.kind, height, width)


class MaxViT(nn.Module):
  """torchvision-layout MaxViT whose stages take a skip setting each (module docstring)."""

  num_classes: int  # outputs of the last linear layer (`classifier`)
  stem_channels: int = 64
  block_channels: Sequence[int] = (64, 128, 256, 512)  # channels per stage
  block_layers: Sequence[int] = (2, 2, 5, 2)  # MaxViT layers per stage
  head_dim: int = 32  # channels per attention head
  partition_size: int = 7  # window and grid side
  stochastic_depth: float = 0.2  # drop probability of the last layer, linear from 0 at the first
  skip: Sequence[Any] | None = None  # per-stage factor k (skip.py); None = 1 everywhere
  residual_branch: str = 'all'  # which residuals of the attention layers take k: 'all', 'attention', 'mlp'
  layers_with_factor: Sequence[str] | None = None  # per stage: config.model.maxvit_layers; None = 'none'
  leading_layers: Sequence[int] | None = None  # per stage: layers maxvit_layers covers, 0 = all; None = 0
  mbconv_factor_on: str = 'branch'  # MBConv's k on the 'branch' (official) or the 'identity'
  bn_momentum: float = OFFICIAL_BN_MOMENTUM  # torch's convention (config.model.maxvit_bn_momentum)
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    num_stages = len(self.block_layers)
    skip = (1.0,) * num_stages if self.skip is None else self.skip
    plans = stage_plans(
        skip,
        self.block_layers,
        self.residual_branch,
        ('none',) * num_stages if self.layers_with_factor is None else self.layers_with_factor,
        (0,) * num_stages if self.leading_layers is None else self.leading_layers,
        self.mbconv_factor_on,
    )
    self._check_input_size(x.shape[1], x.shape[2])
    x = jnp.asarray(x, self.dtype)
    x = ops.Conv(
        self.stem_channels,
        (3, 3),
        strides=(2, 2),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        kernel_init=weight_init,
        dtype=self.dtype,
        name='stem_conv',
    )(x)
    x = nn.BatchNorm(
        use_running_average=not train,
        momentum=1.0 - self.bn_momentum,
        epsilon=BN_EPSILON,
        dtype=self.dtype,
        name='stem_bn',
    )(x)
    x = ops.Conv(
        self.stem_channels,
        (3, 3),
        padding=((1, 1), (1, 1)),
        kernel_init=weight_init,
        dtype=self.dtype,
        name='stem_conv2',
    )(_gelu(x))
    total, layer_id = sum(self.block_layers), 0
    for i, (channels, plan) in enumerate(zip(self.block_channels, plans)):
      x = self.perturb(f'stage{i + 1}_input', x)
      # The stage's factor; a stage none of whose residuals takes it needs no learnable parameter.
      k = skip_lib.stage_skip_scale(self, i + 1, skip[i], self.dtype) if any(plan) else 1.0
      for j, residuals in enumerate(plan):
        drop_rate = self.stochastic_depth * layer_id / max(total - 1, 1)
        scale = lambda residual: k if residual in residuals else 1.0
        prefix = f'stage{i + 1}_{j}'
        x = MBConv(
            channels,
            2 if j == 0 else 1,
            drop_rate,
            self.mbconv_factor_on,
            self.bn_momentum,
            dtype=self.dtype,
            name=f'{prefix}_mbconv',
        )(x, scale('mbconv'), train)
        for kind in ('window', 'grid'):
          x = PartitionAttention(
              kind, self.head_dim, self.partition_size, drop_rate, dtype=self.dtype, name=f'{prefix}_{kind}_attention'
          )(x, scale(f'{kind}_attention'), scale(f'{kind}_mlp'), train)
        layer_id += 1
    x = jnp.mean(x, axis=(1, 2))
    x = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name='head_norm')(x)
    x = jnp.tanh(nn.Dense(x.shape[-1], kernel_init=weight_init, dtype=self.dtype, name='head_dense')(x))
    return nn.Dense(self.num_classes, use_bias=False, kernel_init=weight_init, dtype=self.dtype, name='classifier')(x)

  def _check_input_size(self, height: int, width: int):
    """Every stage's map must split into whole partitions (torchvision checks the same at construction)."""
    h, w = _conv_output_size(height), _conv_output_size(width)  # the stem's stride
    for i in range(len(self.block_layers)):
      h, w = _conv_output_size(h), _conv_output_size(w)
      if h % self.partition_size or w % self.partition_size:
        multiple = 2 ** (len(self.block_layers) + 1) * self.partition_size
        raise ValueError(
            f'MaxViT input of {height}x{width} pixels (config.data.image_size): the stage-{i + 1} map is {h}x{w}, '
            f'not divisible by the partition size {self.partition_size} (config.model.maxvit_partition_size); '
            f'use an image size that is a multiple of {multiple}'
        )


def as_official_attack_rebuilds(model_config: dict) -> dict:
  """The model config of a MaxViT target as the RoLSS attack code rebuilds it (utils/attack_config_parser.py):
  from `skip` and `mode` only, so `cfg` and `itr` fall back to their defaults, under which the factor acts on
  no residual -- the plain forward, every residual in place, whatever the target was trained with."""
  stages = len(model_config['skip'])
  return {
      **model_config,
      'skip': (1.0,) * stages,
      'maxvit_layers': ('none',) * stages,
      'maxvit_leading_layers': (0,) * stages,
  }


def _build(model_config, spec: MaxViTSpec, dtype, deploy):
  del deploy
  stem, channels, head_dim = spec.stem_channels, spec.block_channels, spec.head_dim
  width = model_config.width
  if width:  # demos: maxvit_t's proportions at another width (maxvit_t is width 64)
    if width < 0 or width % 2:
      raise ValueError(
          f'config.model.width={width}: MaxViT needs a positive even width (heads have width // 2 channels)'
      )
    stem, channels, head_dim = width, tuple(width * 2**i for i in range(len(channels))), width // 2
  partition_size = model_config.get('maxvit_partition_size', 0)
  if isinstance(partition_size, bool) or not isinstance(partition_size, int) or partition_size < 0:
    raise ValueError(
        f'config.model.maxvit_partition_size={partition_size!r}: expected a positive integer, or 0 for '
        f"the architecture's {spec.partition_size}"
    )
  options = dict(
      skip=tuple(model_config.skip),
      residual_branch=model_config.get('residual_branch', 'all'),
      layers_with_factor=tuple(model_config.get('maxvit_layers', ('none',) * len(channels))),
      leading_layers=tuple(model_config.get('maxvit_leading_layers', (0,) * len(channels))),
      mbconv_factor_on=model_config.get('maxvit_mbconv_factor_on', 'branch'),
  )
  bn_momentum = model_config.get('maxvit_bn_momentum', OFFICIAL_BN_MOMENTUM)
  if not 0.0 <= bn_momentum <= 1.0:
    raise ValueError(f'config.model.maxvit_bn_momentum={bn_momentum!r}: expected a weight in [0, 1]')
  stage_plans(block_layers=spec.block_layers, **options)  # config errors now, not at the first call
  return MaxViT(
      num_classes=model_config.num_classes,
      stem_channels=stem,
      block_channels=channels,
      block_layers=spec.block_layers,
      head_dim=head_dim,
      partition_size=partition_size or spec.partition_size,
      stochastic_depth=spec.stochastic_depth,
      bn_momentum=bn_momentum,
      dtype=dtype,
      **options,
  )


FAMILY = registry.Family(
    name='maxvit',
    architectures=MAXVIT_CONFIGS,
    build=_build,
    num_stages=lambda spec: len(spec.block_layers),
    torch_layout='maxvit',
    options=(
        ('residual_branch', 'all'),  # shared with ViT
        ('maxvit_layers', ('none',) * 4),
        ('maxvit_leading_layers', (0,) * 4),
        ('maxvit_mbconv_factor_on', 'branch'),
        ('maxvit_bn_momentum', OFFICIAL_BN_MOMENTUM),
        ('maxvit_partition_size', 0),
    ),
)
