"""TTS: the param-tree transplant and the two-stage job (schedule, resume in either stage)."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import common, ssf, tts as tts_config
from mi_jax import defenses, jobs, models
from mi_jax.defenses import transplant, tts
from mi_jax.train import checkpoint, trainer


def _variables(skip, width=4):
  model = models.build_model(
      ml_collections.ConfigDict(
          dict(
              name='resnet18',
              num_classes=3,
              skip=skip,
              width=width,
              stem='small',
              dtype='float32',
              skip_mode='truncate',
          )
      )
  )
  return jax.device_get(models.init_variables(model, (1, 16, 16, 3), jax.random.PRNGKey(len(str(skip)) + width)))


def test_transplant_full_to_rolss_copies_everything():
  source, target = _variables((1, 1, 1, 1)), _variables((1, 1, 1, 0))
  moved, report = transplant.transplant(source, target)
  assert not report.reinitialised and not report.dropped
  assert len(report.copied) == len(jax.tree.leaves(target))
  for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(source)):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(moved) == jax.tree.structure(target)


def test_transplant_into_learnable_skip_needs_reinit():
  source, target = _variables((1, 1, 1, 1)), _variables((1, 1, 1, 'learn:0.2'))
  with pytest.raises(transplant.TransplantError, match='params/skip_scale_stage4: missing in source'):
    transplant.transplant(source, target)
  moved, report = transplant.transplant(source, target, reinit=('skip_scale',))
  assert report.reinitialised == ['params/skip_scale_stage4']
  assert float(moved['params']['skip_scale_stage4']) == pytest.approx(0.2)
  np.testing.assert_array_equal(moved['params']['fc']['kernel'], source['params']['fc']['kernel'])
  # The way back leaves the scale behind, which must be allowed explicitly.
  with pytest.raises(transplant.TransplantError, match='skip_scale_stage4: not in the target model'):
    transplant.transplant(moved, source)
  _, report = transplant.transplant(moved, source, drop=('skip_scale',))
  assert report.dropped == ['params/skip_scale_stage4']


def test_transplant_lists_every_shape_mismatch():
  with pytest.raises(transplant.TransplantError) as error:
    transplant.transplant(_variables((1, 1, 1, 1), width=4), _variables((1, 1, 1, 1), width=8))
  message = str(error.value)
  assert 'params/conv1/kernel: source (3, 3, 3, 4) vs target (3, 3, 3, 8)' in message
  assert 'batch_stats/layer4_1/bn2/var' in message and 'params/fc/bias' not in message


@pytest.mark.parametrize(
    'schedule, m, total, milestones, want1, want2',
    [
        ('continue', 5, 100, (75, 90), (), (70, 85)),
        ('continue', 80, 100, (75, 90), (75,), (10,)),
        ('restart', 5, 100, (75, 90), (75, 90), (75, 90)),
    ],
)
def test_stage_configs(schedule, m, total, milestones, want1, want2):
  config = tts_config.get_config()
  config.tts.lr_schedule, config.tts.stage1_epochs = schedule, m
  config.train.epochs, config.optim.lr_milestones = total, milestones
  stage1, stage2 = tts.stage_configs(config)
  assert (stage1.train.epochs, stage2.train.epochs) == (m, total - m)
  assert (stage1.optim.lr_milestones, stage2.optim.lr_milestones) == (want1, want2)
  assert stage1.model.skip == (1.0, 1.0, 1.0, 1.0) and stage2.model.skip == (1.0, 1.0, 1.0, 0.0)


def test_defense_configs():
  paper = tts_config.get_config()
  assert (paper.tts.stage1_epochs, paper.train.epochs - paper.tts.stage1_epochs) == (5, 95)
  assert ssf.get_config().model.skip == (1.0, 1.0, 1.0, 0.2)
  assert ssf.get_config('demo,learn').model.skip[-1] == 'learn:0.2'
  dense = ssf.get_config('model=densenet121')
  assert dense.model.name == 'densenet121' and dense.model.skip[-1] == 0.01  # the paper's concatenative k
  assert ssf.get_config('model=densenet121,learn').model.skip_mode == 'scale'
  assert ssf.get_config('model=densenet121,k=0.5').model.skip[-1] == 0.5
  for config in (paper, tts_config.get_config('demo'), ssf.get_config('demo,learn,k=0.5')):
    jobs.validate_config(config)
  bad = tts_config.get_config()
  bad.tts.stage1_epochs = 100
  with pytest.raises(ValueError, match='config.tts.stage1_epochs=100'):
    jobs.validate_config(bad)


@pytest.mark.parametrize(
    'name, last',
    [('resnet18', 3), ('mobilenet_v2', 5), ('efficientnet_b0', 5), ('vit_b_16', 11), ('maxvit_t', 3)],
)
def test_the_last_stage_is_the_last_one_with_skips_and_every_defended_model_builds(name, last):
  """MobileNetV2's and EfficientNet-B0's last stage has no residual: RoLSS/SSF/TTS act on the last one that
  has (models.residual_stages); MaxViT's defended stage gets every residual (its official default: none)."""
  config = common.base_config()
  config.model.name = name
  config.model.skip = (1.0,) * models.num_skip_stages(name)
  assert models.residual_stages(config.model)[last] and not any(models.residual_stages(config.model)[last + 1 :])
  for defense, value in (('rolss', 0.0), ('ssf', 0.2), ('tts', 0.0)):
    row = defenses.defend(config, defense)
    assert [i for i, k in enumerate(row.model.skip) if k != 1] == [last] and row.model.skip[last] == value
    models.build_model(row.model)  # a no-op or refused setting would raise
  if name == 'maxvit_t':
    assert tuple(defenses.defend(config, 'rolss').model.maxvit_layers) == ('none',) * 3 + ('mbconv+window+grid',)


class _Interrupt(Exception):
  pass


def _tts_tiny(tfds_dir):
  config = tts_config.get_config('tiny,epochs=3')  # stage 1: 1 epoch, stage 2: 2 epochs, 25 steps each
  config.data.data_dir, config.num_devices = tfds_dir, 1
  return config


@pytest.fixture(scope='module')
def tts_reference(tmp_path_factory, tfds_dir):
  """A TTS run, recording the variables the trainer's stage 2 starts from (its init_variables hook)."""
  workdir = str(tmp_path_factory.mktemp('tts'))
  started_from = {}
  train = trainer.train_and_evaluate

  def recording(config, stage_dir, on_step=None, init_variables=None):
    if init_variables is not None:  # stage 2: keep what the hook hands the trainer

      def hook(fresh):
        started_from.update(init_variables(fresh))
        return started_from

      return train(config, stage_dir, on_step=on_step, init_variables=hook)
    return train(config, stage_dir, on_step=on_step)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(trainer, 'train_and_evaluate', recording)
    results = tts.train_tts(_tts_tiny(tfds_dir), workdir)
  return workdir, results, started_from


@pytest.mark.slow
def test_tts_runs_both_stages_from_stage1_weights(tts_reference):
  workdir, results, started_from = tts_reference
  assert checkpoint.latest_step_in(os.path.join(workdir, 'stage1')) == 25
  assert checkpoint.latest_step_in(os.path.join(workdir, 'stage2')) == 50
  with open(os.path.join(workdir, 'stage2', 'transplant.json')) as f:
    report = json.load(f)
  assert report['reinitialised'] == [] and len(report['copied']) > 50
  assert results['stage2']['test_accuracy'] == results['test_accuracy'] > 0.5
  # What the trainer's stage 2 started from is exactly stage 1's final variables, leaf by leaf.
  stage1 = checkpoint.load_variables(os.path.join(workdir, 'stage1'))
  assert jax.tree.structure(started_from) == jax.tree.structure(stage1)
  for a, b in zip(jax.tree.leaves(started_from), jax.tree.leaves(stage1)):
    np.testing.assert_array_equal(a, b)
  # ... and stage 2 trained on from there: its final weights differ from them.
  final = checkpoint.load_variables(os.path.join(workdir, 'stage2'))
  assert any(
      not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final['params']), jax.tree.leaves(stage1['params']))
  )


@pytest.mark.slow
@pytest.mark.parametrize('stage, step', [('stage1', 10), ('stage2', 30)])
def test_tts_resumes_in_the_stage_it_was_killed_in(tts_reference, tfds_dir, tmp_path, stage, step):
  reference_dir, _, _ = tts_reference

  def stop(name, at):
    if (name, at) == (stage, step):
      raise _Interrupt

  with pytest.raises(_Interrupt):
    tts.train_tts(_tts_tiny(tfds_dir), str(tmp_path), on_step=stop)
  tts.train_tts(_tts_tiny(tfds_dir), str(tmp_path))
  final = checkpoint.load_variables(str(tmp_path / 'stage2'))
  reference = checkpoint.load_variables(os.path.join(reference_dir, 'stage2'))
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
