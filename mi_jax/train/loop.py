"""The skeleton every training loop shares (the classifier trainer and the GAN job): resume from the
latest checkpoint of the same run, restore the input iterator, and average logged metrics over a window
with a finite check."""

import jax
import ml_collections
import numpy as np

from mi_jax.train import checkpoint, reporting


def restore_latest(
    ckpt: checkpoint.Checkpointer,
    state,
    config: ml_collections.ConfigDict,
    workdir: str,
    fields=checkpoint.IDENTITY_FIELDS,
):
  """(state, data-iterator state or None, start step): the latest checkpoint of this run, or `state` at step 0.

  A checkpoint written by another run (an identity field differs) is refused, naming the fields.
  """
  start_step = ckpt.latest_step() or 0
  if not start_step:
    return state, None, 0
  checkpoint.check_same_run(ckpt.restore_config(start_step), config, f'{workdir}/checkpoints/{start_step}', fields)
  state, data_state, _ = ckpt.restore(start_step, checkpoint.abstract_like(state))
  return state, data_state, start_step


def resumed_iterator(dataset, data_state):
  """An iterator over a grain dataset, continued from a saved iterator state when there is one."""
  iterator = iter(dataset)
  if data_state is not None:
    iterator.set_state(data_state)
  return iterator


class MetricWindow:
  """Metrics of the steps since the last log line; each key is averaged over the steps that reported it."""

  def __init__(self):
    self._values = {}

  def add(self, metrics: dict):
    for key, value in metrics.items():
      self._values.setdefault(key, []).append(value)

  def flush(self, step: int, workdir: str, hint: str, prefix: str = '') -> dict:
    """{prefix + key: mean} of the window, which starts anew; stops the run on a non-finite mean."""
    values = jax.device_get(self._values)
    self._values = {}
    summary = {f'{prefix}{k}': float(np.mean(np.stack(v))) for k, v in values.items()}
    reporting.check_finite(step, summary, workdir, hint)
    return summary
