"""The model registry's record: what a family of classifiers is and how it is built.

Each family module (resnet.py, densenet.py, ...) declares one `Family`; `mi_jax.models` gathers
them. Everything that depends on a family's nature asks its record, never the model's name:
BiDO (`records_hidden`), SSF's default k and TTS's skip mode (`concatenative_skips`), the weight
importer (`torch_layout`), the study's per-family recipe (`name`).
"""

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

# config.model.dtype -> compute dtype. float64 needs jax_enable_x64 (exact comparisons in tests).
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64}


@dataclasses.dataclass(frozen=True)
class Family:
  name: str  # 'resnet', 'densenet', ...
  architectures: Mapping[str, Any]  # model name -> the family's constants for it
  # (model config, its name's constants, compute dtype, deploy) -> the Flax module.
  build: Callable[[Any, Any, Any, bool], nn.Module]
  num_stages: Callable[[Any], int]  # the name's constants -> how many skip settings it takes
  concatenative_skips: bool = False  # skips concatenate (DenseNet): SSF's k is 0.01, TTS scales
  records_hidden: bool = False  # sows hidden features (layers.sow_hidden) for BiDO
  torch_layout: str | None = None  # mi_jax.convert.torchvision kind; None: no importer
  options: tuple[tuple[str, Any], ...] = ()  # config.model fields of this family only, and their neutral values
  # (model config, its name's constants) -> per stage, whether it has a skip to remove or scale; None: every stage.
  residual_stages: Callable[[Any, Any], tuple[bool, ...]] | None = None
