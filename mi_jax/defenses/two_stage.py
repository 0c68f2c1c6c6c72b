"""Two training stages in one workdir, the second started from the first's weights (TTS, TL-DMI).

Stage 1 trains in `<workdir>/stage1/`; stage 2 builds its own model, starts from stage 1's weights by a
param-tree transplant (transplant.py) and trains in `<workdir>/stage2/`. Each stage has its own checkpoints,
so a killed run resumes in whichever stage it died; stage 2 is the model the attacks use.
"""

import dataclasses
import functools
import os
from typing import Callable, Sequence

from absl import logging
import ml_collections

from mi_jax.defenses import transplant
from mi_jax.train import checkpoint, reporting, trainer


def train(
    stage1: ml_collections.ConfigDict,
    stage2: ml_collections.ConfigDict,
    workdir: str,
    name: str,
    reinit: Sequence[str] = (),
    drop: Sequence[str] = (),
    keep_fresh: Sequence[str] = (),
    on_step: Callable[[str, int], None] | None = None,
) -> dict:
  """Runs (or resumes) both stages; stage 2's leaves matching `reinit` may start fresh, those matching
  `keep_fresh` always do, and stage 1's matching `drop` may be left behind. `on_step(stage_name, step)` as in
  trainer.train_and_evaluate. Returns stage 2's results with both stages' under 'stage1' and 'stage2'."""
  hook = lambda stage: None if on_step is None else functools.partial(on_step, stage)
  dir1, dir2 = os.path.join(workdir, 'stage1'), os.path.join(workdir, 'stage2')
  logging.info('%s stage 1: %d epochs', name, stage1.train.epochs)
  results1 = trainer.train_and_evaluate(stage1, dir1, on_step=hook('stage1'))

  def from_stage1(fresh):
    moved, report = transplant.transplant(
        checkpoint.load_variables(dir1), fresh, reinit=tuple(reinit), drop=tuple(drop), keep_fresh=tuple(keep_fresh)
    )
    logging.info('%s transplant stage 1 -> stage 2: %s', name, report.summary())
    reporting.write_json(os.path.join(dir2, 'transplant.json'), dataclasses.asdict(report))
    return moved

  logging.info('%s stage 2: %d epochs', name, stage2.train.epochs)
  os.makedirs(dir2, exist_ok=True)
  results2 = trainer.train_and_evaluate(stage2, dir2, on_step=hook('stage2'), init_variables=from_stage1)
  results = {'stage1': results1, 'stage2': results2, **results2}
  reporting.write_results(workdir, results)
  return results


def train_second_only(
    stage2: ml_collections.ConfigDict, workdir: str, name: str, on_step: Callable[[str, int], None] | None = None
) -> dict:
  """Stage 2 alone (its start is a file, not a first stage), in `<workdir>/stage2/` all the same."""
  logging.info('%s: no first stage; stage 2: %d epochs', name, stage2.train.epochs)
  hook = None if on_step is None else functools.partial(on_step, 'stage2')
  results = trainer.train_and_evaluate(stage2, os.path.join(workdir, 'stage2'), on_step=hook)
  reporting.write_results(workdir, {'stage2': results, **results})
  return results
