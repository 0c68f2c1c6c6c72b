"""One train step and one eval step; `compile_steps` jits them for a mesh."""

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from mi_jax.defenses import label_smoothing
from mi_jax.train import sharding


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


class Regularizer(NamedTuple):
  """A loss term computed from what the model records in one collection during the forward pass."""

  collection: str  # the collection the model sows into (made mutable in the training forward pass)
  fn: Callable  # (images, labels, recorded collection) -> (loss, metrics)


def classification_loss(outputs, labels, aux_loss_weight: float = 1.0, smoothing: float | None = None, weights=None):
  """(logits, cross-entropy, metrics) of a model's training outputs.

  A model with an auxiliary head (Inception-v3 with aux_logits) returns (logits, aux_logits) in
  training; its loss is CE + aux_loss_weight * CE(aux). PPA and the RoLSS code add the two with
  weight 1 (models/classifier.py: `loss = main_loss + aux_loss`); torchvision's reference
  training script uses 0.4.
  `smoothing`: label smoothing's alpha (mi_jax/defenses/label_smoothing.py; negative: NegLS); `weights`: per
  example, summing to 1 (Trap-MID's clean and triggered halves), instead of the mean.
  """
  per_example = lambda logits: (
      cross_entropy(logits, labels) if smoothing is None else label_smoothing.cross_entropy(logits, labels, smoothing)
  )
  reduce = (lambda x: jnp.mean(x)) if weights is None else (lambda x: jnp.sum(x * weights))
  if isinstance(outputs, tuple):
    logits, aux_logits = outputs
    main, aux = reduce(per_example(logits)), reduce(per_example(aux_logits))
    return logits, main + aux_loss_weight * aux, {'main_cross_entropy': main, 'aux_cross_entropy': aux}
  return outputs, reduce(per_example(outputs)), {}


def distillation_loss(student_logits, teacher_logits, temperature: float):
  """LOMMA's distillation loss: KL(softmax(t / T) || softmax(s / T)) summed, / T^2, / batch (Re-thinking_MI
  engine.py; with its T = 1 the same as the usual T^2-scaled form)."""
  log_student = jax.nn.log_softmax(student_logits / temperature)
  teacher = jax.nn.softmax(teacher_logits / temperature)
  kl = jnp.sum(teacher * (jnp.log(jnp.clip(teacher, 1e-30)) - log_student))
  return kl / temperature**2 / student_logits.shape[0]


def train_step(
    state,
    batch,
    learning_rate_fn,
    regularizers: Sequence[Regularizer] = (),
    aux_loss_weight: float = 1.0,
    teacher=None,
    temperature=1.0,
    smoothing_fn=None,
    batch_transform=None,
):
  """Forward/backward on one global batch, BN statistics over the whole batch.

  `regularizers` add terms computed from what the model records (BiDO: hidden features, layers.sow_hidden;
  MID: the bottleneck's statistics).
  `teacher(images)` -> logits, if given, replaces the labels: the loss is distillation_loss (LOMMA's
  surrogates learn the target this way on public images, whose labels are not the target's).
  `smoothing_fn(step)` -> label smoothing's alpha at that step (LS/NegLS and their schedule).
  `batch_transform(state, batch, rng)` -> (state, batch, metrics), if given, remakes the batch first (Trap-MID:
  augmented clean and triggered images with per-example weights, its triggers and discriminator updated).
  """
  mutable = ['batch_stats'] + [r.collection for r in regularizers]
  rng = jax.random.fold_in(state.rng, state.step)
  transform_metrics = {}
  if batch_transform is not None:
    state, batch, transform_metrics = batch_transform(state, batch, jax.random.fold_in(rng, 1))
  smoothing = None if smoothing_fn is None else smoothing_fn(state.step)

  def loss_fn(params):
    outputs, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats},
        batch['image'],
        train=True,
        mutable=mutable,
        rngs={'dropout': rng},
    )
    if teacher is not None:
      teacher_logits = jax.lax.stop_gradient(teacher(batch['image']))
      logits, loss = outputs, distillation_loss(outputs, teacher_logits, temperature)
      return loss, (
          logits,
          updates['batch_stats'],
          {'teacher_agreement': jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1))},
      )
    logits, loss, extra = classification_loss(outputs, batch['label'], aux_loss_weight, smoothing, batch.get('weight'))
    if regularizers:
      extra = {'cross_entropy': loss, **extra}
    for regularizer in regularizers:
      penalty, penalty_metrics = regularizer.fn(batch['image'], batch['label'], updates.get(regularizer.collection, {}))
      extra.update(penalty_metrics)
      loss = loss + penalty
    return loss, (logits, updates['batch_stats'], extra)

  (loss, (logits, batch_stats, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {
      **transform_metrics,
      **extra,
      'loss': loss,
      'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),  # vs the public set's own labels when distilling
      'learning_rate': learning_rate_fn(state.step - 1),
      'grad_norm': optax.tree.norm(grads),
  }
  if smoothing is not None:
    metrics['label_smoothing'] = smoothing
  return state, metrics


def eval_step(state, batch):
  """Sums over the real (mask = 1) examples: loss, top-1 and top-5 hits, count."""
  logits = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats}, batch['image'], train=False)
  mask = batch['mask']
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  return {
      'loss': jnp.sum(cross_entropy(logits, batch['label']) * mask),
      'top1': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask),
      'top5': jnp.sum(jnp.any(top5 == batch['label'][:, None], -1) * mask),
      'count': jnp.sum(mask),
  }


def compile_steps(mesh, learning_rate_fn, **objective):
  """jit both steps: state replicated (and donated), batches split over the 'data' axis. `objective`: train_step's
  keyword arguments after learning_rate_fn (regularizers, teacher, smoothing_fn, ...)."""
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  p_train_step = jax.jit(
      functools.partial(train_step, learning_rate_fn=learning_rate_fn, **objective),
      in_shardings=(repl, data),
      out_shardings=(repl, repl),
      donate_argnums=0,
  )
  p_eval_step = jax.jit(eval_step, in_shardings=(repl, data), out_shardings=repl)
  return p_train_step, p_eval_step
