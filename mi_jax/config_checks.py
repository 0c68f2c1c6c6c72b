"""Config checks every job shares. A failed check names the field: `config.<field>=<value>: <expected>`.

This module imports nothing of mi_jax, so any module may use it (the jobs validate their own sections).
"""

import ml_collections

# Which checkpoint of a trained classifier a job reads (mi_jax.train.checkpoint.resolve_step).
CHECKPOINT_CHOICES = "'latest', 'best' (highest test accuracy) or a step number"


def check_field(condition: bool, field: str, value, expected: str, error: type[Exception] = ValueError):
  """Raises `error` naming `config.<field>` and its value unless `condition` holds."""
  if not condition:
    raise error(f'config.{field}={value!r}: {expected}')


def get_field(config: ml_collections.ConfigDict, field: str):
  """The value of a dotted field ('train.batch_size')."""
  value = config
  for part in field.split('.'):
    value = value[part]
  return value


def check_positive_ints(config: ml_collections.ConfigDict, fields, error: type[Exception] = ValueError):
  """Each dotted field of `config` ('train.batch_size') must be a positive integer."""
  for field in fields:
    value = get_field(config, field)
    check_field(isinstance(value, int) and value > 0, field, value, 'expected a positive integer', error)


def check_checkpoint_choice(config: ml_collections.ConfigDict, field: str, error: type[Exception] = ValueError):
  """A field naming a checkpoint: 'latest', 'best' or a step number."""
  value = get_field(config, field)
  check_field(
      str(value) in ('latest', 'best') or str(value).isdigit(), field, value, f'expected {CHECKPOINT_CHOICES}', error
  )


def check_range(
    config: ml_collections.ConfigDict,
    field: str,
    low: float = 0.0,
    high: float = 1.0,
    error: type[Exception] = ValueError,
):
  """A (low, high) pair with low_bound < low <= high <= high_bound (crop scales)."""
  value = get_field(config, field)
  check_field(
      len(value) == 2 and low < value[0] <= value[1] <= high,
      field,
      value,
      f'expected (low, high) with {low:g} < low <= high <= {high:g}',
      error,
  )
