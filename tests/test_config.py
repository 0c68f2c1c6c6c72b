"""Config presets, command-line overrides and the errors bad values give."""

import os
import subprocess
import sys

import pytest

from configs import baseline, common
from mi_jax import jobs, multihost

from conftest import REPO_ROOT


def test_parse_arg_types_and_errors():
  arg = common.parse_arg('demo,epochs=3', demo=False, epochs=8, lr=0.1)
  assert arg.demo is True and arg.epochs == 3 and arg.lr == 0.1
  assert common.parse_arg(None, demo=False).demo is False
  with pytest.raises(ValueError, match='unknown config preset option .demoo.'):
    common.parse_arg('demoo', demo=False)
  with pytest.raises(ValueError, match='needs a value'):
    common.parse_arg('epochs', epochs=8)


def test_presets_validate():
  for arg in (None, 'demo', 'tiny'):
    jobs.validate_config(baseline.get_config(arg))
  demo = baseline.get_config('demo')
  assert demo.data.name == 'mnist_demo/private' and demo.model.num_classes == 5
  assert demo.optim.lr_milestones == (6, 7)  # 75% and 90% of 8 epochs


def test_paper_defaults():
  """The base recipe is PPA's target training (Plug-and-Play-Attacks configs/training/targets/*.yaml, as the RoLSS code)."""
  config = baseline.get_config()
  assert (config.optim.name, config.optim.lr, config.optim.b1, config.optim.b2) == ('adam', 1e-3, 0.9, 0.999)
  assert config.optim.lr_milestones == (75, 90) and config.optim.lr_gamma == 0.1
  assert config.train.epochs == 100 and config.train.batch_size == 128
  assert config.model.num_classes == 530 and config.data.image_size == 224
  assert tuple(config.data.augment.rrc_scale) == (0.85, 1.0)


@pytest.mark.parametrize(
    'field, value, message',
    [
        ('job', 'trian', 'config.job=.trian.'),
        ('model.name', 'resnet19', 'config.model.name=.resnet19.'),
        ('model.skip', (1, 1, 1), 'config.model.skip=.* has 3 entries'),
        ('model.skip', (1, 1, 1, 1.5), 'config.model.skip: .*must lie in'),
        ('model.skip', (1, 1, 1, 'lean'), 'config.model.skip: .*expected'),
        ('data.name', 'facescrab', 'config.data.name=.facescrab.'),
        ('data.name', 'mnist_demo/privat', 'config.data.name=.mnist_demo/privat.'),
        ('train.batch_size', 0, 'config.train.batch_size=0'),
        ('optim.lr_milestones', (90, 75), 'config.optim.lr_milestones'),
        ('data.augment.rrc_scale', (0.9, 0.5), 'config.data.augment.rrc_scale'),
        ('matmul_precision', 'fastest_please', 'config.matmul_precision=.fastest_please.'),
        ('model.legacy_stage3_split', 0.4, r'config.model.legacy_stage3_split=0.4 keeps int\(0.4 \* 2\) = 0'),
        ('model.transform_input', True, 'config.model.transform_input=True applies to inception models only'),
        ('train.epochs', 0, 'config.train.epochs=0: 0 means "use config.model.init_file as it is"'),
        ('model.init_file', '/no/such/weights.pth', 'config.model.init_file=./no/such/weights.pth.: no such file'),
    ],
)
def test_validate_names_the_field(field, value, message):
  config = baseline.get_config('demo')
  section = config
  *parents, key = field.split('.')
  for p in parents:
    section = section[p]
  section[key] = value
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    jobs.validate_config(config)


def test_every_job_config_sets_the_matmul_precision_the_paper_ran_with():
  """float32 convs and matmuls ('highest'), as on the paper's V100s, unless a config says otherwise."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import attack_ppa, eval_model, evaluate, gan_demo, import_stylegan, paper  # pylint: disable=g-import-not-at-top

  for module in (baseline, attack_ppa, eval_model, evaluate, gan_demo, import_stylegan, paper):
    assert module.get_config().matmul_precision == 'highest', module.__name__
  before = jax.config.jax_default_matmul_precision
  try:
    config = baseline.get_config('tiny')
    config.matmul_precision = 'tensorfloat32'
    jobs.set_matmul_precision(config)
    assert jax.config.jax_default_matmul_precision == 'tensorfloat32'
  finally:
    jax.config.update('jax_default_matmul_precision', before)


@pytest.mark.parametrize(
    'env, expected',
    [
        ({}, False),
        ({'SLURM_NTASKS': '1'}, False),
        ({'SLURM_NTASKS': '4'}, True),
        ({'OMPI_COMM_WORLD_SIZE': '2'}, True),
        ({'JAX_NUM_PROCESSES': '2'}, True),
        ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, True),
    ],
)
def test_multi_process_detection(env, expected):
  assert multihost.is_multi_process_env(env) is expected


def _launch(*args):
  return subprocess.run(
      [sys.executable, 'launch.py', *args],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
  )


def test_launch_rejects_unknown_field(tmp_path):
  result = _launch('--config=configs/baseline.py:tiny', f'--workdir={tmp_path}', '--config.model.nmae=resnet34')
  assert result.returncode != 0
  assert 'nmae' in result.stderr and 'Did you mean "name"' in result.stderr
  assert 'Traceback' not in result.stderr


def test_launch_rejects_wrong_type(tmp_path):
  result = _launch('--config=configs/baseline.py:tiny', f'--workdir={tmp_path}', '--config.train.epochs=many')
  assert result.returncode != 0
  assert 'epochs' in result.stderr and 'many' in result.stderr
  assert 'Traceback' not in result.stderr


def test_launch_rejects_bad_value(tmp_path):
  result = _launch('--config=configs/baseline.py:tiny', f'--workdir={tmp_path}', '--config.model.name=resnet19')
  assert result.returncode != 0
  assert 'config.model.name=' in result.stderr and 'resnet19' in result.stderr
  assert not os.listdir(tmp_path)  # nothing started
  # One line naming the field, without the usage text in front of it.
  assert result.stderr.strip().splitlines()[-1].startswith('launch.py: config.model.name=')
  assert 'launch.py --config=configs/baseline.py:demo' not in result.stderr and 'USAGE' not in result.stderr
