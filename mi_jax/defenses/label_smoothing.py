"""Label smoothing as an MI defense: negative smoothing (NegLS) resists inversion, positive (LS) helps it.

Struppek, Hintersdorf and Kersting, "Be Careful What You Smooth For" (ICLR 2024), in PPA's repository
(LukasStruppek/Plug-and-Play-Attacks): the targets are (1 - alpha) onehot(y) + alpha / C, alpha in (-inf, 1];
`losses/label_smoothing.py` computes (1 - alpha) NLL + alpha mean_c(-log p_c), the cross-entropy against them.

Schedule (`train_model.py`, set once per epoch in `models/classifier.py`), for negative alpha only (positive
alpha goes to torch's CrossEntropyLoss(label_smoothing=alpha) from the first epoch): over N epochs,

    epoch < 50            alpha_e = 0
    50 <= epoch < 75      alpha_e = alpha (epoch + 1 - 50) / (N - 50)
    epoch >= 75           alpha_e = alpha

so with N = 100 it ramps to alpha / 2 at epoch 74 and jumps to alpha at 75 (as coded). Until commit
9a79baf (2024-08-07, "fix: ls scheduler not employed") `fit` was never given the scheduler, so the
repository trained with the full alpha from epoch 0: schedule='constant' reproduces that. The 50 and 75
are config fields as shares of the epochs (0.5, 0.75), so a short demo run keeps the shape.
"""

import jax.numpy as jnp
import ml_collections
import optax

from mi_jax import config_checks

SCHEDULES = ('ppa', 'constant')


def default_config() -> ml_collections.ConfigDict:
  """config.label_smoothing of every classifier config: off (alpha = 0)."""
  config = ml_collections.ConfigDict()
  config.alpha = 0.0  # > 0: LS; < 0: NegLS (targets (1 - alpha) onehot + alpha / C); 0: off.
  config.schedule = 'ppa'  # negative alpha: 'ppa' (its scheduler, as coded) or 'constant' (what it ran until 9a79baf).
  config.start_fraction = 0.5  # 'ppa': share of the epochs with alpha = 0 (epoch 50 of 100).
  config.full_fraction = 0.75  # 'ppa': share of the epochs after which the full alpha applies (epoch 75 of 100).
  return config


def validate_config(config: ml_collections.ConfigDict):
  check, ls = config_checks.check_field, config.label_smoothing
  check(ls.alpha <= 1.0, 'label_smoothing.alpha', ls.alpha, 'expected alpha <= 1 (negative: NegLS)')
  check(ls.schedule in SCHEDULES, 'label_smoothing.schedule', ls.schedule, f'expected one of {SCHEDULES}')
  check(
      0.0 <= ls.start_fraction <= ls.full_fraction <= 1.0,
      'label_smoothing',
      (ls.start_fraction, ls.full_fraction),
      'expected 0 <= start_fraction <= full_fraction <= 1',
  )


def is_enabled(config: ml_collections.ConfigDict) -> bool:
  return bool(config.label_smoothing.alpha)


def smoothed_targets(labels, num_classes: int, alpha):
  """[B] int labels -> [B, C] targets (1 - alpha) onehot + alpha / C (negative entries for NegLS)."""
  return optax.smooth_labels(jnp.eye(num_classes)[labels], alpha)


def cross_entropy(logits, labels, alpha):
  """Per-example cross-entropy of `logits` against the smoothed targets of `labels`."""
  return optax.softmax_cross_entropy(logits, smoothed_targets(labels, logits.shape[-1], alpha))


def epoch_alpha(epoch: int, alpha: float, epochs: int, schedule: str, start_fraction: float, full_fraction: float):
  """alpha in (0-based) `epoch` of `epochs`: the schedule above for negative alpha, alpha itself otherwise."""
  if alpha >= 0 or schedule == 'constant':
    return alpha
  start, full = start_fraction * epochs, full_fraction * epochs
  if epoch < start:
    return 0.0
  if epoch < full:
    return alpha * (epoch + 1 - start) / (epochs - start)
  return alpha


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """step -> alpha (jittable): epoch_alpha, set once per epoch as the reference does."""
  ls = config.label_smoothing
  values = [
      epoch_alpha(e, ls.alpha, config.train.epochs, ls.schedule, ls.start_fraction, ls.full_fraction)
      for e in range(max(config.train.epochs, 1))
  ]
  table = jnp.asarray(values, jnp.float32)
  return lambda step: table[jnp.minimum(step // steps_per_epoch, len(values) - 1)]
