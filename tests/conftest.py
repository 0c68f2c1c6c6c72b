"""Test set-up: 8 fake CPU devices (for sharding tests) before jax is imported anywhere."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()

from absl import flags  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()  # grain and absl read flags; tests run outside app.run

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """One prepared-data directory shared by the session (demo builders write here)."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def tiny_config(tfds_dir):
  """configs/baseline.py:tiny (sklearn digits, 16px, width-8 ResNet-18) on one device."""
  from configs import baseline  # pylint: disable=g-import-not-at-top
  config = baseline.get_config('tiny,epochs=2')
  config.data.data_dir = tfds_dir
  config.num_devices = 1
  return config
