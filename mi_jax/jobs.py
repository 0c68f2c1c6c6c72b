"""The jobs launch.py can run, their config validation, and what every job run shares.

A job is a module (listed in JOBS) that exports `run(config, workdir)` and `validate_config(config)`;
`validate_config` and `run` here dispatch to it. Adding a job is one module and one line in JOBS.
"""

import contextlib
import importlib
import logging as logging_std
import os
import signal
import threading

from absl import logging
import ml_collections

from mi_jax import config_checks, errors

# config.job -> the module that runs it (imported on use: a job's dependencies load only when it runs).
JOBS = {
    'train': 'mi_jax.train.trainer',
    'tts': 'mi_jax.defenses.tts',
    'tl_dmi': 'mi_jax.defenses.tl_dmi',
    'gan': 'mi_jax.train.gan',
    'gan64': 'mi_jax.train.gan64',
    'plgmi_gan': 'mi_jax.train.plgmi_gan',
    'import_stylegan': 'mi_jax.convert.stylegan',
    'attack_ppa': 'mi_jax.attacks.ppa',
    'attack_ifgmi': 'mi_jax.attacks.ifgmi',
    'attack_gmi': 'mi_jax.attacks.gmi',
    'attack_kedmi': 'mi_jax.attacks.gmi',
    'attack_plgmi': 'mi_jax.attacks.plgmi',
    'evaluate': 'mi_jax.metrics.evaluate',
    'reproduce': 'mi_jax.reproduce',
}


class _LibraryDetailFilter(logging_std.Filter):
  """Drops INFO chatter of the checkpoint/IO libraries (orbax logs every save step by step)."""

  _NOISY = (f'{os.sep}orbax{os.sep}', f'{os.sep}tensorstore{os.sep}', f'{os.sep}jax{os.sep}_src{os.sep}xla_bridge')

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or not any(p in record.pathname for p in self._NOISY)


def quiet_library_logs():
  logging.get_absl_handler().addFilter(_LibraryDetailFilter())


# jax_default_matmul_precision values: 'highest' is true float32 (the paper's V100s); 'default' lets
# A100/H100 run float32 convs and matmuls in TF32 (bench/matmul_precision.py measures the difference).
MATMUL_PRECISIONS = ('default', 'high', 'highest', 'bfloat16', 'tensorfloat32', 'float32')


def set_matmul_precision(config: ml_collections.ConfigDict):
  """Applies config.matmul_precision to every computation of the job that follows."""
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update('jax_default_matmul_precision', config.matmul_precision)


def job_module(name: str):
  """The module that runs job `name`."""
  return importlib.import_module(JOBS[name])


def validate_config(config: ml_collections.ConfigDict):
  """Fails early, naming the field, on values that would only break deep inside a job."""
  config_checks.check_field(config.get('job') in JOBS, 'job', config.get('job'), f'expected one of {sorted(JOBS)}')
  config_checks.check_field(
      config.get('matmul_precision') in MATMUL_PRECISIONS,
      'matmul_precision',
      config.get('matmul_precision'),
      f'expected one of {MATMUL_PRECISIONS}',
  )
  job_module(config.job).validate_config(config)


@contextlib.contextmanager
def sigterm_raises():
  """SIGTERM raises errors.Terminated while a job runs, so it stops like Ctrl-C: saves in flight complete."""
  if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
    yield
    return

  def terminate(signum, frame):
    del signum, frame
    raise errors.Terminated('SIGTERM')

  previous = signal.signal(signal.SIGTERM, terminate)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def run(config: ml_collections.ConfigDict, workdir: str):
  """Validates `config`, applies its matmul precision and runs its job in `workdir`."""
  validate_config(config)
  set_matmul_precision(config)
  os.makedirs(workdir, exist_ok=True)
  with sigterm_raises():
    return job_module(config.job).run(config, workdir)
