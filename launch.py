"""Runs the job a config names.

  python launch.py --config=configs/baseline.py:demo --workdir=workdir/demo
  python launch.py --config=configs/baseline.py --workdir=/ckpt/run1 \\
      --config.model.name=resnet101 --config.data.manual_dir=/data/facescrub

Any config field can be overridden with --config.<field>=<value>; an unknown
field or a value of the wrong type stops the launch with a message naming it.
Relaunching with the same --workdir resumes from the last checkpoint.
"""

import sys
import traceback

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
  from mi_jax import errors, jobs, multihost  # pylint: disable=g-import-not-at-top

  jobs.quiet_library_logs()
  config = _CONFIG.value
  try:
    multihost.initialize()
    jobs.validate_config(config)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'launch.py: {e}')  # one line naming the field: the usage text would bury it
  logging.info('Config:\n%s', config)
  try:
    jobs.run(config, _WORKDIR.value)
  except errors.MiJaxError as e:  # the message is the story; the traceback only helps a developer
    logging.debug('%s', traceback.format_exc())
    sys.exit(f'launch.py: {e}')
  except (KeyboardInterrupt, errors.Terminated) as e:
    signal_name = 'SIGTERM' if isinstance(e, errors.Terminated) else 'Ctrl-C (SIGINT)'
    sys.exit(f'launch.py: stopped by {signal_name}. Relaunch with the same --workdir to resume.')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
