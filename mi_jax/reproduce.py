"""The `reproduce` job: the paper's study, architectures x defenses, from training to the results table.

For every architecture and defense of `config.study` it
  1. trains the target (or both TTS stages) in `<arch>/<defense>/train/`, with the architecture's
     row of `study.per_architecture` (initialisation file, batch size),
  2. attacks its `study.checkpoint` ('best' on test, as the RoLSS code keeps, or 'latest') with PPA
     in `<arch>/<defense>/attack/`,
  3. evaluates the attack (mi_jax/metrics/evaluate.py) into that attack workdir,
after setting up the evaluation model once in `evaluation_model/` (imported from its file as it is,
or trained); then it writes `results.md`, `results.csv` and `results.json` (Acc of the attacked
checkpoint, AttAcc top-1/5 filtered and unfiltered, KNN distances, FID, PRDC, Δ against the arch's
no-defense row, false-positive rate) and the figures in `figures/`.

Work whose outputs exist is skipped (a finished train job's results.json, an attack's
attack.json, an evaluation.json), and each job resumes from its own checkpoints, so a
killed study continues where it stopped when the same command is run again.
"""

import csv
import importlib
import json
import math
import os
import time

from absl import logging
import ml_collections

from configs import attack_ppa as attack_ppa_config
from configs import eval_model as eval_model_config
from mi_jax import jobs
from mi_jax.analysis import gradient_flow, plots, repvgg_equivalence
from mi_jax.metrics import evaluate, scores
from mi_jax.train import reporting

# defense -> (config module, label in the table)
DEFENSES = {
    'none': ('baseline', 'No defense'),
    'rolss': ('rolss', 'RoLSS'),
    'ssf': ('ssf', 'SSF'),
    'tts': ('tts', 'TTS'),
    'bido': ('bido', 'BiDO'),
    'rolss_bido': ('rolss_bido', 'RoLSS+BiDO'),
}
# (column key, header) of results.md's main table; results.csv has these and PRDC_COLUMNS.
COLUMNS = (('architecture', 'Arch'), ('defense', 'Defense'), ('epoch', 'Epoch'), ('acc', 'Acc ↑'),
           ('attack_acc_top1', 'AttAcc@1 ↓'), ('attack_acc_top5', 'AttAcc@5 ↓'),
           ('attack_acc_unfiltered_top1', 'AttAcc@1 unfilt. ↓'), ('knn_dist_eval', 'KNN eval ↑'),
           ('knn_dist_facenet', 'KNN FaceNet ↑'), ('fid', 'FID ↑'), ('delta', 'Δ ↑'),
           ('false_positive_rate', 'False pos.'))
PRDC_COLUMNS = (('architecture', 'Arch'), ('defense', 'Defense'), ('fid', 'FID ↑'), ('prdc_precision', 'Precision ↓'),
                ('prdc_recall', 'Recall ↓'), ('prdc_density', 'Density ↓'), ('prdc_coverage', 'Coverage ↓'))
PERCENT = ('acc', 'attack_acc_top1', 'attack_acc_top5', 'attack_acc_unfiltered_top1', 'false_positive_rate')
# What evaluation.json's fid_features means, for the table's legend.
FID_CONVENTIONS = {
    'inception_ppa_inputs': "pytorch-fid's Inception with PPA's inputs ([-3, 1]: comparable with PPA's and the paper's FIDs)",
    'inception': "pytorch-fid's Inception, standard inputs (not comparable with PPA's FIDs)",
    'evaluation_model': "the evaluation model's features (no pytorch-fid weights given: not a standard FID)",
}


EVALUATION_MODEL_SOURCES = ('import', 'train')


def validate_config(config: ml_collections.ConfigDict):
  """Fails before any work, naming the field: the matrix, every cell's config, the protocol's weight files."""
  study = config.study
  for defense in study.defenses:
    jobs.check_field(defense in DEFENSES, 'study.defenses', tuple(study.defenses),
                     f'{defense!r} is not a defense; known: {sorted(DEFENSES)}')
  jobs.check_field(len(study.architectures) > 0, 'study.architectures', study.architectures,
                   'expected at least one architecture')
  which = str(study.checkpoint)
  jobs.check_field(which in ('latest', 'best'), 'study.checkpoint', study.checkpoint, "expected 'latest' or 'best'")
  jobs.check_field(study.evaluation_model in EVALUATION_MODEL_SOURCES, 'study.evaluation_model',
                   study.evaluation_model, f'expected one of {EVALUATION_MODEL_SOURCES}')
  for arch in study.architectures:
    jobs.check_field(arch in study.per_architecture, f'study.per_architecture.{arch}', None,
                     'every architecture of the study needs its row (init, init_file, batch_size)')
    row = study.per_architecture[arch]
    jobs.check_field(row.init in ('imagenet', 'scratch'), f'study.per_architecture.{arch}.init', row.init,
                     "expected 'imagenet' or 'scratch'")
    jobs.check_field(row.init != 'imagenet' or study.from_scratch or bool(row.init_file),
                     f'study.per_architecture.{arch}.init_file', row.init_file,
                     f'the protocol starts {arch} from ImageNet weights: name torchvision\'s file, or set '
                     'config.study.from_scratch=True to train from random weights')
  eval_file = config.evaluation_model.model.init_file
  if study.evaluation_model == 'import':
    jobs.check_field(bool(eval_file), 'evaluation_model.model.init_file', eval_file,
                     "study.evaluation_model='import' uses this file as the evaluation model (PPA's released "
                     "inception_v3_facescrub.pt): name it, or set study.evaluation_model='train'")
  else:
    jobs.check_field(study.from_scratch or bool(eval_file) or config.evaluation_model.model.name != 'inception_v3',
                     'evaluation_model.model.init_file', eval_file,
                     'PPA trains its Inception-v3 evaluation model from ImageNet weights: name torchvision\'s '
                     'file, or set config.study.from_scratch=True')
  for arch in study.architectures:
    for defense in study.defenses:
      jobs.validate_config(row_config(config, arch, defense))
  jobs.validate_config(evaluation_config(config))
  evaluate.validate_metrics(config.metrics)
  jobs.check_field(bool(config.attack.generator_dir), 'attack.generator_dir', config.attack.generator_dir,
                   'name a generator directory (configs/import_stylegan.py or the gan job)')


def row_config(config: ml_collections.ConfigDict, arch: str, defense: str) -> ml_collections.ConfigDict:
  """The train config of one cell: the defense's own config file, with the study's shared settings and
  the architecture's row of study.per_architecture."""
  module = importlib.import_module(f'configs.{DEFENSES[defense][0]}')
  row = module.get_config(f'model={arch}' if defense == 'ssf' else None)  # SSF's k follows the model
  shared = config.classifier
  row.seed, row.num_devices, row.matmul_precision = config.seed, config.num_devices, config.matmul_precision
  row.data = ml_collections.ConfigDict(shared.data.to_dict())
  row.optim = ml_collections.ConfigDict(shared.optim.to_dict())
  row.train = ml_collections.ConfigDict(shared.train.to_dict())
  row.model.name = arch
  for field in ('num_classes', 'width', 'stem', 'dtype', 'legacy_stage3_split'):
    row.model[field] = shared.model[field]
  recipe = config.study.per_architecture[arch]
  row.train.batch_size = recipe.batch_size
  row.model.init_file = '' if config.study.from_scratch else recipe.init_file
  if row.bido.a1 or row.bido.a2:  # the study's BiDO weights
    row.bido = ml_collections.ConfigDict(shared.bido.to_dict())
  if defense == 'tts':
    row.tts.stage1_epochs = max(1, round(config.study.tts_stage1_fraction * row.train.epochs))
    if arch.startswith('densenet'):  # truncation changes the tree; scaling keeps it, so the weights transfer
      row.model.skip_mode = 'scale'
  return row


def evaluation_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  row = ml_collections.ConfigDict(config.evaluation_model.to_dict())
  row.data = ml_collections.ConfigDict(config.classifier.data.to_dict())
  row.data.image_size = config.evaluation_model.data.image_size
  row.num_devices, row.matmul_precision = config.num_devices, config.matmul_precision
  if config.study.evaluation_model == 'import':
    eval_model_config.use_as_is(row)
  elif config.study.from_scratch:
    row.model.init_file = ''
  return row


def _attack_config(config, target_workdir: str) -> ml_collections.ConfigDict:
  attack = attack_ppa_config.get_config()
  attack.seed, attack.num_devices, attack.matmul_precision = config.seed, config.num_devices, config.matmul_precision
  attack.target.workdir = target_workdir
  attack.target.checkpoint = config.study.checkpoint
  attack.generator.dir = config.attack.generator_dir
  attack.attack.update(config.attack.settings.to_dict())
  return attack


def _done(path: str) -> bool:
  return os.path.exists(path)


def _target_dir(train_dir: str, defense: str) -> str:
  return os.path.join(train_dir, 'stage2') if defense == 'tts' else train_dir


def _load(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _steps_per_epoch(train_dir: str) -> int:
  """Optimiser steps per epoch of the run in `train_dir` (its results.json)."""
  return _load(os.path.join(train_dir, 'results.json'))['steps_per_epoch']


def reproduce(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs (or finishes) the study in `workdir`; launch.py has validated `config` (validate_config)."""
  cells = [(a, d) for a in config.study.architectures for d in config.study.defenses]
  total_jobs = 1 + 3 * len(cells)
  started, done_jobs = time.time(), 0

  def step(what: str, path: str, run):
    nonlocal done_jobs
    done_jobs += 1
    if _done(path):
      logging.info('[%d/%d] %s: done earlier (%s)', done_jobs, total_jobs, what, path)
      return
    elapsed = time.time() - started
    logging.info('[%d/%d] %s | elapsed %s', done_jobs, total_jobs, what, reporting.format_duration(elapsed))
    run()

  eval_dir = os.path.join(workdir, 'evaluation_model')
  step(f'evaluation model ({config.study.evaluation_model})', os.path.join(eval_dir, 'results.json'),
       lambda: jobs.run(evaluation_config(config), eval_dir))
  metrics = ml_collections.ConfigDict(config.metrics.to_dict())
  metrics.cache_dir = metrics.cache_dir or os.path.join(workdir, 'cache')

  rows = []
  for arch, defense in cells:
    cell = os.path.join(workdir, arch, defense)
    train_dir, attack_dir = os.path.join(cell, 'train'), os.path.join(cell, 'attack')
    target_dir = _target_dir(train_dir, defense)
    step(f'{arch} / {DEFENSES[defense][1]}: train', os.path.join(train_dir, 'results.json'),
         lambda: jobs.run(row_config(config, arch, defense), train_dir))
    step(f'{arch} / {DEFENSES[defense][1]}: attack', os.path.join(attack_dir, 'attack.json'),
         lambda: jobs.run(_attack_config(config, target_dir), attack_dir))
    step(f'{arch} / {DEFENSES[defense][1]}: evaluate', os.path.join(attack_dir, 'evaluation.json'),
         lambda: evaluate.evaluate_attack(attack_dir, eval_dir, metrics, config.study.checkpoint))
    attacked = _load(os.path.join(attack_dir, 'attack.json'))
    rows.append({'architecture': arch, 'defense': DEFENSES[defense][1], 'key': defense,
                 'acc': attacked['target_metrics']['test_accuracy'], 'step': attacked['target_step'],
                 'epoch': attacked['target_step'] / _steps_per_epoch(target_dir),
                 **_load(os.path.join(attack_dir, 'evaluation.json'))})

  add_deltas(rows)
  write_table(workdir, rows, config)
  write_figures(workdir, rows, config)
  logging.info('Study done in %s:\n%s', reporting.format_duration(time.time() - started), markdown_table(rows))
  return rows


def add_deltas(rows: list[dict]):
  """Δ of each defended row against its architecture's no-defense row (top-1 attack accuracy)."""
  baseline = {r['architecture']: r for r in rows if r['key'] == 'none'}
  for r in rows:
    base = baseline.get(r['architecture'])
    r['delta'] = (float('nan') if base is None or r is base else
                  scores.delta_ratio(base['acc'], base['attack_acc_top1'], r['acc'], r['attack_acc_top1']))


def _cell(key: str, value) -> str:
  if isinstance(value, str):
    return value
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '–'
  if key in PERCENT:
    return f'{100 * value:.2f}'
  if isinstance(value, float) and math.isinf(value):
    return '∞' if value > 0 else '−∞'
  value = value + 0.0  # no '-0.00': -0.0 + 0.0 is 0.0
  if key == 'epoch':
    return f'{value:g}'
  return f'{value:.2f}' if key != 'knn_dist_eval' or abs(value) < 1e4 else f'{value:.3g}'


FID_HEADERS = {'inception_ppa_inputs': 'FID ↑ (PPA inputs)', 'inception': 'FID ↑ (standard)',
               'evaluation_model': 'FID ↑ (eval. features)'}


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
  """The rows as a markdown table; the FID header names the convention when all rows share one."""
  conventions = {r.get('fid_features') for r in rows}
  fid_header = FID_HEADERS.get(conventions.pop(), 'FID ↑') if len(conventions) == 1 else 'FID ↑'
  headers = [fid_header if key == 'fid' else header for key, header in columns]
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(columns)]
  for r in rows:
    lines.append('| ' + ' | '.join(_cell(k, r.get(k)) for k, _ in columns) + ' |')
  return '\n'.join(lines)


def write_table(workdir: str, rows: list[dict], config: ml_collections.ConfigDict):
  fid = '; '.join(FID_CONVENTIONS.get(f, f) for f in sorted({r.get('fid_features', '') for r in rows}))
  note = (f'Accuracies in %. Epoch: of the attacked checkpoint ({config.study.checkpoint}), whose test accuracy is '
          'Acc. AttAcc: the evaluation model\'s accuracy on the final images (unfilt.: on every optimised image, '
          'before final selection). KNN distances: squared L2 to the nearest private training image of the class. '
          f'FID and PRDC (k = 3, per class, averaged) on {fid}. Δ = AttAcc@1 drop / Acc drop against No defense. '
          'False pos.: share of the final images the target accepts (confidence > 0.5) that the evaluation '
          'model rejects.')
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(f'{markdown_table(rows)}\n\n{markdown_table(rows, PRDC_COLUMNS)}\n\n{note}\n')
  keys = [k for k, _ in COLUMNS] + [k for k, _ in PRDC_COLUMNS if k.startswith('prdc_')] + ['step', 'fid_features']
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(keys)
    for r in rows:
      writer.writerow([r.get(k, '') for k in keys])
  reporting.write_json(os.path.join(workdir, 'results.json'),
                       {'rows': rows, 'study': json.loads(config.to_json_best_effort())})


def write_figures(workdir: str, rows: list[dict], config: ml_collections.ConfigDict):
  figures = os.path.join(workdir, 'figures')
  os.makedirs(figures, exist_ok=True)
  for arch in config.study.architectures:
    norms = {DEFENSES[d][1]: gradient_flow.stage_gradient_norms(os.path.join(workdir, arch, d, 'attack'))
             for d in config.study.defenses}
    gradient_flow.plot_gradient_flow(os.path.join(figures, f'gradient_flow_{arch}.png'), arch, norms)
  groups = [f'{r["architecture"]} {r["defense"]}' for r in rows]
  plots.grouped_bars(os.path.join(figures, 'false_positives.png'), groups,
                     {'target accepts': [r['target_accepts'] for r in rows],
                      'evaluation model rejects (of those)': [r['false_positive_rate'] for r in rows]},
                     'False positives: accepted by the target, rejected by the evaluation model', 'share of images')
  plots.grouped_bars(os.path.join(figures, 'accuracy_vs_attack.png'), groups,
                     {'Acc': [r['acc'] for r in rows], 'AttAcc@1': [r['attack_acc_top1'] for r in rows]},
                     'Natural accuracy and attack accuracy per defense', 'accuracy')
  path = os.path.join(figures, 'repvgg_equivalence.png')
  if config.analysis.repvgg and not os.path.exists(path):
    results = repvgg_equivalence.repvgg_equivalence(config.analysis.repvgg, width=config.analysis.repvgg_width,
                                                    image_size=config.classifier.data.image_size)
    reporting.write_json(os.path.join(figures, 'repvgg_equivalence.json'), results)
    repvgg_equivalence.plot_repvgg_equivalence(path, results)
