"""The per-stage skip setting shared by every target family.

1.0        keep the skip connection;
0.0        remove it;
k in (0,1) scale it by k (SSF, fixed);
'learn'    a learnable k per stage, initialised at 1 ('learn:0.2' at 0.2) and
           clipped to [0, 1] in the forward pass (SSF, learnable), stored as
           the parameter `skip_scale_stage{i}`.
"""

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp


def check_count(skip, num_stages: int, unit: str = 'stages'):
  """One skip setting per stage (DenseNet: dense block; MobileNetV2: group)."""
  if len(skip) != num_stages:
    raise ValueError(f'skip has {len(skip)} entries, the model has {num_stages} {unit}')


def parse_skip(setting) -> tuple[str, float]:
  """Returns ('fixed', k) or ('learn', k_init) for one stage's skip setting."""
  if isinstance(setting, str):
    name, _, init = setting.partition(':')
    if name != 'learn':
      raise ValueError(f"skip setting {setting!r}: expected a number in [0, 1], 'learn' or 'learn:K'")
    k = float(init) if init else 1.0
    kind = 'learn'
  else:
    k, kind = float(setting), 'fixed'
  if not 0.0 <= k <= 1.0:
    raise ValueError(f'skip setting {setting!r}: k must lie in [0, 1]')
  return kind, k


def stage_skip_scale(module: nn.Module, stage: int, setting, dtype):
  """The factor for stage `stage` (1-based): a Python float, or the clipped learnable parameter."""
  kind, k = parse_skip(setting)
  if kind == 'fixed':
    return k
  raw = module.param(f'skip_scale_stage{stage}', nn.initializers.constant(k), (), jnp.float32)
  return jnp.clip(raw, 0.0, 1.0).astype(dtype)


def add_skip(branch, identity: Callable[[], jnp.ndarray], skip_scale):
  """branch + k * identity(); the identity is not even computed when k is a fixed 0."""
  if isinstance(skip_scale, float) and skip_scale == 0.0:
    return branch
  if isinstance(skip_scale, float) and skip_scale == 1.0:
    return branch + identity()
  return branch + skip_scale * identity()
