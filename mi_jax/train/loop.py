"""The skeleton every training loop shares (the classifier trainer and the GAN job): resume from the
latest checkpoint of the same run, restore the input iterator, and average logged metrics over a window
with a finite check."""

from absl import logging
import jax
import ml_collections
import numpy as np

from mi_jax.train import checkpoint, reporting

# Identity fields a relaunch may change on purpose (train.resume_with_new_optim): the optimiser's settings.
NEW_OPTIM_FLAG = 'train.resume_with_new_optim'


def restore_latest(
    ckpt: checkpoint.Checkpointer,
    state,
    config: ml_collections.ConfigDict,
    workdir: str,
    fields=checkpoint.IDENTITY_FIELDS,
):
  """(state, data-iterator state or None, start step): the latest checkpoint of this run, or `state` at step 0.

  A checkpoint written by another run (an identity field differs) is refused, naming the fields. A
  changed config.optim is accepted with config.train.resume_with_new_optim, and recorded in
  `<workdir>/run_history.json`: how a diverged run continues from its last good checkpoint.
  """
  start_step = ckpt.latest_step() or 0
  if not start_step:
    return state, None, 0
  saved, where = ckpt.restore_config(start_step), f'{workdir}/checkpoints/{start_step}'
  optim_fields = [f for f in fields if f == 'optim']
  checkpoint.check_same_run(saved, config, where, [f for f in fields if f != 'optim'])
  changed = reporting.differing_leaves(
      checkpoint.run_identity(saved, optim_fields), checkpoint.run_identity(reporting.config_json(config), optim_fields)
  )
  if changed:
    if not config.train.get('resume_with_new_optim', False):
      checkpoint.check_same_run(
          saved,
          config,
          where,
          optim_fields,
          hint=(
              'To continue this run from that checkpoint with the new optimiser settings, relaunch with '
              f'--config.{NEW_OPTIM_FLAG}=True (the change is recorded in {workdir}/run_history.json); '
              'else use a fresh --workdir.'
          ),
      )
    reporting.append_history(
        workdir, {'step': start_step, 'changed': {k: list(v) for k, v in changed.items()}, 'by': NEW_OPTIM_FLAG}
    )
    logging.warning('Continuing %s from step %d with a changed optimiser: %s', workdir, start_step, changed)
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

  def flush(self, step: int, workdir: str, hint: str, prefix: str = '', loss_limit: float = 0.0) -> dict:
    """{prefix + key: mean} of the window, which starts anew; stops the run on a non-finite mean
    (or a loss above `loss_limit` > 0)."""
    values = jax.device_get(self._values)
    self._values = {}
    summary = {f'{prefix}{k}': float(np.mean(np.stack(v))) for k, v in values.items()}
    reporting.check_finite(step, summary, workdir, hint, loss_limit=loss_limit)
    return summary
