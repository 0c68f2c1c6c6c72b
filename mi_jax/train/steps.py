"""One train step and one eval step; `compile_steps` jits them for a mesh."""

import functools

import jax
import jax.numpy as jnp
import optax

from mi_jax.models import layers
from mi_jax.train import sharding


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def classification_loss(outputs, labels, aux_loss_weight: float = 1.0):
  """(logits, mean cross-entropy, metrics) of a model's training outputs.

  A model with an auxiliary head (Inception-v3 with aux_logits) returns (logits, aux_logits) in
  training; its loss is CE + aux_loss_weight * CE(aux). PPA and the RoLSS code add the two with
  weight 1 (models/classifier.py: `loss = main_loss + aux_loss`); torchvision's reference
  training script uses 0.4.
  """
  if isinstance(outputs, tuple):
    logits, aux_logits = outputs
    main, aux = cross_entropy(logits, labels).mean(), cross_entropy(aux_logits, labels).mean()
    return logits, main + aux_loss_weight * aux, {'main_cross_entropy': main, 'aux_cross_entropy': aux}
  return outputs, cross_entropy(outputs, labels).mean(), {}


def distillation_loss(student_logits, teacher_logits, temperature: float):
  """LOMMA's distillation loss: KL(softmax(t / T) || softmax(s / T)) summed, / T^2, / batch (Re-thinking_MI
  engine.py; with its T = 1 the same as the usual T^2-scaled form)."""
  log_student = jax.nn.log_softmax(student_logits / temperature)
  teacher = jax.nn.softmax(teacher_logits / temperature)
  kl = jnp.sum(teacher * (jnp.log(jnp.clip(teacher, 1e-30)) - log_student))
  return kl / temperature**2 / student_logits.shape[0]


def train_step(
    state, batch, learning_rate_fn, regularizer=None, aux_loss_weight: float = 1.0, teacher=None, temperature=1.0
):
  """Forward/backward on one global batch, BN statistics over the whole batch.

  `regularizer(images, labels, hidden)` -> (loss, metrics), if given, adds a term
  computed from the hidden features the model records (BiDO; layers.sow_hidden).
  `teacher(images)` -> logits, if given, replaces the labels: the loss is distillation_loss (LOMMA's
  surrogates learn the target this way on public images, whose labels are not the target's).
  """
  mutable = ['batch_stats'] + ([layers.HIDDEN_COLLECTION] if regularizer is not None else [])

  def loss_fn(params):
    outputs, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats},
        batch['image'],
        train=True,
        mutable=mutable,
        rngs={'dropout': jax.random.fold_in(state.rng, state.step)},
    )
    if teacher is not None:
      teacher_logits = jax.lax.stop_gradient(teacher(batch['image']))
      logits, loss = outputs, distillation_loss(outputs, teacher_logits, temperature)
      return loss, (
          logits,
          updates['batch_stats'],
          {'teacher_agreement': jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1))},
      )
    logits, loss, extra = classification_loss(outputs, batch['label'], aux_loss_weight)
    if regularizer is not None:
      penalty, penalty_metrics = regularizer(batch['image'], batch['label'], updates.get(layers.HIDDEN_COLLECTION, {}))
      extra = {'cross_entropy': loss, **extra, **penalty_metrics}
      loss = loss + penalty
    return loss, (logits, updates['batch_stats'], extra)

  (loss, (logits, batch_stats, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {
      **extra,
      'loss': loss,
      'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),  # vs the public set's own labels when distilling
      'learning_rate': learning_rate_fn(state.step - 1),
      'grad_norm': optax.tree.norm(grads),
  }
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


def compile_steps(
    mesh, learning_rate_fn, regularizer=None, aux_loss_weight: float = 1.0, teacher=None, temperature: float = 1.0
):
  """jit both steps: state replicated (and donated), batches split over the 'data' axis."""
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  p_train_step = jax.jit(
      functools.partial(
          train_step,
          learning_rate_fn=learning_rate_fn,
          regularizer=regularizer,
          aux_loss_weight=aux_loss_weight,
          teacher=teacher,
          temperature=temperature,
      ),
      in_shardings=(repl, data),
      out_shardings=(repl, repl),
      donate_argnums=0,
  )
  p_eval_step = jax.jit(eval_step, in_shardings=(repl, data), out_shardings=repl)
  return p_train_step, p_eval_step
