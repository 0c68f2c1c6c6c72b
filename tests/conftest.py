"""Test set-up: 8 fake CPU devices (for sharding tests) before jax is imported anywhere."""

import os
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
# One persistent XLA cache for the session (and the launch.py subprocesses it starts): many tests compile
# the same steps again (a resumed job, a second device count), which then load instead of compiling.
# It halves the GAN resume test on 2 CPU cores. Results do not depend on it.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='mi_jax_tests_xla_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')

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
