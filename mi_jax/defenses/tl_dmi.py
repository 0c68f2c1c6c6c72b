"""The `tl_dmi` job: TL-DMI's pretraining and frozen fine-tuning (transfer.py), as two stages (two_stage.py)."""

from typing import Callable

from absl import logging
import ml_collections

from mi_jax import config_checks
from mi_jax.data import sources
from mi_jax.defenses import two_stage
from mi_jax.train import trainer


def validate_config(config: ml_collections.ConfigDict):
  """The tl_dmi job: a freeze point, and either a pretraining stage or a file of public weights."""
  t, check = config.transfer, config_checks.check_field
  check(bool(t.finetune_from), 'transfer.finetune_from', t.finetune_from, 'the tl_dmi job needs a freeze point')
  check(t.pretrain_epochs >= 0, 'transfer.pretrain_epochs', t.pretrain_epochs, 'expected >= 0')
  if t.pretrain_epochs:
    check(t.public_num_classes > 0, 'transfer.public_num_classes', t.public_num_classes, 'expected > 0')
    sources.resolve(t.public_data)
  else:
    check(
        bool(config.model.init_file),
        'model.init_file',
        config.model.init_file,
        'transfer.pretrain_epochs=0 takes the public weights from this file: name it, or pretrain on '
        'transfer.public_data',
    )
  for stage in stage_configs(config):
    if stage is not None:
      trainer.validate_config(stage)


def stage_configs(config: ml_collections.ConfigDict):
  """(stage-1 config or None, stage-2 config) of a TL-DMI config."""
  stage2 = ml_collections.ConfigDict(config.to_dict())
  stage2.job = 'train'
  if not config.transfer.pretrain_epochs:
    return None, stage2
  stage1 = ml_collections.ConfigDict(config.to_dict())
  stage1.job = 'train'
  stage1.transfer.finetune_from = ''  # pretraining trains every layer
  stage1.data = ml_collections.ConfigDict(config.transfer.public_data.to_dict())
  stage1.data.image_size = config.data.image_size
  stage1.model.num_classes = config.transfer.public_num_classes
  stage1.model.init_file = ''
  stage1.train.epochs = config.transfer.pretrain_epochs
  stage2.model.init_file = ''  # stage 2 starts from stage 1's weights
  return stage1, stage2


def train_transfer(config: ml_collections.ConfigDict, workdir: str, on_step: Callable[[str, int], None] | None = None):
  """Runs (or resumes) TL-DMI: pretraining (unless the public weights are a file) and the frozen fine-tuning."""
  stage1, stage2 = stage_configs(config)
  logging.info('TL-DMI: fine-tuning from %r on', config.transfer.finetune_from)
  if stage1 is None:  # public weights from config.model.init_file; one stage, in stage2/ all the same
    return two_stage.train_second_only(stage2, workdir, 'TL-DMI', on_step)
  head = tuple(config.model.init_reinit)  # the public classes' head: always a fresh one
  return two_stage.train(stage1, stage2, workdir, 'TL-DMI', keep_fresh=head, on_step=on_step)


run = train_transfer  # the `tl_dmi` job (mi_jax/jobs.py)
