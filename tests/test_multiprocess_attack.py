"""PPA as two processes on 127.0.0.1 (one CPU device each, JAX's CPU collectives): the outputs of one process
with the same global batch, written by process 0 alone, and the same outputs again after both processes
are killed mid-attack and relaunched.

Which process writes what is recorded by a `sitecustomize` that the launched processes import at start-up:
an audit hook (sys.addaudithook) logs every file opened for writing, renamed, removed or made under the
attack's workdir, and can SIGKILL the process the moment it starts writing a given file.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from mi_jax import attack_outputs, jobs
from mi_jax.train import reporting

from conftest import REPO_ROOT
import test_attack
from test_reliability import _env, _free_port, _launch_processes

pytestmark = pytest.mark.slow  # every test launches two jax processes that compile and run an attack

tiny_world = test_attack.tiny_world  # the tiny generator and target of test_attack.py, made once per module

_WRITE_AUDIT = """
import os, signal, sys

_WORKDIR = os.environ.get('MI_JAX_TEST_WORKDIR')
if _WORKDIR:
  _WRITE_EVENTS = ('os.rename', 'os.remove', 'os.rmdir', 'os.mkdir', 'os.truncate', 'shutil.rmtree')
  _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
  _kill_at = os.environ.get('MI_JAX_TEST_KILL_AT')
  # Opened before the hook exists, so writing the log raises no event of its own.
  _log = open(os.path.join(os.environ['MI_JAX_TEST_WRITES'], f"process_{os.environ['JAX_PROCESS_ID']}.txt"), 'a', buffering=1)

  def _audit(event, args):
    if event == 'open':  # builtins.open reports its mode, os.open (and FileIO) its flags
      path, mode, flags = args
      writes = any(c in mode for c in 'wax+') if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
      paths = [path] if writes else []
    elif event in _WRITE_EVENTS:
      paths = args[:2] if event == 'os.rename' else args[:1]  # os.rename is also os.replace's event
    else:
      return
    if not all(isinstance(p, (str, bytes, os.PathLike)) for p in paths):
      return  # a file descriptor: nothing this job writes is opened that way
    paths = [os.path.abspath(os.fsdecode(p)) for p in paths]
    if any(p == _WORKDIR or p.startswith(_WORKDIR + os.sep) for p in paths):
      _log.write('\\t'.join([event, *paths]) + '\\n')
      if _kill_at and any(p.startswith(_kill_at) for p in paths):
        os.kill(os.getpid(), signal.SIGKILL)  # as a node failure: no handler, no clean-up

  sys.addaudithook(_audit)
"""


def _audit_writes(monkeypatch, tmp_path, workdir, name: str, kill_at: str = ''):
  """The processes launched next log their writes under `workdir` to tmp_path/name/process_<i>.txt, and
  SIGKILL themselves on the first write to a path starting with `kill_at`."""
  hook_dir, log_dir = tmp_path / 'audit_hook', tmp_path / name
  hook_dir.mkdir(exist_ok=True)
  (hook_dir / 'sitecustomize.py').write_text(_WRITE_AUDIT)
  log_dir.mkdir()
  # The launched processes inherit this environment (test_reliability._env keeps all but JAX_* and
  # the cluster launchers' variables).
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [str(hook_dir), os.environ.get('PYTHONPATH')])))
  monkeypatch.setenv('MI_JAX_TEST_WORKDIR', str(workdir))
  monkeypatch.setenv('MI_JAX_TEST_WRITES', str(log_dir))
  monkeypatch.setenv('MI_JAX_TEST_KILL_AT', kill_at)
  return log_dir


def _writes(log_dir, process: int) -> list[list[str]]:
  """[event, path, ...] of every write a process made under the workdir, in order."""
  path = log_dir / f'process_{process}.txt'
  return [line.split('\t') for line in path.read_text().splitlines()] if path.exists() else []


def _files_renamed_into_place(writes) -> list[str]:
  """The output files of a process's writes, after checking it wrote each one whole and once: every file
  opened for writing is a temporary one, renamed onto its final name, and no final name is replaced twice."""
  opened = [w[1] for w in writes if w[0] == 'open']
  renamed = [w[1:] for w in writes if w[0] == 'os.rename']
  assert all('.tmp' in p for p in opened), opened
  assert sorted(src for src, _ in renamed) == sorted(opened), (opened, renamed)
  outputs = [dst for _, dst in renamed]
  assert len(outputs) == len(set(outputs)), outputs
  assert not [w for w in writes if w[0] not in ('open', 'os.rename', 'os.mkdir')], writes  # nothing removed
  return sorted(outputs)


def _workdir_files(workdir) -> list[str]:
  return sorted(
      os.path.relpath(os.path.join(directory, name), workdir)
      for directory, _, names in os.walk(workdir)
      for name in names
  )


def _attack_config(tiny_world):
  config = test_attack.attack_config(tiny_world[0], batch_size=2)  # 12 latents: 3 batches of 2 x 2 devices
  config.evaluation.workdir = config.target.workdir  # its logits and accuracies are outputs too
  config.num_devices = 0  # all devices: one per process
  return config


def _flags(config, workdir) -> list[str]:
  """launch.py's command line for `config`: the fields that differ from configs/attack_ppa.py's defaults."""
  from configs import attack_ppa  # pylint: disable=g-import-not-at-top

  changed = reporting.differing_leaves(reporting.config_json(attack_ppa.get_config()), reporting.config_json(config))
  as_flag = lambda value: repr(tuple(value)) if isinstance(value, list) else value
  return [
      '--config=configs/attack_ppa.py',
      f'--workdir={workdir}',
      *(f'--config.{field}={as_flag(new)}' for field, (_, new) in changed.items()),
  ]


@pytest.fixture(scope='module')
def one_process_attack(tiny_world, tmp_path_factory):
  """The attack as one process on 2 devices: the global batch of two processes with one device each."""
  config = _attack_config(tiny_world)
  config.num_devices = 2  # of this process's 8
  workdir = tmp_path_factory.mktemp('one_process') / 'attack'
  jobs.run(config, str(workdir))
  return workdir


def _assert_same_outputs(workdir, expected_workdir):
  """Every output equal to the one-process run's, bit for bit.

  Exact, not close: both runs compile the same 2-way partitioned programs for the same CPU, and their
  only cross-device reductions (the batch loss, the gathers) add two operands, which is commutative in
  floating point; only the transport differs (JAX's CPU collectives between processes, memory within one).
  """
  assert _workdir_files(workdir) == _workdir_files(expected_workdir)
  for name in _workdir_files(workdir):
    ours, theirs = os.path.join(workdir, name), os.path.join(expected_workdir, name)
    if name.endswith('.npz'):
      with np.load(ours) as a, np.load(theirs) as b:
        assert sorted(a.files) == sorted(b.files), name
        for key in a.files:
          np.testing.assert_array_equal(a[key], b[key], err_msg=f'{name}: {key}')
    elif name.endswith('.json'):
      with open(ours) as a, open(theirs) as b:
        ours_json, theirs_json = json.load(a), json.load(b)
      if name == attack_outputs.ATTACK_FILE:  # the settings say how many devices it asked for: all (0), or 2
        assert (ours_json['settings'].pop('num_devices'), theirs_json['settings'].pop('num_devices')) == (0, 2)
      assert ours_json == theirs_json, name
    else:  # the PNG grids, rendered from the same float images
      with open(ours, 'rb') as a, open(theirs, 'rb') as b:
        assert a.read() == b.read(), name


def _check_processes(results):
  for i, result in enumerate(results):
    assert result.returncode == 0, f'process {i}:\n{result.stderr[-3000:]}'
    assert f'Process {i} of 2' in result.stderr and 'Attack done' in result.stderr


def test_two_processes_give_the_one_process_outputs_and_only_process_zero_writes(
    tiny_world, one_process_attack, tmp_path, monkeypatch
):
  workdir = tmp_path / 'attack'
  writes = _audit_writes(monkeypatch, tmp_path, workdir, 'writes')
  _check_processes(_launch_processes(_flags(_attack_config(tiny_world), workdir)))
  _assert_same_outputs(workdir, one_process_attack)
  # Process 0 wrote every output file, each once and whole; process 1 wrote nothing but, like every job's
  # process (jobs.run), made sure the workdir exists (the shared file system a multi-process job needs).
  assert _files_renamed_into_place(_writes(writes, 0)) == [str(workdir / f) for f in _workdir_files(workdir)]
  assert _writes(writes, 1) == [['os.mkdir', str(workdir)]]


def test_a_killed_two_process_attack_resumes_to_the_same_outputs(tiny_world, one_process_attack, tmp_path, monkeypatch):
  workdir = tmp_path / 'attack'
  flags = _flags(_attack_config(tiny_world), workdir)
  # Killed as process 0 starts writing the second class's final latents: every optimisation batch and the
  # first class are finished; the second class's grid is written, its latents are not.
  killed = _audit_writes(monkeypatch, tmp_path, workdir, 'killed', kill_at=attack_outputs.final_path(str(workdir), 3))
  port, processes = _free_port(), []
  for i in range(2):  # as _launch_processes starts them, but this test must not wait for process 1
    with open(killed / f'stderr_{i}.txt', 'w') as stderr:
      processes.append(
          subprocess.Popen(
              [sys.executable, 'launch.py', *flags],
              cwd=REPO_ROOT,
              env=_env(1, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i)),
              stdout=subprocess.DEVNULL,
              stderr=stderr,
          )
      )
  try:
    processes[0].wait(timeout=300)
  finally:
    processes[1].send_signal(signal.SIGKILL)  # blocked in the next step, waiting for process 0
    processes[1].wait()
    if processes[0].poll() is None:
      processes[0].kill()
  assert processes[0].returncode == -signal.SIGKILL, (killed / 'stderr_0.txt').read_text()[-3000:]
  assert _writes(killed, 0)[-1] == ['open', attack_outputs.final_path(str(workdir), 3) + '.tmp.npz']
  assert not (workdir / attack_outputs.ATTACK_FILE).exists()

  resumed = _audit_writes(monkeypatch, tmp_path, workdir, 'resumed')
  _check_processes(_launch_processes(flags))
  _assert_same_outputs(workdir, one_process_attack)
  # What was finished was read back, not redone: process 0 wrote only the second class and the summaries.
  assert _files_renamed_into_place(_writes(resumed, 0)) == sorted(
      str(workdir / f)
      for f in ('grids/class_00003.png', 'final/class_00003.npz', 'final_grid.png', 'log.json', 'attack.json')
  )
  assert _writes(resumed, 1) == [['os.mkdir', str(workdir)]]
