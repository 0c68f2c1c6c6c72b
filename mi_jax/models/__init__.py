"""Target classifiers. `build_model(config.model)` is the one way to make one."""

import functools

import jax
import jax.numpy as jnp
import ml_collections

from mi_jax.models import convnext, densenet, inception, mobilenet, repvgg, resnet
from mi_jax.models import skip as skip_lib

# float64 needs jax_enable_x64; it serves exact numerical comparisons (sharding, parity tests).
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64}


def model_names() -> list[str]:
  return (sorted(resnet.RESNET_STAGES) + sorted(densenet.DENSENET_CONFIGS) + sorted(repvgg.REPVGG_CONFIGS) +
          ['mobilenet_v2'] + sorted(convnext.CONVNEXT_CONFIGS) + ['inception_v3'])


def num_skip_stages(name: str) -> int:
  """How many skip settings config.model.skip takes for the model `name` (one per stage, block or group)."""
  if name in resnet.RESNET_STAGES:
    return len(resnet.RESNET_STAGES[name][0])
  if name in densenet.DENSENET_CONFIGS:
    return len(densenet.DENSENET_CONFIGS[name][1])
  if name in repvgg.REPVGG_CONFIGS:
    return len(repvgg.REPVGG_CONFIGS[name][0])
  if name in convnext.CONVNEXT_CONFIGS:
    return len(convnext.CONVNEXT_CONFIGS[name][0])
  if name == 'inception_v3':
    return 0  # the evaluation model: no skip control
  if name == 'mobilenet_v2':
    return len(mobilenet.INVERTED_RESIDUAL_SETTING)
  raise ValueError(f'config.model.name={name!r} is not a known model; known: {", ".join(model_names())}')


def build_model(model_config: ml_collections.ConfigDict, deploy: bool = False):
  """Returns the Flax module that `model_config` (config.model) describes.

  `deploy` selects RepVGG's folded inference form (see repvgg.reparameterize).
  """
  name = model_config.name
  if name not in model_names():
    raise ValueError(f'config.model.name={name!r} is not a known model; known: {", ".join(model_names())}')
  if model_config.dtype not in _DTYPES:
    raise ValueError(f'config.model.dtype={model_config.dtype!r}: expected one of {sorted(_DTYPES)}')
  skip = tuple(model_config.skip)
  num_stages = num_skip_stages(name)
  if len(skip) != num_stages:
    raise ValueError(f'config.model.skip={skip} has {len(skip)} entries; {name} has {num_stages} stages')
  for setting in skip:
    try:
      skip_lib.parse_skip(setting)
    except ValueError as e:
      raise ValueError(f'config.model.skip: {e}') from None
  # Family-specific options: a value other than the neutral one on another family is a mistake.
  for field, neutral, family in (('transform_input', False, 'inception_v3'), ('aux_logits', False, 'inception_v3'),
                                 ('legacy_stage3_split', 1.0, 'resnet')):
    if model_config.get(field, neutral) != neutral and not name.startswith(family):
      raise ValueError(f'config.model.{field}={model_config[field]!r} applies to {family} models only, not {name}')
  if name in convnext.CONVNEXT_CONFIGS:
    depths, dims, stochastic_depth = convnext.CONVNEXT_CONFIGS[name]
    if model_config.width:  # demos: stage widths width, 2*width, 4*width, 8*width
      dims = tuple(model_config.width * 2**i for i in range(4))
    return convnext.ConvNeXt(depths=depths,
                             dims=dims,
                             num_classes=model_config.num_classes,
                             skip=skip,
                             stochastic_depth=stochastic_depth,
                             dtype=_DTYPES[model_config.dtype])
  if name == 'mobilenet_v2':
    width_mult = model_config.width / 32 if model_config.width else 1.0  # width = stem channels
    for i, has_residual in enumerate(mobilenet.groups_with_residual(width_mult)):
      if not has_residual and skip[i] != 1:
        raise ValueError(f'config.model.skip[{i}]={skip[i]!r}: MobileNetV2 group {i + 1} has no residual '
                         'connection to remove or scale')
    return mobilenet.MobileNetV2(num_classes=model_config.num_classes,
                                 skip=skip,
                                 width_mult=width_mult,
                                 dtype=_DTYPES[model_config.dtype])
  if name in repvgg.REPVGG_CONFIGS:
    if any(isinstance(s, str) for s in skip):
      raise ValueError('config.model.skip: RepVGG takes fixed identity-branch factors only')
    num_blocks, multiplier = repvgg.REPVGG_CONFIGS[name]
    return repvgg.RepVGG(num_blocks=num_blocks,
                         width_multiplier=multiplier,
                         num_classes=model_config.num_classes,
                         skip=skip,
                         deploy=deploy,
                         width=model_config.width,
                         dtype=_DTYPES[model_config.dtype])
  if name == 'inception_v3':
    return inception.Inception3(num_classes=model_config.num_classes,
                                transform_input=model_config.get('transform_input', False),
                                aux_logits=model_config.get('aux_logits', False),
                                dtype=_DTYPES[model_config.dtype])
  if name in densenet.DENSENET_CONFIGS:
    mode = model_config.skip_mode
    if mode not in ('truncate', 'scale'):
      raise ValueError(f"config.model.skip_mode={mode!r}: expected 'truncate' (official) or 'scale'")
    if mode == 'truncate' and any(isinstance(s, str) for s in skip):
      raise ValueError("config.model.skip: a learnable DenseNet skip needs config.model.skip_mode='scale'")
    growth, blocks, init_features = densenet.DENSENET_CONFIGS[name]
    return densenet.DenseNet(growth_rate=growth,
                             block_config=blocks,
                             num_init_features=init_features,
                             num_classes=model_config.num_classes,
                             skip=skip,
                             skip_mode=mode,
                             width=model_config.width,  # 0 = the architecture's own (DenseNet-161: 96 / 48)
                             stem=model_config.stem,
                             dtype=_DTYPES[model_config.dtype])
  stage_sizes, block_cls = resnet.RESNET_STAGES[name]
  try:
    resnet.legacy_split_start(stage_sizes[2], model_config.get('legacy_stage3_split', 1.0))
  except ValueError as e:
    raise ValueError(f'config.model.{e}') from None
  return resnet.ResNet(stage_sizes=stage_sizes,
                       block_cls=block_cls,
                       num_classes=model_config.num_classes,
                       skip=skip,
                       width=model_config.width or 64,
                       stem=model_config.stem,
                       legacy_stage3_split=model_config.get('legacy_stage3_split', 1.0),
                       dtype=_DTYPES[model_config.dtype])


def init_variables(model, input_shape, rng, **kwargs) -> dict:
  """`model.init` on a zero batch of `input_shape`, jitted.

  jit: an eager init dispatches every op of a deep net one by one. The
  non-partitionable threefry compiles several times faster on XLA:CPU (init of
  a ResNet-18: ~9 s -> ~4 s) and init never runs sharded, so nothing is lost.
  """
  with jax.threefry_partitionable(False):
    return jax.jit(functools.partial(model.init, **kwargs))(rng, jnp.zeros(input_shape, jnp.float32))
