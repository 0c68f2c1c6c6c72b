"""PPA's latent optimisation: one jitted function runs every step of a batch of latents.

For each batch: w [B, w_dim] (one w per sample, broadcast to every synthesis
layer) -> G.synthesize (const noise) -> optional clip -> centre crop + resize to
the target's input -> one random resized crop per step (shared by the batch) ->
target logits -> Poincaré loss -> Adam on w. The step loop is a `lax.scan`, so
XLA fuses synthesis, target forward and both backward passes, and the function
compiles once per batch shape. Alongside the loss it records, per step, the norm
of dL/dz_i at each target stage input (the gradient-flow analysis of the paper)
and, as the RoLSS code does (attacks/optimize.py), the mean and standard deviation
of |dL/dw| over every element of the batch's latents.
"""

import dataclasses
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax

from mi_jax.attacks import losses
from mi_jax.data import transforms


@dataclasses.dataclass(frozen=True)
class OptimizeSettings:
  steps: int = 50  # Adam steps per batch (PPA's num_epochs).
  lr: float = 0.005
  betas: tuple[float, float] = (0.1, 0.1)
  lr_milestones: tuple[int, ...] = ()  # Steps at which lr *= lr_gamma (PPA: none for FaceScrub).
  lr_gamma: float = 0.1
  poincare_xi: float = 1e-4
  center_crop: int = 800  # Of the generator image before resizing; 0 = none.
  input_size: int = 224  # The target's input size.
  rrc_scale: tuple[float, float] = (0.9, 1.0)
  rrc_ratio: tuple[float, float] = (1.0, 1.0)
  antialias: bool = True  # Antialiased resizes (upstream PPA); the RoLSS code ran without.
  clip: bool = False  # Clip images to [-1, 1] before the target (PPA: off).
  remat: bool = False  # Recompute the generator in the backward pass (saves memory).


def make_optimizer(settings: OptimizeSettings) -> optax.GradientTransformation:
  schedule = optax.piecewise_constant_schedule(settings.lr, {m: settings.lr_gamma for m in settings.lr_milestones})
  return optax.adam(schedule, b1=settings.betas[0], b2=settings.betas[1], eps=1e-8)


def make_optimize_fn(
    synthesize: Callable[[jax.Array], jax.Array],
    classify: Callable[[jax.Array, dict], jax.Array],
    perturbations_like: Callable[[int], dict],
    settings: OptimizeSettings,
    constrain: Callable | None = None,
):
  """Returns optimize(w0 [B, w_dim], targets [B], valid [B], key) -> (w [B, w_dim], log).

  The latents may also be a dict of [B, ...] arrays with the latent w under 'w' (IF-GMI adds an
  intermediate feature map); `constrain(params, params0)`, if given, maps them back into their allowed
  set after every Adam step (IF-GMI's l1 balls around the values `optimize` started from).
  `synthesize(w)` maps [B, w_dim] to images in [-1, 1]; `classify(x, perturbations)`
  gives logits, adding `perturbations` (zeros) at the stage inputs so their
  gradient is dL/dz_i; `perturbations_like(batch)` makes those zeros. `valid` marks
  the real rows of a batch padded to its fixed size: the loss is the mean over them.
  log = {'loss': [steps] mean loss, 'stage_grad_norm': {name: [steps]} mean ||dL_n/dz_i||,
         'w_grad_abs_mean' / 'w_grad_abs_std': [steps] of |dL/dw| (torch.std: unbiased; w alone),
         'finite': [steps] whether every loss and gradient was finite}, over the valid rows.
  """
  tx = make_optimizer(settings)
  if settings.remat:
    synthesize = jax.checkpoint(synthesize)

  def per_sample_loss(w, perturbations, targets, key):
    images = synthesize(w)
    if settings.clip:
      images = jnp.clip(images, -1.0, 1.0)
    x = transforms.generator_to_classifier(images, settings.center_crop, settings.input_size, settings.antialias)
    x = transforms.random_resized_crop(
        key, x, settings.input_size, settings.rrc_scale, settings.rrc_ratio, settings.antialias
    )
    logits = classify(x, perturbations)
    return losses.poincare_loss(logits.astype(jnp.float32), targets, settings.poincare_xi)

  def optimize(w0, targets, valid, key):
    batch = targets.shape[0]
    zeros = perturbations_like(batch)
    weight = valid.astype(jnp.float32)
    count = jnp.sum(weight)
    mean_over_valid = lambda values: jnp.sum(values * weight) / count

    def step(carry, step_key):
      w, opt_state = carry
      # Summing the per-sample losses makes dL/dz_i[n] the gradient of sample n's own loss; padded rows weigh 0.
      total = lambda w, p: jnp.sum(per_sample_loss(w, p, targets, step_key) * weight)
      loss_sum, (w_grad, stage_grads) = jax.value_and_grad(total, argnums=(0, 1))(w, zeros)
      w_grad = jax.tree.map(lambda g: g / count, w_grad)  # the gradient of the batch-mean loss, as PPA's
      updates, opt_state = tx.update(w_grad, opt_state, w)
      finite = jnp.isfinite(loss_sum) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(w_grad)]))
      new_w = optax.apply_updates(w, updates)
      if constrain is not None:
        new_w = constrain(new_w, w0)
      w = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_w, w)  # a non-finite step: w as it was
      if isinstance(w_grad, dict):
        w_grad = w_grad['w']
      norms = {
          '/'.join(path): mean_over_valid(jnp.sqrt(jnp.sum(jnp.square(g.reshape(batch, -1)), axis=1)))
          for path, g in flax.traverse_util.flatten_dict(stage_grads).items()
      }
      magnitude = jnp.abs(w_grad)
      elements = count * w_grad[0].size
      row_weight = weight.reshape((batch,) + (1,) * (magnitude.ndim - 1))
      abs_mean = jnp.sum(magnitude * row_weight) / elements
      abs_std = jnp.sqrt(jnp.sum(jnp.square(magnitude - abs_mean) * row_weight) / (elements - 1))
      return (w, opt_state), {
          'loss': loss_sum / count,
          'stage_grad_norm': norms,
          'finite': finite,
          'w_grad_abs_mean': abs_mean,
          'w_grad_abs_std': abs_std,
      }

    keys = jax.random.split(key, settings.steps)
    (w, _), log = jax.lax.scan(step, (w0, tx.init(w0)), keys)
    return w, log

  return optimize
