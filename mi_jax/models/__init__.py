"""Target classifiers and the evaluation model. `build_model(config.model)` is the one way to make one.

The registry: each family module declares a `registry.Family` (its model names, builder and traits);
FAMILIES lists them. Adding a family is one module and one entry here.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections

from mi_jax.models import convnext, densenet, evolve, inception, mobilenet, registry, repvgg, resnet
from mi_jax.models import skip as skip_lib

FAMILIES = (
    resnet.FAMILY,
    densenet.FAMILY,
    repvgg.FAMILY,
    mobilenet.FAMILY,
    convnext.FAMILY,
    inception.FAMILY,
    evolve.FAMILY,
)
_BY_NAME = {name: family for family in FAMILIES for name in family.architectures}


def model_names() -> list[str]:
  """Every name config.model.name accepts, family by family."""
  return [name for family in FAMILIES for name in sorted(family.architectures)]


def family_of(name: str) -> registry.Family:
  """The registry record of the family model `name` belongs to."""
  if name not in _BY_NAME:
    raise ValueError(f'config.model.name={name!r} is not a known model; known: {", ".join(model_names())}')
  return _BY_NAME[name]


def num_skip_stages(name: str) -> int:
  """How many skip settings config.model.skip takes for the model `name` (one per stage, block or group)."""
  family = family_of(name)
  return family.num_stages(family.architectures[name])


def build_model(model_config: ml_collections.ConfigDict, deploy: bool = False):
  """Returns the Flax module that `model_config` (config.model) describes.

  `deploy` selects RepVGG's folded inference form (see repvgg.reparameterize).
  """
  name = model_config.name
  family = family_of(name)
  if model_config.dtype not in registry.DTYPES:
    raise ValueError(f'config.model.dtype={model_config.dtype!r}: expected one of {sorted(registry.DTYPES)}')
  skip, num_stages = tuple(model_config.skip), num_skip_stages(name)
  if len(skip) != num_stages:
    raise ValueError(f'config.model.skip={skip} has {len(skip)} entries; {name} has {num_stages} stages')
  for setting in skip:
    try:
      skip_lib.parse_skip(setting)
    except ValueError as e:
      raise ValueError(f'config.model.skip: {e}') from None
  # Another family's option at other than its neutral value is a mistake, not something to ignore.
  for other in FAMILIES:
    for field, neutral in other.options:
      if other is not family and model_config.get(field, neutral) != neutral:
        raise ValueError(
            f'config.model.{field}={model_config[field]!r} applies to {other.name} models only, ' f'not {name}'
        )
  return family.build(model_config, family.architectures[name], registry.DTYPES[model_config.dtype], deploy)


def init_variables(model, input_shape, rng, **kwargs) -> dict:
  """`model.init` on a zero batch of `input_shape`, jitted.

  jit: an eager init dispatches every op of a deep net one by one. The
  non-partitionable threefry compiles several times faster on XLA:CPU (init of
  a ResNet-18: ~9 s -> ~4 s) and init never runs sharded, so nothing is lost.
  """
  with jax.threefry_partitionable(False):
    return jax.jit(functools.partial(model.init, **kwargs))(rng, jnp.zeros(input_shape, jnp.float32))
