"""Train step, sharding, checkpoints, kill/resume and error paths of the train job."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mi_jax import models
from mi_jax.data import pipeline, sources
from mi_jax.train import checkpoint, optim, sharding, state as state_lib, steps, trainer

from conftest import REPO_ROOT


def _state_and_batch(config, batch_size=16):
  builder = sources.prepare(config.data)
  source = sources.get_source(builder, 'train')
  batch = next(iter(pipeline.train_dataset(source, config.data, batch_size, 1, seed=0)))
  lr_fn = optim.create_learning_rate_fn(config.optim, steps_per_epoch=10)
  state = state_lib.create_train_state(
      models.build_model(config.model), optim.create_optimizer(config.optim, lr_fn), batch['image'][:1].shape, seed=0
  )
  return state, batch, lr_fn


def _run_steps(state, batch, lr_fn, mesh, n):
  train_step, _ = steps.compile_steps(mesh, lr_fn)
  # A real copy: the step donates its input, and on CPU device_get/device_put may alias host memory.
  state = jax.device_put(jax.tree.map(np.array, jax.device_get(state)), sharding.replicated(mesh))
  losses = []
  for _ in range(n):
    state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  return jax.device_get(state), losses


def test_train_step_fits_a_small_batch(tiny_config):
  state, batch, lr_fn = _state_and_batch(tiny_config)
  _, losses = _run_steps(state, batch, lr_fn, sharding.make_mesh(1), 25)
  assert losses[-1] < 0.25 * losses[0], losses


@pytest.mark.slow
def test_sharded_step_equals_single_device(tiny_config):
  """Three Adam steps on 8 devices equal those on 1 device.

  Computed in float64: in float32 some random inits of this tiny net amplify
  summation-order rounding in the backward pass to ~1% (the same gap separates
  float32 from float64 on a single device), which would hide a real sharding bug.
  """
  assert len(jax.devices()) == 8
  tiny_config.model.dtype = 'float64'
  with jax.enable_x64(True):
    state, batch, lr_fn = _state_and_batch(tiny_config)
    one, losses_one = _run_steps(state, batch, lr_fn, sharding.make_mesh(1), 3)
    eight, losses_eight = _run_steps(state, batch, lr_fn, sharding.make_mesh(8), 3)
  np.testing.assert_allclose(losses_one, losses_eight, rtol=1e-7)  # params are stored in float32
  assert losses_one[-1] < losses_one[0]
  # BatchNorm statistics are taken over the global batch, so the updates agree too.
  for a, b in zip(jax.tree.leaves((one.params, one.batch_stats)), jax.tree.leaves((eight.params, eight.batch_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_eval_step_counts(tiny_config):
  state, batch, lr_fn = _state_and_batch(tiny_config)
  mesh = sharding.make_mesh(1)
  _, eval_step = steps.compile_steps(mesh, lr_fn)
  mask = np.array([1.0] * 10 + [0.0] * 6, np.float32)
  sums = jax.device_get(
      eval_step(jax.device_put(state, sharding.replicated(mesh)), sharding.shard_batch({**batch, 'mask': mask}, mesh))
  )
  logits = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats}, batch['image'])
  top1 = (np.argmax(logits, -1) == batch['label'])[:10].sum()
  assert sums['count'] == 10 and sums['top1'] == top1 and top1 <= sums['top5'] <= 10


def test_checkpoint_round_trip_and_best_kept(tmp_path, tiny_config):
  state, _, _ = _state_and_batch(tiny_config)
  state = state.replace(step=jnp.asarray(7, jnp.int32))
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), keep=1)
  for step, acc in ((1, 0.5), (2, 0.9), (3, 0.7)):
    ckpt.save(step, state, {'next_index': step}, tiny_config, {'test_accuracy': acc})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3] and ckpt.best_step() == 2 and ckpt.latest_step() == 3
  restored, data_state, config = ckpt.restore(3, checkpoint.abstract_like(state))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)
  assert type(restored.opt_state[1][0]).__name__ == 'ScaleByAdamState'  # optax structure survives
  assert data_state == {'next_index': 3}
  assert ml_collections.ConfigDict(config).model.name == tiny_config.model.name
  ckpt.close()
  # A restarted job keeps honouring the best checkpoint: its metrics were persisted.
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), keep=1)
  ckpt.save(4, state, {'next_index': 4}, tiny_config, {'test_accuracy': 0.1})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 4] and ckpt.best_step() == 2
  ckpt.close()


def _final_params(workdir):
  return checkpoint.latest_step_in(workdir), checkpoint.load_variables(workdir)['params']


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, tfds_dir):
  from configs import baseline  # pylint: disable=g-import-not-at-top

  config = baseline.get_config('tiny,epochs=2')
  config.data.data_dir, config.num_devices = tfds_dir, 1
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  results = trainer.train_and_evaluate(config, workdir)
  return config, workdir, results


@pytest.mark.slow
def test_training_writes_artefacts(uninterrupted):
  _, workdir, results = uninterrupted
  assert results['step'] == 50 and results['test_accuracy'] > 0.5  # 5 classes: chance is 0.2
  assert {'checkpoints', 'metrics.csv', 'results.json', 'tensorboard', 'train_inputs.png'} <= set(os.listdir(workdir))
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(workdir, 'tensorboard')))
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['test_accuracy'] == results['test_accuracy']
  # The best checkpoint (what the RoLSS code keeps) is the step with the highest test accuracy logged.
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    rows = list(csv.DictReader(f))
  steps = [int(r['step']) for r in rows]
  assert steps == sorted(set(steps))  # one row per step: an eval step's train summary and test metrics share it
  logged = [r for r in rows if r.get('test_accuracy')]
  assert logged and all(r['train_loss'] for r in logged)
  accuracy = {int(r['step']): float(r['test_accuracy']) for r in logged}
  best_step, best_metrics = checkpoint.resolve_step(workdir, 'best')
  assert best_step == results['best_step'] == max(accuracy, key=accuracy.get)
  assert best_metrics['test_accuracy'] == pytest.approx(accuracy[best_step]) == results['best']['test_accuracy']
  assert checkpoint.resolve_step(workdir, 'latest')[0] == results['step'] == checkpoint.resolve_step(workdir, '50')[0]
  with pytest.raises(checkpoint.CheckpointError, match='no checkpoint at step 7'):
    checkpoint.resolve_step(workdir, 7)


class _Interrupt(Exception):
  pass


def _stop_at(step_to_stop):
  def on_step(step):
    if step == step_to_stop:
      raise _Interrupt

  return on_step


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted(uninterrupted, tmp_path):
  config, reference_dir, _ = uninterrupted
  workdir = str(tmp_path / 'run')
  with pytest.raises(_Interrupt):  # dies mid-epoch 2, 5 steps after the epoch-1 checkpoint
    trainer.train_and_evaluate(config, workdir, on_step=_stop_at(30))
  assert checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints')).all_steps() == [25]
  trainer.train_and_evaluate(config, workdir)
  step, params = _final_params(workdir)
  ref_step, ref_params = _final_params(reference_dir)
  assert step == ref_step == 50
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

  # The killed run's rows after its checkpoint (step 30) were dropped: the table reads as one run.
  def logged_steps(d):
    with open(os.path.join(d, 'metrics.csv'), newline='') as f:
      return [int(r['step']) for r in csv.DictReader(f)]

  assert logged_steps(workdir) == logged_steps(reference_dir) == [10, 20, 25, 30, 40, 50]  # a row per step


@pytest.mark.slow
def test_wrong_checkpoint_is_refused(uninterrupted):
  config, workdir, _ = uninterrupted
  other = ml_collections.ConfigDict(config.to_dict())
  other.model.width = 16
  with pytest.raises(checkpoint.CheckpointError, match=r'(?s)different run.*config.model'):
    trainer.train_and_evaluate(other, workdir)
  assert checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints')).latest_step() == 50  # nothing lost


def test_non_finite_loss_stops_with_clear_error(tiny_config, tmp_path):
  tiny_config.optim.lr = 1e30
  tiny_config.train.log_every_steps = 2
  with pytest.raises(FloatingPointError, match=r'diverged: training metrics at step 2: .*train_loss'):
    trainer.train_and_evaluate(tiny_config, str(tmp_path))


def test_data_class_count_mismatch(tiny_config, tmp_path):
  tiny_config.model.num_classes = 10
  with pytest.raises(ValueError, match='config.model.num_classes=10, but digits_demo/private has 5 classes'):
    trainer.train_and_evaluate(tiny_config, str(tmp_path))


@pytest.mark.slow
def test_killed_launch_resumes_from_checkpoint(tmp_path, tfds_dir):
  """SIGKILL the real command line mid-run; the same command continues from the last checkpoint."""
  workdir = tmp_path / 'killed'
  command = [
      sys.executable,
      'launch.py',
      '--config=configs/baseline.py:tiny,epochs=12',
      f'--workdir={workdir}',
      f'--config.data.data_dir={tfds_dir}',
      '--config.num_devices=1',
  ]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  first_checkpoint = workdir / 'checkpoints' / '25' / 'state'
  deadline = time.time() + 240
  while not first_checkpoint.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  # 275 steps remain after the first checkpoint: the run is still going, or the test proves nothing.
  assert proc.poll() is None, f'the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
  killed_at = checkpoint.Checkpointer(str(workdir / 'checkpoints')).latest_step()
  assert killed_at is not None and killed_at < 300
  result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resuming from {workdir}/checkpoints/{killed_at}' in result.stderr
  with open(workdir / 'results.json') as f:
    assert json.load(f)['step'] == 300


@pytest.mark.parametrize('milestones', [(75, 90), (2, 2), ()])
def test_learning_rate_schedule_is_multistep(milestones):
  config = ml_collections.ConfigDict(dict(lr=1e-3, lr_gamma=0.1, lr_milestones=milestones))
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch=10)
  for epoch in range(100):
    expected = 1e-3 * 0.1 ** sum(epoch >= m for m in milestones)  # torch MultiStepLR, stepped per epoch
    for step in (epoch * 10, epoch * 10 + 9):
      assert float(lr_fn(step)) == pytest.approx(expected, rel=1e-6)
