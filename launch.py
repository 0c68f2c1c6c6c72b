"""Runs the job a config names.

  python launch.py --config=configs/baseline.py:demo --workdir=workdir/demo
  python launch.py --config=configs/baseline.py --workdir=/ckpt/run1 \\
      --config.model.name=resnet101 --config.data.manual_dir=/data/facescrub

Any config field can be overridden with --config.<field>=<value>; an unknown
field or a value of the wrong type stops the launch with a message naming it.
Relaunching with the same --workdir resumes from the last checkpoint.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config: configs/X.py or configs/X.py:preset.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and artefacts.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl parsing, with config errors (unknown field, wrong type) reported as one clear line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = [a for a in argv[1:] if a.startswith('--config.')]
    detail = ' '.join(str(e).replace('\\n', ' ').replace("\\'", "'").split())
    sys.exit(f'launch.py: bad flags: {type(e).__name__}: {detail}\n  config overrides given: {overrides}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected command-line arguments: {argv[1:]}')
  from mi_jax import jobs  # pylint: disable=g-import-not-at-top

  jobs.quiet_library_logs()
  jobs.maybe_initialize_distributed()
  config = _CONFIG.value
  logging.info('Config:\n%s', config)
  try:
    jobs.validate_config(config)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  jobs.run(config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
