"""Faults a user meets on a cluster, each reproduced: fewer devices at load time, several processes, signals
during a checkpoint save, divergence, bad image files, bad weight files."""

import io
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import PIL.Image
import pytest

import mi_jax
from mi_jax import errors, jobs, multihost
from mi_jax.convert import torch_compat, torchvision as tv_convert
from mi_jax.data import builders, sources
from mi_jax.train import checkpoint, reporting, trainer

from conftest import REPO_ROOT
from test_data import _data_config


def _env(num_devices: int, **extra) -> dict:
  """A subprocess environment with `num_devices` CPU devices (the tests' own process has 8)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'SLURM_', 'OMPI_'))}
  env.update(XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}', JAX_PLATFORMS='cpu', **extra)
  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    env['JAX_COMPILATION_CACHE_DIR'] = os.environ['JAX_COMPILATION_CACHE_DIR']
  return env


def _tmp_dirs(workdir) -> list[str]:
  return [d for d in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in d]


# ------------------------------------------------------------------ 1. loading on fewer devices

_LOAD_AND_EVALUATE = """
import sys, jax, numpy as np, mi_jax
classifier = mi_jax.load_classifier(sys.argv[1], step='best')
images = np.load(sys.argv[2])
logits = classifier.model.apply(classifier.variables, images, train=False)
np.save(sys.argv[3], np.asarray(logits))
print(len(jax.devices()), classifier.step, classifier.config['num_devices'])
"""


@pytest.mark.slow
def test_a_checkpoint_from_eight_devices_loads_with_one_call_on_one(tiny_config, tmp_path):
  tiny_config.num_devices = 8
  tiny_config.train.epochs = 1
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(tiny_config, workdir)
  images = np.random.RandomState(0).uniform(-1, 1, (4, 16, 16, 1)).astype(np.float32)
  np.save(tmp_path / 'images.npy', images)
  result = subprocess.run(
      [sys.executable, '-c', _LOAD_AND_EVALUATE, workdir, str(tmp_path / 'images.npy'), str(tmp_path / 'logits.npy')],
      env=_env(1),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ['1', '25', '8']  # one device, the best step, trained on eight
  # The same logits as the state the 8-device run holds.
  model, variables, _, _, _ = mi_jax.load_classifier(workdir, step=25)
  np.testing.assert_allclose(
      np.load(tmp_path / 'logits.npy'), model.apply(variables, images, train=False), rtol=1e-5, atol=1e-5
  )


# ------------------------------------------------------------------ 2, 3. several processes


@pytest.mark.parametrize(
    'env, expected',
    [
        ({}, {}),
        (
            {'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'},
            dict(num_processes=4, process_id=3),
        ),
        ({'SLURM_NTASKS': '4'}, {}),  # left to JAX's SLURM detection
        ({'JAX_NUM_PROCESSES': '2'}, dict(num_processes=2)),
    ],
)
def test_distributed_arguments_come_from_the_jax_variables(env, expected):
  assert multihost.distributed_arguments(env) == expected


@pytest.mark.parametrize(
    'env, message',
    [
        ({'JAX_NUM_PROCESSES': 'two'}, 'JAX_NUM_PROCESSES=.two.: expected a non-negative integer'),
        ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '2'}, 'JAX_PROCESS_ID=2 must be below JAX_NUM_PROCESSES=2'),
    ],
)
def test_bad_distributed_variables_are_named(env, message):
  with pytest.raises(ValueError, match=message):
    multihost.distributed_arguments(env)


def test_each_host_prepares_with_its_lowest_process(monkeypatch):
  class FakeClient:  # the coordination service's key-value store, as four processes on two hosts fill it

    def __init__(self):
      self.store = {f'mi_jax/hostname/{i}': host for i, host in enumerate(['node-a', 'node-b', 'node-a', 'node-b'])}

    def key_value_set(self, key, value, allow_overwrite=False):
      assert allow_overwrite or key not in self.store
      self.store[key] = value

    def blocking_key_value_get(self, key, timeout_in_ms):
      del timeout_in_ms
      return self.store[key]

  monkeypatch.setattr(multihost, '_client', FakeClient)
  monkeypatch.setattr(jax, 'process_count', lambda: 4)
  monkeypatch.setattr(jax, 'process_index', lambda: 2)
  monkeypatch.setattr(multihost.socket, 'gethostname', lambda: 'node-a')
  assert multihost._doers(per_host=True) == [0, 1]
  assert multihost._doers(per_host=False) == [0]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch_processes(args: list[str], count: int = 2, timeout: int = 400) -> list[subprocess.CompletedProcess]:
  """launch.py as `count` processes of one job on 127.0.0.1 (JAX's CPU collectives), one device each."""
  port = _free_port()
  procs = [
      subprocess.Popen(
          [sys.executable, 'launch.py', *args],
          cwd=REPO_ROOT,
          env=_env(1, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(i)),
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in range(count)
  ]
  deadline = time.time() + timeout
  results = []
  for proc in procs:
    try:
      out, err = proc.communicate(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
    results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
  return results


@pytest.mark.slow
def test_two_processes_prepare_data_once_and_train(tmp_path):
  """Two processes, the data set not yet prepared: one prepares while the other waits, then both train."""
  workdir = tmp_path / 'run'
  results = _launch_processes(
      [
          '--config=configs/baseline.py:tiny,epochs=1',
          f'--workdir={workdir}',
          f'--config.data.data_dir={tmp_path / "tfds"}',
      ]
  )
  for i, result in enumerate(results):
    assert result.returncode == 0, f'process {i}:\n{result.stderr[-3000:]}'
    assert f'Process {i} of 2' in result.stderr
  assert 'Process 1 waits for process(es) [0] to prepare digits_demo/private' in results[1].stderr
  assert 'Preparing digits_demo/private' in results[0].stderr and 'Preparing' not in results[1].stderr
  with open(workdir / 'results.json') as f:
    summary = json.load(f)
  assert summary['step'] == 25 and summary['test_accuracy'] > 0.4  # 5 classes: chance is 0.2
  # Trained across two processes, loaded in this one (8 devices, one process).
  classifier = mi_jax.load_classifier(str(workdir))
  assert classifier.step == 25 and classifier.metrics['test_accuracy'] == pytest.approx(summary['test_accuracy'])


@pytest.mark.slow
def test_a_failed_preparation_stops_every_process(tmp_path):
  folder = tmp_path / 'faces'
  _write_image_folder(folder)
  (folder / 'a' / 'broken.jpg').write_bytes(b'')
  results = _launch_processes(
      [
          '--config=configs/baseline.py:tiny,epochs=1',
          f'--workdir={tmp_path / "run"}',
          f'--config.data.data_dir={tmp_path / "tfds"}',
          f'--config.data.manual_dir={folder}',
          '--config.data.name=image_folder/faces',
          '--config.data.test_fraction=0.2',
          '--config.model.num_classes=2',
      ],
      timeout=200,
  )
  assert all(r.returncode != 0 for r in results)
  assert 'a/broken.jpg: empty file (0 bytes)' in results[0].stderr
  assert 'launch.py: process 0 failed to prepare image_folder/faces: DataError: 1 of 11' in results[1].stderr
  assert 'Traceback' not in results[0].stderr + results[1].stderr


# ------------------------------------------------------------------ 4, 5. stops during a save


def _signal_inside_save(monkeypatch, signum: int, at_step: int):
  """Delivers `signum` while orbax is being handed the checkpoint of `at_step` (the moment that lost it)."""
  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == at_step:
      os.kill(os.getpid(), signum)  # Python runs the handler at the next bytecode: inside the save
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)


@pytest.mark.parametrize(
    'signum, stopped_by', [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, errors.Terminated)]
)
def test_a_signal_during_a_save_keeps_the_checkpoint_and_stops_promptly(
    tiny_config, tmp_path, monkeypatch, signum, stopped_by
):
  _signal_inside_save(monkeypatch, signum, at_step=25)
  workdir = str(tmp_path / 'run')
  start = time.time()
  # Ctrl-C as in a terminal: a shell starts background jobs (CI's too) with SIGINT ignored.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with pytest.raises(stopped_by):
      jobs.run(tiny_config, workdir)  # installs the SIGTERM handler as launch.py's job does
  finally:
    signal.signal(signal.SIGINT, previous)
  assert time.time() - start < 120  # not the 5-minute orbax time-out
  assert checkpoint.latest_step_in(workdir) == 25 and _tmp_dirs(workdir) == []
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the job's handler is gone again


def test_a_job_failing_with_a_save_in_flight_completes_it_and_says_so(tiny_config, tmp_path, monkeypatch, caplog):
  original = checkpoint.Checkpointer.save

  def save_then_fail(self, step, *args):
    original(self, step, *args)  # asynchronous: the commit runs in the background now
    raise reporting.NonFiniteError(f'injected failure right after scheduling the save of step {step}')

  monkeypatch.setattr(checkpoint.Checkpointer, 'save', save_then_fail)
  workdir = str(tmp_path / 'run')
  with pytest.raises(reporting.NonFiniteError, match='step 25'):
    trainer.train_and_evaluate(tiny_config, workdir)
  assert checkpoint.latest_step_in(workdir) == 25 and _tmp_dirs(workdir) == []
  assert f'the latest complete checkpoint is {workdir}/checkpoints/25' in caplog.text


# ------------------------------------------------------------------ 6. divergence


def test_non_finite_or_exploded_test_metrics_are_never_checkpointed(tiny_config, tmp_path, monkeypatch):
  evaluate = trainer.evaluate
  monkeypatch.setattr(trainer, 'evaluate', lambda *a: {**evaluate(*a), 'test_loss': 9.7e22})
  workdir = str(tmp_path / 'run')
  with pytest.raises(reporting.NonFiniteError, match=r"(?s)test metrics at step 25: \{'test_loss': 9.7e\+22\}"):
    trainer.train_and_evaluate(tiny_config, workdir)
  assert checkpoint.latest_step_in(workdir) is None
  monkeypatch.setattr(trainer, 'evaluate', lambda *a: {**evaluate(*a), 'test_accuracy': float('nan')})
  with pytest.raises(reporting.NonFiniteError, match='test_accuracy'):
    trainer.train_and_evaluate(tiny_config, str(tmp_path / 'nan'))


def test_chance_level_accuracy_is_a_warning():
  assert trainer.chance_level_warnings({'test_accuracy': 0.9, 'test_loss': 0.3}, 5) == []
  (warning,) = trainer.chance_level_warnings({'test_accuracy': 0.21, 'test_loss': 8e11}, 5)
  assert 'near chance (1/5 = 0.2000)' in warning and '8e+11' in warning


class _Stop(Exception):
  pass


@pytest.mark.slow
def test_a_diverged_run_continues_with_new_optimiser_settings_when_asked(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')

  def stop_at_30(step):
    if step == 30:
      raise _Stop

  with pytest.raises(_Stop):
    trainer.train_and_evaluate(tiny_config, workdir, on_step=stop_at_30)
  tiny_config.optim.lr = 1e-4
  with pytest.raises(checkpoint.CheckpointError, match=r'(?s)config.optim.lr.*resume_with_new_optim=True'):
    trainer.train_and_evaluate(tiny_config, workdir)
  tiny_config.train.resume_with_new_optim = True
  results = trainer.train_and_evaluate(tiny_config, workdir)
  assert results['step'] == 50
  with open(os.path.join(workdir, 'run_history.json')) as f:
    (event,) = json.load(f)
  assert event['step'] == 25 and event['changed'] == {'optim.lr': [1e-3, 1e-4]}
  # Anything but the optimiser is still refused.
  tiny_config.model.width = 16
  with pytest.raises(checkpoint.CheckpointError, match='config.model.width'):
    trainer.train_and_evaluate(tiny_config, workdir)


# ------------------------------------------------------------------ 7, 8. image files


def _write_image_folder(root, classes=('a', 'b'), per_class=5, size=20):
  rng = np.random.RandomState(0)
  for name in classes:
    os.makedirs(root / name, exist_ok=True)
    for i in range(per_class):
      PIL.Image.fromarray(rng.randint(0, 255, (size, size, 3), np.uint8)).save(root / name / f'{i}.jpg', quality=95)


def _break_images(root):
  """A truncated JPEG, an empty one and a text file named .jpg: what a failed download leaves."""
  whole = (root / 'a' / '0.jpg').read_bytes()
  (root / 'a' / '0.jpg').write_bytes(whole[: len(whole) // 2])
  (root / 'b' / 'empty.jpg').write_bytes(b'')
  (root / 'b' / 'notes.jpg').write_text('not an image')


def test_bad_image_files_are_named_at_build_or_skipped(tmp_path):
  folder = tmp_path / 'faces'
  _write_image_folder(folder)
  _break_images(folder)
  config = _data_config('image_folder/faces', str(tmp_path / 'tfds'), folder, test_fraction=0.2)
  with pytest.raises(builders.DataError) as failure:
    sources.prepare(config)
  message = str(failure.value)
  assert '3 of 12 image files' in message and 'bad_images=skip' in message
  assert 'a/0.jpg: not a readable image (OSError: image file is truncated' in message
  assert 'b/empty.jpg: empty file (0 bytes)' in message and 'b/notes.jpg: not a readable image' in message
  assert not sources.get_builder(config).is_prepared()

  config.bad_images = 'skip'
  builder = sources.prepare(config)
  assert builder.info.metadata['skipped_files'] == ['a/0.jpg', 'b/empty.jpg', 'b/notes.jpg']
  names = [r['file_name'] for split in ('train', 'test') for r in sources.get_source(builder, split)]
  assert len(names) == 9 and not set(names) & {'a/0.jpg', 'b/empty.jpg', 'b/notes.jpg'}  # every record decodes


def test_a_changed_manual_dir_is_refused_or_rebuilt(tmp_path):
  folder = tmp_path / 'faces'
  _write_image_folder(folder)
  config = _data_config('image_folder/faces', str(tmp_path / 'tfds'), folder, test_fraction=0.2)
  assert len(sources.get_source(sources.prepare(config), 'train')) == 8
  os.remove(folder / 'a' / '1.jpg')
  _write_image_folder(folder, classes=('c',), per_class=2)
  with pytest.raises(
      builders.DataError, match=r'\(2 added: c/0.jpg, c/1.jpg; 1 removed: a/1.jpg\).*rebuild_if_changed=True'
  ):
    sources.prepare(config)
  config.rebuild_if_changed = True
  builder = sources.prepare(config)
  assert builder.info.metadata['class_names'] == ['a', 'b', 'c']
  assert sum(len(sources.get_source(builder, s)) for s in ('train', 'test')) == 11
  config.rebuild_if_changed = False
  sources.prepare(config)  # now it matches again


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
  folder = tmp_path / 'faces'
  _write_image_folder(folder)
  os.makedirs(folder / 'nobody')
  (folder / 'nobody' / 'readme.txt').write_text('no images here')
  config = _data_config('image_folder/faces', str(tmp_path / 'tfds'), folder)
  with pytest.raises(builders.DataError, match=f'1 class folder.* hold no images .*: {folder}/nobody'):
    sources.prepare(config)


# ------------------------------------------------------------------ 9. weight files


class _Payload:
  """A pickle that runs code when unpickled by an unsafe loader."""

  def __init__(self, marker, how):
    self.marker, self.how = marker, how

  def __reduce__(self):
    if self.how == 'os.system':
      return os.system, (f'touch {self.marker}',)
    if self.how == 'eval':
      return eval, (f'open({str(self.marker)!r}, "w")',)
    if self.how == 'subprocess':
      return subprocess.call, (['touch', str(self.marker)],)
    return exec, (f'import pathlib\npathlib.Path({str(self.marker)!r}).touch()',)  # embedded source


def _weight_files(tmp_path):
  """{kind: path} of files that are not the weights they claim to be."""
  import torch  # pylint: disable=g-import-not-at-top

  files = {}
  for how in ('os.system', 'eval', 'subprocess', 'source'):
    files[f'malicious_{how}'] = tmp_path / f'{how}.pth'
    torch.save(
        {'fc.weight': torch.zeros(2, 2), 'extra': _Payload(tmp_path / 'executed', how)}, files[f'malicious_{how}']
    )
  good = io.BytesIO()
  torch.save({'fc.weight': torch.zeros(64, 64)}, good)
  files['truncated'] = tmp_path / 'truncated.pth'
  files['truncated'].write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
  files['empty'] = tmp_path / 'empty.pth'
  files['empty'].write_bytes(b'')
  files['raw_pickle'] = tmp_path / 'raw.pkl'
  files['raw_pickle'].write_bytes(pickle.dumps(_Payload(tmp_path / 'executed', 'os.system')))
  return files


_CAUSES = {
    'malicious': 'it holds objects other than tensors and plain containers, which the safe loader refuses',
    'raw_pickle': 'it holds objects other than tensors',
    'truncated': 'it is truncated (the file ends before its contents do)',
    'empty': 'it is empty (0 bytes)',
}


def test_weight_files_that_are_not_weights_give_one_line_and_run_nothing(tmp_path):
  pytest.importorskip('torch')
  for kind, path in _weight_files(tmp_path).items():
    with pytest.raises(torch_compat.WeightFileError) as failure:
      tv_convert.read_state_dict(str(path))
    message = str(failure.value)
    assert '\n' not in message and message.startswith(f'{path}: cannot be read as a PyTorch weight file')
    assert _CAUSES[kind.partition('_')[0] if kind.startswith('malicious') else kind] in message, message
    assert message.endswith('Nothing in it was executed.')
  assert not (tmp_path / 'executed').exists()


def test_stylegan_pickles_that_are_not_networks_give_one_line(tmp_path):
  pytest.importorskip('torch')
  from mi_jax.convert import stylegan as stylegan_job  # pylint: disable=g-import-not-at-top

  import ml_collections  # pylint: disable=g-import-not-at-top

  for kind, path in _weight_files(tmp_path).items():
    config = ml_collections.ConfigDict(dict(pickle=str(path), network='G_ema'))
    with pytest.raises(torch_compat.WeightFileError) as failure:
      stylegan_job.import_stylegan(config, str(tmp_path / f'generator_{kind}'))
    message = str(failure.value)
    assert '\n' not in message and message.startswith(f'{path}: cannot be read as a StyleGAN2-ADA network pickle')
    assert message.endswith('Nothing in it was executed.'), message
  assert not (tmp_path / 'executed').exists()


@pytest.mark.slow
def test_launch_prints_one_line_for_a_truncated_init_file(tmp_path, tfds_dir):
  pytest.importorskip('torch')
  path = _weight_files(tmp_path)['truncated']
  result = subprocess.run(
      [
          sys.executable,
          'launch.py',
          '--config=configs/baseline.py:tiny,epochs=1',
          f'--workdir={tmp_path / "run"}',
          f'--config.data.data_dir={tfds_dir}',
          f'--config.model.init_file={path}',
      ],
      cwd=REPO_ROOT,
      env=_env(1),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert (
      last
      == f'launch.py: {path}: cannot be read as a PyTorch weight file: it is truncated (the file ends before its contents do). Nothing in it was executed.'
  )
  assert 'Traceback' not in result.stderr and 'cannot schedule new futures' not in result.stderr


def test_a_run_saved_before_a_model_field_existed_resumes_and_a_changed_field_is_refused():
  """A family option added after a run was saved (the run's config lacks it) counts as its neutral value,
  the value that run had; any other value, or a changed existing field, is still another run."""
  from configs import baseline  # pylint: disable=g-import-not-at-top

  config = baseline.get_config('demo')
  saved = reporting.config_json(config)
  for field in ('legacy_stage3_split', 'unit_range_input', 'maxvit_layers'):
    del saved['model'][field]
  checkpoint.check_same_run(saved, config, 'workdir')  # no error
  config.model.legacy_stage3_split = 0.8
  with pytest.raises(checkpoint.CheckpointError, match=r'config.model.legacy_stage3_split: workdir has 1.0'):
    checkpoint.check_same_run(saved, config, 'workdir')
  config.model.legacy_stage3_split = 1.0
  config.model.width = 3
  with pytest.raises(checkpoint.CheckpointError, match=r'config.model.width'):
    checkpoint.check_same_run(saved, config, 'workdir')
