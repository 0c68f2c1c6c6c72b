"""The `reproduce` job: the paper's study, architectures x defenses, from training to the results table.

For every architecture and defense of `config.study` it
  1. trains the target (or both TTS stages) in `<arch>/<defense>/train/`,
  2. attacks it with PPA in `<arch>/<defense>/attack/`,
  3. evaluates the attack (mi_jax/metrics/evaluate.py) into that attack workdir,
after training the evaluation model once in `evaluation_model/`; then it writes
`results.md`, `results.csv` and `results.json` (Acc, AttAcc top-1/5, KNN distances, FID,
Δ against the arch's no-defense row, false-positive rate) and the figures in `figures/`.

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
COLUMNS = ('architecture', 'defense', 'acc', 'attack_acc_top1', 'attack_acc_top5', 'knn_dist_eval',
           'knn_dist_facenet', 'fid', 'delta', 'false_positive_rate')
HEADERS = ('Arch', 'Defense', 'Acc ↑', 'AttAcc@1 ↓', 'AttAcc@5 ↓', 'KNN eval ↑', 'KNN FaceNet ↑', 'FID ↑', 'Δ ↑',
           'False pos.')


def validate_config(config: ml_collections.ConfigDict):
  for defense in config.study.defenses:
    jobs.check_field(defense in DEFENSES, 'study.defenses', tuple(config.study.defenses),
                     f'{defense!r} is not a defense; known: {sorted(DEFENSES)}')
  jobs.check_field(len(config.study.architectures) > 0, 'study.architectures', config.study.architectures,
                   'expected at least one architecture')
  for arch in config.study.architectures:
    for defense in config.study.defenses:
      jobs.validate_config(row_config(config, arch, defense))
  jobs.validate_config(evaluation_config(config))
  evaluate.validate_metrics(config.metrics)
  jobs.check_field(bool(config.attack.generator_dir), 'attack.generator_dir', config.attack.generator_dir,
                   'name a generator directory (configs/import_stylegan.py or the gan job)')


def row_config(config: ml_collections.ConfigDict, arch: str, defense: str) -> ml_collections.ConfigDict:
  """The train config of one cell: the defense's own config file, with the study's shared settings."""
  module = importlib.import_module(f'configs.{DEFENSES[defense][0]}')
  row = module.get_config(f'model={arch}' if defense == 'ssf' else None)  # SSF's k follows the model
  shared = config.classifier
  row.seed, row.num_devices = config.seed, config.num_devices
  row.data = ml_collections.ConfigDict(shared.data.to_dict())
  row.optim = ml_collections.ConfigDict(shared.optim.to_dict())
  row.train = ml_collections.ConfigDict(shared.train.to_dict())
  row.model.name = arch
  for field in ('num_classes', 'width', 'stem', 'dtype'):
    row.model[field] = shared.model[field]
  row.model.init_file = config.study.init_files.get(arch, '')
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
  row.num_devices = config.num_devices
  return row


def _attack_config(config, target_workdir: str) -> ml_collections.ConfigDict:
  attack = importlib.import_module('configs.attack_ppa').get_config()
  attack.seed, attack.num_devices = config.seed, config.num_devices
  attack.target.workdir = target_workdir
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
  step('evaluation model', os.path.join(eval_dir, 'results.json'),
       lambda: jobs.run(evaluation_config(config), eval_dir))

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
         lambda: evaluate.evaluate_attack(attack_dir, eval_dir, config.metrics.facenet_file,
                                          config.metrics.fid_inception_file, config.metrics.fid_quirk,
                                          config.metrics.batch_size,
                                          config.metrics.cache_dir or os.path.join(workdir, 'cache')))
    trained = _load(os.path.join(target_dir, 'results.json'))
    rows.append({'architecture': arch, 'defense': DEFENSES[defense][1], 'key': defense,
                 'acc': trained['test_accuracy'], **_load(os.path.join(attack_dir, 'evaluation.json'))})

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
  if key in ('acc', 'attack_acc_top1', 'attack_acc_top5', 'false_positive_rate'):
    return f'{100 * value:.2f}'
  if isinstance(value, float) and math.isinf(value):
    return '∞' if value > 0 else '−∞'
  return f'{value:.2f}' if key != 'knn_dist_eval' or abs(value) < 1e4 else f'{value:.3g}'


def markdown_table(rows: list[dict]) -> str:
  lines = ['| ' + ' | '.join(HEADERS) + ' |', '|' + '---|' * len(HEADERS)]
  for r in rows:
    lines.append('| ' + ' | '.join(_cell(k, r.get(k)) for k in COLUMNS) + ' |')
  return '\n'.join(lines)


def write_table(workdir: str, rows: list[dict], config: ml_collections.ConfigDict):
  fid_features = sorted({r.get('fid_features', '') for r in rows})
  note = (f'Accuracies in %. KNN distances: squared L2 to the nearest private training image of the class. '
          f'FID features: {", ".join(fid_features)}. Δ = AttAcc@1 drop / Acc drop against No defense. '
          'False pos.: share of the final images the target accepts (confidence > 0.5) that the evaluation '
          'model rejects.')
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(f'{markdown_table(rows)}\n\n{note}\n')
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    for r in rows:
      writer.writerow([r.get(k, '') for k in COLUMNS])
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
