"""Target classifiers and the evaluation model. `build_model(config.model)` is the one way to make one.

The registry: each family module declares a `registry.Family` (its model names, builder and traits);
FAMILIES lists them. Adding a family is one module and one entry here.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mi_jax.models import convnext, densenet, evolve, inception, mobilenet, registry, repvgg, resnet
from mi_jax.models import efficientnet
from mi_jax.models import vit
from mi_jax.models import maxvit
from mi_jax.models import skip as skip_lib
from mi_jax.models import vib

FAMILIES = (
    resnet.FAMILY,
    densenet.FAMILY,
    repvgg.FAMILY,
    mobilenet.FAMILY,
    convnext.FAMILY,
    efficientnet.FAMILY,
    inception.FAMILY,
    evolve.FAMILY,
    vit.FAMILY,
    maxvit.FAMILY,
)
_BY_NAME = {name: family for family in FAMILIES for name in family.architectures}


def model_names() -> list[str]:
  """Every name config.model.name accepts, family by family."""
  return [name for family in FAMILIES for name in sorted(family.architectures)]


# config.model fields every family takes, added after saved runs existed, and the value those runs had.
GENERAL_OPTIONS = (('vib_dim', 0),)


def option_defaults() -> dict[str, object]:
  """{config.model field: its neutral value} of every family's options: a saved config without such a field
  (written before the field existed) ran with that value."""
  return {**dict(GENERAL_OPTIONS), **{field: neutral for family in FAMILIES for field, neutral in family.options}}


def family_of(name: str) -> registry.Family:
  """The registry record of the family model `name` belongs to."""
  if name not in _BY_NAME:
    raise ValueError(f'config.model.name={name!r} is not a known model; known: {", ".join(model_names())}')
  return _BY_NAME[name]


def num_skip_stages(name: str) -> int:
  """How many skip settings config.model.skip takes for the model `name` (one per stage, block or group)."""
  family = family_of(name)
  return family.num_stages(family.architectures[name])


def residual_stages(model_config: ml_collections.ConfigDict) -> tuple[bool, ...]:
  """Per skip stage of config.model, whether it has a skip connection (MobileNetV2 and EfficientNet have
  stages without one: their setting must stay 1)."""
  family = family_of(model_config.name)
  architecture = family.architectures[model_config.name]
  if family.residual_stages is None:
    return (True,) * family.num_stages(architecture)
  return tuple(family.residual_stages(model_config, architecture))


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
  own = {field for field, _ in family.options}  # a field several families share (residual_branch) is theirs
  for other in FAMILIES:
    for field, neutral in other.options:
      if (
          other is not family
          and field not in own
          and _as_tuples(model_config.get(field, neutral)) != _as_tuples(neutral)
      ):
        raise ValueError(
            f'config.model.{field}={model_config[field]!r} applies to {other.name} models only, ' f'not {name}'
        )
  dtype = registry.DTYPES[model_config.dtype]
  bottleneck = model_config.get('vib_dim', 0)
  if not bottleneck:
    return family.build(model_config, family.architectures[name], dtype, deploy)
  if bottleneck < 0:
    raise ValueError(f'config.model.vib_dim={bottleneck}: expected 0 (no MID bottleneck) or its width k > 0')
  backbone_config = ml_collections.ConfigDict(model_config.to_dict())
  backbone_config.num_classes = 2 * bottleneck  # the head becomes MID's st_layer: mu and std of z
  backbone = family.build(backbone_config, family.architectures[name], dtype, deploy)
  return vib.VIBClassifier(backbone, model_config.num_classes, bottleneck, dtype)


def call_trace(model, image_size: int, channels: int = 3) -> list[tuple[tuple[str, ...], type, tuple]]:
  """(scope path, module class, input shape) of every module call in `model`'s forward pass, in order, from
  shapes only (no computation)."""
  calls = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and args and hasattr(args[0], 'shape'):
      path = tuple(context.module.scope.path) if context.module.scope is not None else ()
      calls.append((path, type(context.module), tuple(args[0].shape)))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32),
    )
  return calls


def head_input_width(model_config: ml_collections.ConfigDict, image_size: int) -> int:
  """The width of the features the classifier's head reads: the input of the last Dense layer it applies."""
  plain = build_model(ml_collections.ConfigDict({**model_config.to_dict(), 'vib_dim': 0}))
  return [shape for _, kind, shape in call_trace(plain, image_size) if issubclass(kind, nn.Dense)][-1][-1]


def _as_tuples(value):
  """Lists as tuples, nested: a config read back from JSON compares equal to the one it was written from."""
  return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def init_variables(model, input_shape, rng, **kwargs) -> dict:
  """`model.init` on a zero batch of `input_shape`, jitted.

  jit: an eager init dispatches every op of a deep net one by one. The
  non-partitionable threefry compiles several times faster on XLA:CPU (init of
  a ResNet-18: ~9 s -> ~4 s) and init never runs sharded, so nothing is lost.
  """
  with jax.threefry_partitionable(False):
    return jax.jit(functools.partial(model.init, **kwargs))(rng, jnp.zeros(input_shape, jnp.float32))
