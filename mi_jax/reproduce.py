"""The `reproduce` job: the paper's study, architectures x defenses x attacks, from training to the table.

For every architecture and defense of `config.study` it
  1. trains the target (or both TTS stages) in `<arch>/<defense>/train/`, the defense applied by
     mi_jax.defenses.defend, with the architecture's row of `study.per_architecture`
     (initialisation file, batch size),
  2. runs every attack of `study.attacks` (mi_jax.attacks) on its `study.checkpoint` ('best' on test,
     as the RoLSS code keeps, or 'latest') in `<arch>/<defense>/<attack>/`,
  3. evaluates each attack (mi_jax/metrics/evaluate.py) into that attack's workdir,
after setting up the evaluation model once in `evaluation_model/` (imported from its file as it is,
or trained); then it writes `results.md`, `results.csv` and `results.json` (Acc of the attacked
checkpoint, AttAcc top-1/5 filtered and unfiltered, KNN distances, FID, PRDC, Δ against the arch's
no-defense row, false-positive rate) and the figures in `figures/`.

Work whose outputs exist is skipped (a finished train job's results.json, an attack's
attack.json, an evaluation.json), and each job resumes from its own checkpoints, so a
killed study continues where it stopped when the same command is run again.
"""

import csv
import json
import math
import os
import time

from absl import logging
import ml_collections

from mi_jax import attacks, config_checks, defenses, jobs, models
from mi_jax.analysis import gradient_flow, plots, repvgg_equivalence
from mi_jax.metrics import evaluate, scores
from mi_jax.train import reporting, trainer

# (column key, header) of results.md's main table; results.csv has these and PRDC_COLUMNS.
COLUMNS = (
    ('architecture', 'Arch'),
    ('defense', 'Defense'),
    ('epoch', 'Epoch'),
    ('acc', 'Acc ↑'),
    ('attack_acc_top1', 'AttAcc@1 ↓'),
    ('attack_acc_top1_ci', '95% CI'),
    ('attack_acc_top5', 'AttAcc@5 ↓'),
    ('attack_acc_unfiltered_top1', 'AttAcc@1 unfilt. ↓'),
    ('knn_dist_eval', 'KNN eval ↑'),
    ('knn_dist_facenet', 'KNN FaceNet ↑'),
    ('fid', 'FID ↑'),
    ('delta', 'Δ ↑'),
    ('p_vs_none', 'p vs none'),
    ('false_positive_rate', 'False pos.'),
)
PRDC_COLUMNS = (
    ('architecture', 'Arch'),
    ('defense', 'Defense'),
    ('fid', 'FID ↑'),
    ('prdc_precision', 'Precision ↓'),
    ('prdc_recall', 'Recall ↓'),
    ('prdc_density', 'Density ↓'),
    ('prdc_coverage', 'Coverage ↓'),
)
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
  check, study = config_checks.check_field, config.study
  for defense in study.defenses:
    check(
        defense in defenses.DEFENSES,
        'study.defenses',
        tuple(study.defenses),
        f'{defense!r} is not a defense; known: {sorted(defenses.DEFENSES)}',
    )
  for attack in study.attacks:
    check(
        attack in attacks.ATTACKS and attack in config.attacks,
        'study.attacks',
        tuple(study.attacks),
        f'{attack!r}: expected attacks of mi_jax.attacks.ATTACKS ({sorted(attacks.ATTACKS)}) with a config.attacks '
        'section',
    )
    check(
        config.attacks[attack].job == attacks.ATTACKS[attack],
        f'attacks.{attack}.job',
        config.attacks[attack].job,
        f'expected {attacks.ATTACKS[attack]!r}',
    )
  check(len(study.architectures) > 0, 'study.architectures', study.architectures, 'expected at least one architecture')
  check(len(study.attacks) > 0, 'study.attacks', study.attacks, 'expected at least one attack')
  check(study.checkpoint in ('latest', 'best'), 'study.checkpoint', study.checkpoint, "expected 'latest' or 'best'")
  check(
      study.evaluation_model in EVALUATION_MODEL_SOURCES,
      'study.evaluation_model',
      study.evaluation_model,
      f'expected one of {EVALUATION_MODEL_SOURCES}',
  )
  for arch in study.architectures:
    check(
        arch in study.per_architecture,
        f'study.per_architecture.{arch}',
        None,
        'every architecture of the study needs its row (init, init_file, batch_size)',
    )
    row = study.per_architecture[arch]
    check(
        row.init in ('imagenet', 'scratch'),
        f'study.per_architecture.{arch}.init',
        row.init,
        "expected 'imagenet' or 'scratch'",
    )
    check(
        row.init != 'imagenet' or study.from_scratch or bool(row.init_file),
        f'study.per_architecture.{arch}.init_file',
        row.init_file,
        f"the protocol starts {arch} from ImageNet weights: name torchvision's file, or set "
        'config.study.from_scratch=True to train from random weights',
    )
  eval_file = config.evaluation_model.model.init_file
  if study.evaluation_model == 'import':
    check(
        bool(eval_file),
        'evaluation_model.model.init_file',
        eval_file,
        "study.evaluation_model='import' uses this file as the evaluation model (PPA's released "
        "inception_v3_facescrub.pt): name it, or set study.evaluation_model='train'",
    )
  else:
    check(
        study.from_scratch or bool(eval_file) or config.evaluation_model.model.name != 'inception_v3',
        'evaluation_model.model.init_file',
        eval_file,
        'PPA trains its Inception-v3 evaluation model from ImageNet '
        "weights: name torchvision's file, or set config.study.from_scratch=True",
    )
  for arch in study.architectures:
    for defense in study.defenses:
      jobs.validate_config(row_config(config, arch, defense))
  jobs.validate_config(evaluation_config(config))
  for attack in study.attacks:
    generator_job = generator_config(config, attack, "<each cell's target>")
    if generator_job is not None:  # trained per cell for its target
      jobs.validate_config(generator_job)
      continue
    check(
        bool(config.attacks[attack].generator.dir),
        f'attacks.{attack}.generator.dir',
        config.attacks[attack].generator.dir,
        'name a generator directory (configs/import_stylegan.py or the gan job), or give the attack a '
        'generator_job that trains one per target',
    )
  evaluate.validate_metrics(config.metrics)


def row_config(config: ml_collections.ConfigDict, arch: str, defense: str) -> ml_collections.ConfigDict:
  """The train config of one cell: the study's classifier settings for `arch` (its row of
  study.per_architecture), with `defense` applied."""
  row = ml_collections.ConfigDict(config.classifier.to_dict())
  row.seed, row.num_devices, row.matmul_precision = config.seed, config.num_devices, config.matmul_precision
  row.model.name = arch
  row.model.skip = (1.0,) * models.num_skip_stages(arch)
  recipe = config.study.per_architecture[arch]
  row.train.batch_size = recipe.batch_size
  row.model.init_file = '' if config.study.from_scratch else recipe.init_file
  return defenses.defend(row, defense, tts_stage1_fraction=config.study.tts_stage1_fraction)


def evaluation_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  row = ml_collections.ConfigDict(config.evaluation_model.to_dict())
  row.data = ml_collections.ConfigDict(config.classifier.data.to_dict())
  row.data.image_size = config.evaluation_model.data.image_size
  row.num_devices, row.matmul_precision = config.num_devices, config.matmul_precision
  if config.study.evaluation_model == 'import':
    trainer.as_imported(row)
  elif config.study.from_scratch:
    row.model.init_file = ''
  return row


def attack_config(
    config: ml_collections.ConfigDict, attack: str, target_workdir: str, generator_dir: str = ''
) -> ml_collections.ConfigDict:
  """The job config of `attack` on the target trained in `target_workdir`, at the study's checkpoint
  (with the generator in `generator_dir` when the study trained one for that target)."""
  row = ml_collections.ConfigDict(config.attacks[attack].to_dict())
  if 'generator_job' in row:
    del row['generator_job']
  row.seed, row.num_devices, row.matmul_precision = config.seed, config.num_devices, config.matmul_precision
  row.target.workdir = target_workdir
  row.target.checkpoint = config.study.checkpoint
  if generator_dir:
    row.generator.dir = generator_dir
  return row


def generator_config(
    config: ml_collections.ConfigDict, attack: str, target_workdir: str
) -> ml_collections.ConfigDict | None:
  """The config of the job that trains `attack`'s generator for one target, or None for a shared generator.

  `config.attacks.<attack>.generator_job`, when present, is such a job's config (PLG-MI's plgmi_gan,
  KEDMI's gan64:kedmi: their GANs learn from the target they attack); its `gan.target` is set per cell.
  """
  job = config.attacks[attack].get('generator_job')
  if job is None:
    return None
  row = ml_collections.ConfigDict(job.to_dict())
  row.seed, row.num_devices, row.matmul_precision = config.seed, config.num_devices, config.matmul_precision
  row.gan.target.workdir = target_workdir
  row.gan.target.checkpoint = config.study.checkpoint
  return row


GENERATOR_EXPORT = 'gan'  # where the gan64 and plgmi_gan jobs leave their GAN directory in their workdir


def _target_dir(train_dir: str, defense: str) -> str:
  return os.path.join(train_dir, 'stage2') if defenses.DEFENSES[defense].two_stage else train_dir


def _load(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _steps_per_epoch(train_dir: str) -> int:
  """Optimiser steps per epoch of the run in `train_dir` (its results.json)."""
  return _load(os.path.join(train_dir, 'results.json'))['steps_per_epoch']


def reproduce(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs (or finishes) the study in `workdir`; launch.py has validated `config` (validate_config)."""
  study = config.study
  cells = [(a, d) for a in study.architectures for d in study.defenses]
  per_target_generators = sum('generator_job' in config.attacks[a] for a in study.attacks)
  total_jobs = 1 + len(cells) * (1 + 2 * len(study.attacks) + per_target_generators)
  started, done_jobs = time.time(), 0

  def step(what: str, path: str, run):
    nonlocal done_jobs
    done_jobs += 1
    if os.path.exists(path):
      logging.info('[%d/%d] %s: done earlier (%s)', done_jobs, total_jobs, what, path)
      return
    elapsed = time.time() - started
    logging.info('[%d/%d] %s | elapsed %s', done_jobs, total_jobs, what, reporting.format_duration(elapsed))
    run()

  eval_dir = os.path.join(workdir, 'evaluation_model')
  step(
      f'evaluation model ({study.evaluation_model})',
      os.path.join(eval_dir, 'results.json'),
      lambda: jobs.run(evaluation_config(config), eval_dir),
  )
  metrics = ml_collections.ConfigDict(config.metrics.to_dict())
  metrics.cache_dir = metrics.cache_dir or os.path.join(workdir, 'cache')

  rows = []
  for arch, defense in cells:
    label = defenses.DEFENSES[defense].label
    train_dir = os.path.join(workdir, arch, defense, 'train')
    target_dir = _target_dir(train_dir, defense)
    step(
        f'{arch} / {label}: train',
        os.path.join(train_dir, 'results.json'),
        lambda: jobs.run(row_config(config, arch, defense), train_dir),
    )
    for attack in study.attacks:
      attack_dir = os.path.join(workdir, arch, defense, attack)
      generator_dir = ''
      generator_job = generator_config(config, attack, target_dir)
      if generator_job is not None:
        gan_workdir = os.path.join(workdir, arch, defense, f'{attack}_generator')
        step(
            f'{arch} / {label} / {attack}: generator',
            os.path.join(gan_workdir, 'results.json'),
            lambda: jobs.run(generator_job, gan_workdir),
        )
        generator_dir = os.path.join(gan_workdir, GENERATOR_EXPORT)
      step(
          f'{arch} / {label} / {attack}: attack',
          os.path.join(attack_dir, 'attack.json'),
          lambda: jobs.run(attack_config(config, attack, target_dir, generator_dir), attack_dir),
      )
      step(
          f'{arch} / {label} / {attack}: evaluate',
          os.path.join(attack_dir, 'evaluation.json'),
          lambda: evaluate.evaluate_attack(attack_dir, eval_dir, metrics, study.checkpoint),
      )
      attacked = _load(os.path.join(attack_dir, 'attack.json'))
      rows.append(
          {
              'architecture': arch,
              'defense': label,
              'key': defense,
              'attack': attack,
              'acc': attacked['target_metrics']['test_accuracy'],
              'step': attacked['target_step'],
              'epoch': attacked['target_step'] / _steps_per_epoch(target_dir),
              **_load(os.path.join(attack_dir, 'evaluation.json')),
          }
      )

  add_deltas(rows)
  write_table(workdir, rows, config)
  write_figures(workdir, rows, config)
  logging.info(
      'Study done in %s:\n%s', reporting.format_duration(time.time() - started), markdown_table(rows, _columns(study))
  )
  return rows


NO_ACCURACY_COST = 'no acc. cost'  # Δ's cell where a defense does not lower the test accuracy


def add_deltas(rows: list[dict]):
  """Δ of each defended row against the no-defense row of its architecture and attack (top-1 accuracy),
  NO_ACCURACY_COST where the defense does not lower the accuracy (Δ is undefined there), and the 95%
  Wilson interval of each row's top-1 attack accuracy over its images, and the two-sided Fisher exact
  p-value of its difference from the no-defense row's (`p_vs_none`)."""
  baseline = {(r['architecture'], r.get('attack')): r for r in rows if r['key'] == 'none'}
  for r in rows:
    base = baseline.get((r['architecture'], r.get('attack')))
    if base is None or r is base:
      r['delta'] = float('nan')
    elif not scores.accuracy_cost(base['acc'], r['acc']):
      r['delta'] = NO_ACCURACY_COST
    else:
      r['delta'] = scores.delta_ratio(base['acc'], base['attack_acc_top1'], r['acc'], r['attack_acc_top1'])
    if r.get('images'):
      low, high = scores.wilson_interval(_hits(r), r['images'])
      r['attack_acc_top1_ci'] = [low, high]
      r['attack_acc_top1_ci_low'], r['attack_acc_top1_ci_high'] = low, high
      if base is not None and r is not base and base.get('images'):
        r['p_vs_none'] = scores.fisher_exact_p(_hits(r), r['images'], _hits(base), base['images'])


def _hits(row: dict) -> int:
  """The number of a row's final images the evaluation model labels as their class."""
  return round(row['attack_acc_top1'] * row['images'])


def _no_negative_zero(value: float) -> float:
  """Values that print as zero print as 0.00, not -0.00."""
  return 0.0 if abs(value) < 0.005 else value


def _cell(key: str, value) -> str:
  if isinstance(value, str):
    return value
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '–'
  if key in PERCENT:
    return f'{_no_negative_zero(100 * value):.2f}'
  if key.endswith('_ci'):  # a (low, high) interval of a percentage
    return '–'.join(f'{_no_negative_zero(100 * v):.1f}' for v in value)
  if isinstance(value, float) and math.isinf(value):
    return '∞' if value > 0 else '−∞'
  if key == 'p_vs_none':
    return f'{value:.2g}'
  value = _no_negative_zero(value + 0.0)
  if key == 'epoch':
    return f'{value:g}'
  return f'{value:.2f}' if key != 'knn_dist_eval' or abs(value) < 1e4 else f'{value:.3g}'


FID_HEADERS = {
    'inception_ppa_inputs': 'FID ↑ (PPA inputs)',
    'inception': 'FID ↑ (standard)',
    'evaluation_model': 'FID ↑ (eval. features)',
}


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
  """The rows as a markdown table; the FID header names the convention when all rows share one."""
  conventions = {r.get('fid_features') for r in rows}
  fid_header = FID_HEADERS.get(conventions.pop(), 'FID ↑') if len(conventions) == 1 else 'FID ↑'
  headers = [fid_header if key == 'fid' else header for key, header in columns]
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(columns)]
  for r in rows:
    lines.append('| ' + ' | '.join(_cell(k, r.get(k)) for k, _ in columns) + ' |')
  return '\n'.join(lines)


def _columns(study, columns=COLUMNS, num_classes: int = 0):
  """The table's columns: an Attack column after Defense when the study runs more than one attack; no
  top-5 column for 5 classes or fewer (it is 100% by construction)."""
  if 0 < num_classes <= 5:
    columns = tuple(c for c in columns if c[0] != 'attack_acc_top5')
  if len(study.attacks) < 2:
    return columns
  return columns[:2] + (('attack', 'Attack'),) + columns[2:]


def write_table(workdir: str, rows: list[dict], config: ml_collections.ConfigDict):
  fid = '; '.join(FID_CONVENTIONS.get(f, f) for f in sorted({r.get('fid_features', '') for r in rows}))
  note = (
      f'Accuracies in %. Epoch: of the attacked checkpoint ({config.study.checkpoint}), whose test accuracy is '
      "Acc. AttAcc: the evaluation model's accuracy on the final images (unfilt.: on every optimised image, "
      'before final selection). KNN distances: squared L2 to the nearest private training image of the class. '
      f'FID and PRDC (k = 3, per class, averaged) on {fid}. Δ = AttAcc@1 drop / Acc drop against No defense; '
      f'"{NO_ACCURACY_COST}" where the defense does not lower Acc (Δ is undefined there: a ratio to no cost). '
      "95% CI: Wilson interval of AttAcc@1 over the row's images (one training seed; the interval does not "
      'cover seed-to-seed variation). p vs none: two-sided Fisher exact test of AttAcc@1 against the No '
      "defense row (the two rows' images taken as independent samples). "
      'False pos.: share of the final images the target accepts (confidence > 0.5) that the evaluation '
      'model rejects.'
  )
  num_classes = config.classifier.model.num_classes
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(
        f'{markdown_table(rows, _columns(config.study, num_classes=num_classes))}\n\n'
        f'{markdown_table(rows, _columns(config.study, PRDC_COLUMNS))}\n\n{note}\n'
    )
  keys = (
      [k for k, _ in _columns(config.study) if k != 'attack_acc_top1_ci']
      + ['attack_acc_top1_ci_low', 'attack_acc_top1_ci_high']
      + [k for k, _ in PRDC_COLUMNS if k.startswith('prdc_')]
      + ['step', 'fid_features']
  )
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(keys)
    for r in rows:
      writer.writerow([r.get(k, '') for k in keys])
  reporting.write_json(os.path.join(workdir, 'results.json'), {'rows': rows, 'study': reporting.config_json(config)})


def write_figures(workdir: str, rows: list[dict], config: ml_collections.ConfigDict):
  figures = os.path.join(workdir, 'figures')
  os.makedirs(figures, exist_ok=True)
  for arch in config.study.architectures:
    for attack in config.study.attacks:
      norms = {
          defenses.DEFENSES[d].label: gradient_flow.stage_gradient_norms(os.path.join(workdir, arch, d, attack))
          for d in config.study.defenses
      }
      name = f'gradient_flow_{arch}.png' if len(config.study.attacks) == 1 else f'gradient_flow_{arch}_{attack}.png'
      gradient_flow.plot_gradient_flow(os.path.join(figures, name), arch, norms)
  groups = [
      ' '.join([r['architecture'], r['defense']] + ([r['attack']] if len(config.study.attacks) > 1 else []))
      for r in rows
  ]
  plots.grouped_bars(
      os.path.join(figures, 'false_positives.png'),
      groups,
      {
          'target accepts': [r['target_accepts'] for r in rows],
          'evaluation model rejects (of those)': [r['false_positive_rate'] for r in rows],
      },
      'False positives: accepted by the target, rejected by the evaluation model',
      'share of images',
  )
  plots.grouped_bars(
      os.path.join(figures, 'accuracy_vs_attack.png'),
      groups,
      {'Acc': [r['acc'] for r in rows], 'AttAcc@1': [r['attack_acc_top1'] for r in rows]},
      'Natural accuracy and attack accuracy per defense',
      'accuracy',
  )
  path = os.path.join(figures, 'repvgg_equivalence.png')
  if config.analysis.repvgg and not os.path.exists(path):
    results = repvgg_equivalence.repvgg_equivalence(
        config.analysis.repvgg, width=config.analysis.repvgg_width, image_size=config.classifier.data.image_size
    )
    reporting.write_json(os.path.join(figures, 'repvgg_equivalence.json'), results)
    repvgg_equivalence.plot_repvgg_equivalence(path, results)


run = reproduce  # the `reproduce` job (mi_jax/jobs.py)
