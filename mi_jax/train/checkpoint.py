"""Orbax checkpoints of a training run: state + data-iterator state + config.

Layout: `<workdir>/checkpoints/<step>/{state, data, config}`. Kept: the latest
`keep` checkpoints plus the one with the best test accuracy. Saves are
asynchronous and atomic, so a job killed mid-save resumes from the previous one.
"""

import contextlib
import json
import os
import signal
import threading
from typing import Any, NamedTuple

from absl import logging
from etils import epath
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mi_jax import config_checks, errors, models
from mi_jax.defenses import label_smoothing, mid, transfer, trapdoor
from mi_jax.train import reporting

BEST_METRIC = 'test_accuracy'


class CheckpointError(errors.MiJaxError, ValueError):
  """A checkpoint that cannot be used with the current config."""


def _manager(directory: str, keep: int, best_metric: str | None) -> ocp.CheckpointManager:
  policies = ocp.checkpoint_managers
  kept = [policies.LatestN(keep)]
  best = {}
  if best_metric is not None:
    kept.append(
        policies.BestN(
            get_metric_fn=lambda m: m[best_metric], reverse=False, n=1, keep_checkpoints_without_metrics=False
        )
    )
    # best_fn also makes Orbax write the metrics, so BestN survives a restart.
    best = dict(best_fn=lambda m: m[best_metric], best_mode='max')
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policies.AnyPreservationPolicy(kept),
      enable_async_checkpointing=True,
      cleanup_tmp_directories=True,  # half-written saves of a killed job
      **best,
  )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


@contextlib.contextmanager
def _signals_deferred(signums=(signal.SIGINT, signal.SIGTERM)):
  """Holds Ctrl-C and SIGTERM while a save is handed to orbax, then delivers them.

  Interrupted half-way, the save is lost and orbax's background commit waits minutes for a
  directory that is never made; held, the save completes and the job stops right after it.
  """
  if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
    yield
    return
  received = []
  previous = {signum: signal.signal(signum, lambda signum, _: received.append(signum)) for signum in signums}
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    if received:
      signal.raise_signal(received[0])  # now the previous handler acts on it


class Checkpointer:
  """Saves and restores one run's state, data-iterator state and config.

  Keeps the latest `keep` checkpoints, plus the best by `best_metric` (higher is
  better) unless it is None. Use it as a context manager: however the job ends (an
  error, Ctrl-C, SIGTERM), a save in flight is completed before the job exits.
  """

  def __init__(self, directory: str, keep: int = 2, best_metric: str | None = BEST_METRIC):
    self.directory = directory
    self._manager = _manager(directory, keep, best_metric)

  def latest_step(self):
    return self._manager.latest_step()

  def best_step(self):
    return self._manager.best_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict, config: ml_collections.ConfigDict, metrics: dict):
    with _signals_deferred():
      self._save(step, state, data_state, config, metrics)

  def _save(self, step: int, state, data_state: dict, config: ml_collections.ConfigDict, metrics: dict):
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(reporting.config_json(config)),
        ),
        metrics={k: float(v) for k, v in metrics.items()},
    )

  def restore(self, step: int, abstract_state):
    """(state, data_state, saved config dict) at `step`, placed like `abstract_state`."""
    try:
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()
          ),
      )
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f'checkpoint {self.directory}/{step} does not fit the model/optimizer of the current config '
          f'({type(e).__name__}: {str(e)[:500]}). Use a fresh --workdir or the config it was written with.'
      ) from e
    return restored.state, restored.data, restored.config

  def metrics(self, step: int) -> dict:
    """The test metrics saved with the checkpoint at `step` ({} if none were)."""
    return dict(self._manager.metrics(step) or {})

  def restore_config(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, traceback):
    if exc_type is not None:  # the job stops early: finish the save in flight, then say where it stands
      self.wait()
      latest = self.latest_step()
      logging.warning(
          'Stopping on %s. Saves in flight were completed; the latest complete checkpoint is %s.',
          exc_type.__name__,
          f'{self.directory}/{latest}' if latest is not None else 'none (nothing saved yet)',
      )
    self.close()


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def latest_step_in(workdir: str):
  """Latest complete checkpoint step of the run in `workdir` (None if there is none)."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return None
  with ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(create=False)) as mngr:
    return mngr.latest_step()


def _read_only_manager(workdir: str) -> ocp.CheckpointManager:
  """A manager that reads the run in `workdir` (best step and metrics included) and never writes or cleans."""
  options = ocp.CheckpointManagerOptions(
      create=False, read_only=True, best_fn=lambda m: m[BEST_METRIC], best_mode='max'
  )
  return ocp.CheckpointManager(os.path.abspath(checkpoint_dir(workdir)), options=options)


def resolve_step(workdir: str, which='latest') -> tuple[int, dict]:
  """(step, its saved test metrics) of the checkpoint `which` names in the run in `workdir`.

  `which`: 'latest', 'best' (the highest test accuracy, the checkpoint the RoLSS code keeps),
  or a step number (int or digits).
  """
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise FileNotFoundError(f'{workdir} holds no checkpoints/ directory: train a classifier there first')
  with _read_only_manager(workdir) as mngr:
    if which == 'latest':
      step = mngr.latest_step()
    elif which == 'best':
      step = mngr.best_step()
    elif str(which).isdigit():
      step = int(which)
      if step not in mngr.all_steps():
        raise CheckpointError(f'{workdir} has no checkpoint at step {step}; it has {sorted(mngr.all_steps())}')
    else:
      raise CheckpointError(f'checkpoint {which!r}: expected {config_checks.CHECKPOINT_CHOICES}')
    if step is None:
      raise FileNotFoundError(f'{workdir} holds no complete checkpoint')
    return step, dict(mngr.metrics(step) or {})


def load_config(workdir: str, step: int) -> dict:
  """The config dict saved with the run in `workdir` at `step`, read without touching the directory."""
  with _read_only_manager(workdir) as mngr:
    return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config


def restore_on_host(directory: str) -> dict:
  """A pytree saved by orbax at `directory`, as numpy arrays, whatever devices wrote it.

  The target tree is built from the saved shapes and dtypes on the CPU, so a checkpoint written on
  8 GPUs (or several hosts) loads in a notebook on one device.
  """
  path = epath.Path(os.path.abspath(directory))
  handler = ocp.StandardCheckpointHandler()
  try:
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend='cpu')[0])  # this process's own
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), handler.metadata(path))
    return jax.tree.map(np.asarray, handler.restore(path, args=ocp.args.StandardRestore(target)))
  finally:
    handler.close()


def load_variables(workdir: str, step: int | None = None) -> dict:
  """{'params', 'batch_stats'} (numpy) of the run in `workdir` at `step` (default: latest), on any device count."""
  step = latest_step_in(workdir) if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {checkpoint_dir(workdir)}')
  state = restore_on_host(os.path.join(checkpoint_dir(workdir), str(step), 'state'))
  return {'params': state['params'], 'batch_stats': state['batch_stats']}


class Classifier(NamedTuple):
  """A trained classifier as load_classifier returns it: `model.apply(variables, images, train=False)`."""

  model: nn.Module  # rebuilt from the config saved with the checkpoint
  variables: dict  # {'params', 'batch_stats'} as numpy arrays
  config: dict  # the run's config as saved with the checkpoint
  step: int  # the checkpoint's step
  metrics: dict[str, Any]  # its test metrics (test_accuracy, test_top5, test_loss)


def load_classifier(workdir: str, step='latest') -> Classifier:
  """The classifier trained in `workdir` at checkpoint `step`: 'latest', 'best' or a step number.

  Works on any device count, whatever the training ran on. `mi_jax.load_classifier` is this function.
  """
  step, metrics = resolve_step(workdir, step)
  saved = load_config(workdir, step)
  model = models.build_model(ml_collections.ConfigDict(saved['model']))
  return Classifier(model, load_variables(workdir, step), saved, step, metrics)


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) to restore into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# Config fields whose change makes an existing checkpoint meaningless for the run.
IDENTITY_FIELDS = (
    'model',
    'data.name',
    'data.image_size',
    'optim',
    'bido',
    'mid',
    'label_smoothing',
    'transfer',
    'trapdoor',
    'train.batch_size',
    'train.epochs',
    'seed',
)
# Identity sections added since runs were saved: a saved config without one ran with the defense off.
ADDED_SECTIONS = {
    'mid': mid.default_config,
    'label_smoothing': label_smoothing.default_config,
    'transfer': transfer.default_config,
    'trapdoor': trapdoor.default_config,
}


def run_identity(config: dict, fields=IDENTITY_FIELDS) -> dict:
  """The identity fields (dotted) of a config dict, as a nested dict."""
  identity = {}
  for field in fields:
    value = config
    for part in field.split('.'):
      value = value.get(part) if isinstance(value, dict) else None
    identity[field] = value
  return identity


def check_same_run(saved: dict, config: ml_collections.ConfigDict, where: str, fields=IDENTITY_FIELDS, hint: str = ''):
  """Raises CheckpointError naming every identity leaf that differs from the config saved in a checkpoint."""
  saved_identity = run_identity(saved, fields)
  if isinstance(saved_identity.get('model'), dict):  # fields added since: the value the saved run had
    defaults = json.loads(json.dumps(models.option_defaults()))
    saved_identity['model'] = {**defaults, **saved_identity['model']}
  for section, default_config in ADDED_SECTIONS.items():
    if section in saved_identity and saved_identity[section] is None:
      saved_identity[section] = json.loads(json.dumps(default_config().to_dict()))
  try:
    reporting.check_same_run(saved_identity, run_identity(reporting.config_json(config), fields), where, 'run', hint)
  except reporting.DifferentRunError as e:
    raise CheckpointError(str(e)) from None
