"""Identity losses of MI attacks."""

import jax
import jax.numpy as jnp


def poincare_loss(logits: jax.Array, targets: jax.Array, xi: float = 1e-4) -> jax.Array:
  """PPA's Poincaré loss per sample: hyperbolic distance between L1-normalised logits and a near-one-hot target.

    u = logits / ||logits||_1,  v = clip(onehot(y) - xi, 0, 1),
    loss = arccosh(1 + 2 ||u - v||^2 / ((1 - ||u||^2) (1 - ||v||^2))).

  It does not saturate as the target class wins (unlike cross-entropy), so its
  value stays high while the confidence rises (PPA issue #7).
  """
  u = logits / jnp.sum(jnp.abs(logits), axis=-1, keepdims=True)
  v = jnp.clip(jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype) - xi, 0.0, 1.0)
  u_norm2 = jnp.sum(jnp.square(u), axis=-1)
  v_norm2 = jnp.sum(jnp.square(v), axis=-1)
  diff_norm2 = jnp.sum(jnp.square(u - v), axis=-1)
  delta = 2.0 * diff_norm2 / ((1.0 - u_norm2) * (1.0 - v_norm2))
  return jnp.arccosh(1.0 + delta)


def max_margin_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """PLG-MI's max-margin loss per sample: max_{j != y} l_j - l_y (unbounded below; minimised).

  As the reference (PLG-MI losses.py) takes the runner-up of the two largest logits, the gradient reaches
  only l_y and the largest other logit.
  """
  label_logit = jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]
  others = jnp.where(jax.nn.one_hot(targets, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return jnp.max(others, axis=1) - label_logit
