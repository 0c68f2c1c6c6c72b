"""The jobs launch.py can run, config validation, and multi-host start-up."""

import importlib
import logging as logging_std
import os

from absl import logging
import ml_collections

# job name -> 'module:function', called as function(config, workdir).
JOBS = {
    'train': 'mi_jax.train.trainer:train_and_evaluate',
    'tts': 'mi_jax.defenses.tts:train_tts',
    'gan': 'mi_jax.train.gan:train_gan',
    'import_stylegan': 'mi_jax.convert.stylegan:import_stylegan',
    'attack_ppa': 'mi_jax.attacks.ppa:attack_ppa',
    'evaluate': 'mi_jax.metrics.evaluate:evaluate_job',
    'reproduce': 'mi_jax.reproduce:reproduce',
}

# Environment variables by which cluster launchers announce a multi-process job.
_MULTI_PROCESS_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE')


def is_multi_process_env(environ=os.environ) -> bool:
  """True when a launcher started several processes (SLURM, Open MPI, PMI) or named a coordinator."""
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return True
  for name in _MULTI_PROCESS_ENV[1:]:
    try:
      if int(environ.get(name, '1')) > 1:
        return True
    except ValueError:
      pass
  return False


def maybe_initialize_distributed():
  if is_multi_process_env():
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()  # reads the coordinator, process count and id from the environment
    logging.info('Process %d of %d', jax.process_index(), jax.process_count())


class _LibraryDetailFilter(logging_std.Filter):
  """Drops INFO chatter of the checkpoint/IO libraries (orbax logs every save step by step)."""
  _NOISY = (f'{os.sep}orbax{os.sep}', f'{os.sep}tensorstore{os.sep}', f'{os.sep}jax{os.sep}_src{os.sep}xla_bridge')

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or not any(p in record.pathname for p in self._NOISY)


def quiet_library_logs():
  logging.get_absl_handler().addFilter(_LibraryDetailFilter())


def check_field(condition: bool, field: str, value, expected: str, error: type[Exception] = ValueError):
  """Raises `error` naming `config.<field>` and its value unless `condition` holds."""
  if not condition:
    raise error(f'config.{field}={value!r}: {expected}')


def check_positive_ints(config: ml_collections.ConfigDict, fields, error: type[Exception] = ValueError):
  """Each dotted field of `config` ('train.batch_size') must be a positive integer."""
  for field in fields:
    value = config
    for part in field.split('.'):
      value = value[part]
    check_field(isinstance(value, int) and value > 0, field, value, 'expected a positive integer', error)


# jax_default_matmul_precision values: 'highest' is true float32 (the paper's V100s); 'default' lets
# A100/H100 run float32 convs and matmuls in TF32 (bench/matmul_precision.py measures the difference).
MATMUL_PRECISIONS = ('default', 'high', 'highest', 'bfloat16', 'tensorfloat32', 'float32')


def set_matmul_precision(config: ml_collections.ConfigDict):
  """Applies config.matmul_precision to every computation of the job that follows."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_default_matmul_precision', config.matmul_precision)


def validate_config(config: ml_collections.ConfigDict):
  """Fails early, naming the field, on values that would only break deep inside a job."""
  check_field(config.job in JOBS, 'job', config.job, f'expected one of {sorted(JOBS)}')
  check_field(config.get('matmul_precision') in MATMUL_PRECISIONS, 'matmul_precision', config.get('matmul_precision'),
              f'expected one of {MATMUL_PRECISIONS}')
  if config.job == 'gan':
    from mi_jax.train import gan  # pylint: disable=g-import-not-at-top
    return gan.validate_config(config)
  if config.job == 'attack_ppa':
    from mi_jax.attacks import ppa  # pylint: disable=g-import-not-at-top
    return ppa.validate_config(config)
  if config.job == 'evaluate':
    from mi_jax.metrics import evaluate  # pylint: disable=g-import-not-at-top
    return evaluate.validate_config(config)
  if config.job == 'reproduce':
    from mi_jax import reproduce  # pylint: disable=g-import-not-at-top
    return reproduce.validate_config(config)
  if config.job == 'import_stylegan':
    from mi_jax.convert import stylegan  # pylint: disable=g-import-not-at-top
    return stylegan.validate_config(config)
  _validate_classifier_config(config)


def _validate_classifier_config(config: ml_collections.ConfigDict):
  from mi_jax import models  # pylint: disable=g-import-not-at-top
  from mi_jax.data import sources  # pylint: disable=g-import-not-at-top
  models.build_model(config.model)  # validates name, dtype and skip
  sources.resolve(config.data)  # validates the data set name without touching data_dir
  check_positive_ints(config, ('train.batch_size', 'train.eval_every_epochs', 'train.log_every_steps',
                               'train.keep_checkpoints', 'data.image_size', 'model.num_classes'))
  epochs, init_file = config.train.epochs, config.model.init_file
  check_field(isinstance(epochs, int) and epochs >= 0, 'train.epochs', epochs,
              'expected an integer >= 0 (0 = use config.model.init_file as it is)')
  check_field(epochs > 0 or bool(init_file), 'train.epochs', epochs,
              '0 means "use config.model.init_file as it is", but config.model.init_file is empty')
  check_field(not init_file or os.path.isfile(os.path.expanduser(init_file)), 'model.init_file', init_file,
              'no such file', FileNotFoundError)
  check_field(config.train.aux_loss_weight >= 0, 'train.aux_loss_weight', config.train.aux_loss_weight,
              'expected >= 0')
  check_field(config.model.width >= 0, 'model.width', config.model.width, 'expected >= 0 (0 = the architecture default)')
  check_field(config.num_devices >= 0, 'num_devices', config.num_devices, 'expected >= 0 (0 = all devices)')
  check_field(config.data.worker_count >= 0, 'data.worker_count', config.data.worker_count, 'expected >= 0')
  check_field(config.optim.lr > 0, 'optim.lr', config.optim.lr, 'expected > 0')
  check_field(list(config.optim.lr_milestones) == sorted(config.optim.lr_milestones), 'optim.lr_milestones',
         config.optim.lr_milestones, 'expected increasing epochs')
  check_field(config.bido.a1 >= 0 and config.bido.a2 >= 0, 'bido', (config.bido.a1, config.bido.a2),
              'expected weights a1, a2 >= 0')
  check_field(config.bido.sigma > 0, 'bido.sigma', config.bido.sigma, 'expected > 0')
  check_field(config.bido.label_kernel in ('linear', 'gaussian'), 'bido.label_kernel', config.bido.label_kernel,
              "expected 'linear' or 'gaussian'")
  if config.bido.a1 or config.bido.a2:
    check_field(config.model.name.startswith(('resnet', 'densenet')), 'model.name', config.model.name,
                'BiDO regularises the hidden features that ResNets and DenseNets record')
  if config.job == 'tts':
    from mi_jax.defenses import tts  # pylint: disable=g-import-not-at-top
    check_field('tts' in config, 'tts', None, 'the tts job needs a config.tts section (see configs/tts.py)')
    tts.stage_configs(config)  # validates stage1_epochs and lr_schedule
  scale, ratio = config.data.augment.rrc_scale, config.data.augment.rrc_ratio
  check_field(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, 'data.augment.rrc_scale', scale,
         'expected (low, high) with 0 < low <= high <= 1')
  check_field(len(ratio) == 2 and 0 < ratio[0] <= ratio[1], 'data.augment.rrc_ratio', ratio,
         'expected (low, high) with 0 < low <= high')


def run(config: ml_collections.ConfigDict, workdir: str):
  validate_config(config)
  set_matmul_precision(config)
  module_name, function_name = JOBS[config.job].split(':')
  job = getattr(importlib.import_module(module_name), function_name)
  os.makedirs(workdir, exist_ok=True)
  return job(config, workdir)
