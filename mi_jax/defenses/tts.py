"""The `tts` job: two-stage training (Koh et al., ECCV 2024).

Stage 1 trains the model with its skip connections (`config.tts.stage1_skip`)
for M = `config.tts.stage1_epochs` epochs. Stage 2 builds the defended model
(`config.model.skip`, e.g. last-stage skips removed), starts it from stage 1's
weights by a param-tree transplant, and trains N = train.epochs - M epochs (two_stage.py).

Learning rate across the switch (`config.tts.lr_schedule`):
  'continue'  the two stages follow one schedule over train.epochs: a milestone
              at epoch m falls in stage 1 if m < M, else at epoch m - M of
              stage 2 (M=5, N=95 with milestones 75, 90: stage 2 decays at 70, 85);
  'restart'   stage 2 runs the full milestone list again from its own epoch 0.
Each stage gets a fresh optimizer state: the paper initialises stage 2 with
stage 1's weights only. Both stages live in their own sub-workdir
(`stage1/`, `stage2/`) with their own checkpoints, so a killed TTS run resumes
in whichever stage it died.
"""

from typing import Callable

from absl import logging
import ml_collections

from mi_jax import config_checks
from mi_jax.defenses import two_stage
from mi_jax.train import trainer


def validate_config(config: ml_collections.ConfigDict):
  """A classifier config with a tts section (configs/tts.py): both stages must be valid."""
  config_checks.check_field('tts' in config, 'tts', None, 'the tts job needs a config.tts section (configs/tts.py)')
  for stage in stage_configs(config):  # validates stage1_epochs and lr_schedule
    trainer.validate_config(stage)


def stage_configs(config: ml_collections.ConfigDict):
  """(stage-1 config, stage-2 config) derived from a TTS config."""
  m, total = config.tts.stage1_epochs, config.train.epochs
  if not 0 < m < total:
    raise ValueError(f'config.tts.stage1_epochs={m}: expected 0 < M < config.train.epochs={total}')
  milestones = tuple(config.optim.lr_milestones)
  stage1 = ml_collections.ConfigDict(config.to_dict())
  stage2 = ml_collections.ConfigDict(config.to_dict())
  stage1.model.skip = tuple(config.tts.stage1_skip)
  stage1.train.epochs, stage2.train.epochs = m, total - m
  if config.tts.lr_schedule == 'continue':
    stage1.optim.lr_milestones = tuple(x for x in milestones if x < m)
    stage2.optim.lr_milestones = tuple(x - m for x in milestones if x >= m)
  elif config.tts.lr_schedule != 'restart':
    raise ValueError(f"config.tts.lr_schedule={config.tts.lr_schedule!r}: expected 'continue' or 'restart'")
  return stage1, stage2


def train_tts(
    config: ml_collections.ConfigDict, workdir: str, on_step: Callable[[str, int], None] | None = None
) -> dict:
  """Runs (or resumes) both stages; `on_step(stage_name, step)` as in trainer.train_and_evaluate."""
  stage1, stage2 = stage_configs(config)
  logging.info('TTS: stage 1 with skip=%s, stage 2 with skip=%s', stage1.model.skip, stage2.model.skip)
  return two_stage.train(
      stage1, stage2, workdir, 'TTS', reinit=tuple(config.tts.reinit), drop=tuple(config.tts.drop), on_step=on_step
  )


run = train_tts  # the `tts` job (mi_jax/jobs.py)
