"""The train state: params, batch_stats, optimiser state, step and a PRNG key."""

from typing import Any

import flax
from flax.training import train_state
import jax
import optax

from mi_jax import models


class TrainState(train_state.TrainState):
  batch_stats: Any
  rng: jax.Array  # raw uint32[2] key (Orbax-friendly); fold_in(step) for per-step randomness
  defense: Any = flax.struct.field(default_factory=dict)  # what a defense trains beside the model (Trap-MID)


def create_train_state(model, tx: optax.GradientTransformation, input_shape, seed: int) -> TrainState:
  """Initialises `model` on a zero batch of `input_shape` ([N, H, W, C])."""
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = models.init_variables(model, input_shape, init_rng, train=False)
  return TrainState.create(
      apply_fn=model.apply,
      params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      tx=tx,
      rng=state_rng,
  )
