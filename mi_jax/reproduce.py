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

Beyond the main matrix (`study.defenses`), `study.sweeps` adds the paper's ablations as more cells:
'stage_removal' (each stage's skips removed alone), 'ssf_k' (SSF's k on the last stage) and
'tts_switch' (TTS's switch epoch M), each plotted against its swept value. `study.seeds` trains every
cell with several seeds; the table then gives means with 95% intervals across seeds, and each
defense's paired test against No defense pairs its attacked classes seed by seed.
`study.checkpoint='matched'` attacks, per cell, the checkpoint whose test accuracy is closest to
`study.match_accuracy` (the paper's comparisons at matched natural accuracy).

Work whose outputs exist is skipped (a finished train job's results.json, an attack's
attack.json, an evaluation.json), and each job resumes from its own checkpoints, so a
killed study continues where it stopped when the same command is run again.
"""

import csv
import dataclasses
import json
import math
import os
import re
import time

from absl import logging
import ml_collections
import numpy as np

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
    ('acc_ci', 'Acc 95% CI'),
    ('attack_acc_top1', 'AttAcc@1 ↓'),
    ('attack_acc_top1_ci', 'AttAcc@1 95% CI'),
    ('attack_acc_top5', 'AttAcc@5 ↓'),
    ('attack_acc_unfiltered_top1', 'AttAcc@1 unfilt. ↓'),
    ('knn_dist_eval', 'KNN eval ↑'),
    ('knn_dist_facenet', 'KNN FaceNet ↑'),
    ('fid', 'FID ↑'),
    ('delta', 'Δ ↑'),
    ('p_vs_none', 'p vs none'),
    ('false_positive_rate', 'False pos.'),
    ('images', 'Images'),
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
    try:
      defenses.defense_spec(defense)
    except ValueError as e:
      check(False, 'study.defenses', tuple(study.defenses), str(e))
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
  check(
      study.checkpoint in CHECKPOINT_CHOICES,
      'study.checkpoint',
      study.checkpoint,
      f'expected one of {CHECKPOINT_CHOICES}',
  )
  check(
      study.checkpoint != 'matched' or 0.0 < study.match_accuracy <= 1.0,
      'study.match_accuracy',
      study.match_accuracy,
      "study.checkpoint='matched' attacks the checkpoint whose test accuracy is closest to this: expected (0, 1]",
  )
  for sweep in study.sweeps:
    check(sweep in SWEEPS, 'study.sweeps', tuple(study.sweeps), f'{sweep!r}: expected sweeps of {sorted(SWEEPS)}')
  check(all(0.0 <= k <= 1.0 for k in study.sweep_ssf_k), 'study.sweep_ssf_k', study.sweep_ssf_k, 'expected k in [0, 1]')
  check(
      all(0.0 < m < 1.0 for m in study.sweep_tts_stage1_fractions),
      'study.sweep_tts_stage1_fractions',
      study.sweep_tts_stage1_fractions,
      'expected shares of the epochs in (0, 1) trained with every skip before the switch',
  )
  check(
      len(set(seeds_of(config))) == len(seeds_of(config)), 'study.seeds', tuple(study.seeds), 'expected distinct seeds'
  )
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
    for cell in study_cells(config, arch):
      jobs.validate_config(row_config(config, arch, cell))
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
  task_count = len(study_tasks(config, ''))
  try:
    selected_tasks(study.tasks, task_count, {})
  except ValueError as e:
    if 'SLURM_ARRAY_TASK_ID' not in str(e):  # the array's variables exist only in its tasks
      config_checks.check_field(False, 'study.tasks', study.tasks, str(e))


CHECKPOINT_CHOICES = ('best', 'latest', 'matched')
# study.sweeps: name -> what its x axis is.
SWEEPS = {
    'stage_removal': 'stage whose skips are removed (all others kept)',
    'ssf_k': "SSF's k on the last stage's skips",
    'tts_switch': "TTS's switch epoch M (epochs with every skip before the transplant)",
}
MATCHED_KEEP = 1_000_000  # study.checkpoint='matched' keeps every evaluated checkpoint to choose from


@dataclasses.dataclass(frozen=True)
class Cell:
  """One target of the study for an architecture: a defense of the main matrix or a point of a sweep."""

  key: str  # its directory under <workdir>/<arch>/ and its rows' key
  defense: str  # the mi_jax.defenses entry it is trained with
  label: str  # its name in the table
  sweep: str = ''  # '' (the main matrix) or the SWEEPS entry it belongs to
  value: float = math.nan  # the swept value: a stage number, SSF's k or TTS's M in epochs
  skip: tuple = ()  # config.model.skip instead of the defense's (stage-wise removal)
  ssf_k: float | None = None  # SSF's k instead of the paper's
  tts_stage1_fraction: float | None = None  # TTS's share of epochs before the switch instead of the study's


def study_cells(config: ml_collections.ConfigDict, arch: str) -> list[Cell]:
  """The main matrix's defenses, then the points of every sweep of `config.study.sweeps`, for `arch`."""
  study = config.study
  cells = [Cell(d, d, defenses.defense_spec(d).label) for d in study.defenses]
  stages = models.num_skip_stages(arch)
  for sweep in study.sweeps:
    if sweep == 'stage_removal':  # the stages that have skips to remove
      model = ml_collections.ConfigDict({**config.classifier.model.to_dict(), 'name': arch})
      for s in (i + 1 for i, has in enumerate(models.residual_stages(model)) if has):
        skip = tuple(0.0 if i == s else 1.0 for i in range(1, stages + 1))
        cells.append(Cell(f'remove_stage{s}', 'none', f'Stage {s} removed', sweep, float(s), skip=skip))
    elif sweep == 'ssf_k':
      for k in study.sweep_ssf_k:
        cells.append(Cell(f'ssf_k{k:g}', 'ssf', f'SSF k={k:g}', sweep, float(k), ssf_k=float(k)))
    elif sweep == 'tts_switch':  # distinct switch epochs M (short demo schedules round several shares alike)
      switch_epochs = {}
      for m in study.sweep_tts_stage1_fractions:
        switch_epochs.setdefault(defenses.tts_stage1_epochs(m, config.classifier.train.epochs), m)
      for epochs, m in switch_epochs.items():
        cells.append(Cell(f'tts_m{epochs}', 'tts', f'TTS M={epochs}', sweep, float(epochs), tts_stage1_fraction=m))
  return cells


def seeds_of(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The training seeds of every cell: study.seeds, or config.seed alone."""
  return tuple(config.study.seeds) or (config.seed,)


def row_config(
    config: ml_collections.ConfigDict, arch: str, cell: 'Cell | str', seed: int | None = None
) -> ml_collections.ConfigDict:
  """The train config of one cell (a Cell, or a defense's name): the study's classifier settings for `arch`
  (its row of study.per_architecture), with the cell's defense applied, trained with `seed`."""
  if isinstance(cell, str):
    cell = Cell(cell, cell, defenses.defense_spec(cell).label)
  row = ml_collections.ConfigDict(config.classifier.to_dict())
  row.seed, row.num_devices, row.matmul_precision = config.seed, config.num_devices, config.matmul_precision
  if seed is not None:
    row.seed = seed
  row.model.name = arch
  row.model.skip = (1.0,) * models.num_skip_stages(arch)
  recipe = config.study.per_architecture[arch]
  row.train.batch_size = recipe.batch_size
  row.model.init_file = '' if config.study.from_scratch else recipe.init_file
  if config.study.checkpoint == 'matched':
    row.train.keep_checkpoints = MATCHED_KEEP
  fraction = config.study.tts_stage1_fraction if cell.tts_stage1_fraction is None else cell.tts_stage1_fraction
  row = defenses.defend(row, cell.defense, k=cell.ssf_k, tts_stage1_fraction=fraction)
  if cell.skip:
    defenses.set_skip(row, cell.skip)
  return row


def matched_step(train_dir: str, accuracy: float) -> int:
  """The kept checkpoint of the run in `train_dir` whose test accuracy is closest to `accuracy` (the
  earliest of ties), from its metrics.csv."""
  kept = {int(name) for name in os.listdir(os.path.join(train_dir, 'checkpoints')) if name.isdigit()}
  with open(os.path.join(train_dir, 'metrics.csv')) as f:
    evaluated = [(int(r['step']), float(r['test_accuracy'])) for r in csv.DictReader(f) if r.get('test_accuracy')]
  candidates = [(abs(acc - accuracy), step) for step, acc in evaluated if step in kept]
  if not candidates:
    raise ValueError(f'{train_dir}: no kept checkpoint has a test accuracy in metrics.csv')
  return min(candidates)[1]


def evaluation_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  row = ml_collections.ConfigDict(config.evaluation_model.to_dict())
  row.data = ml_collections.ConfigDict(config.classifier.data.to_dict())
  row.data.image_size = config.evaluation_model.data.image_size
  row.data.name = config.study.evaluation_data or row.data.name
  row.num_devices, row.matmul_precision = config.num_devices, config.matmul_precision
  if config.study.evaluation_model == 'import':
    trainer.as_imported(row)
  elif config.study.from_scratch:
    row.model.init_file = ''
  return row


def attack_config(
    config: ml_collections.ConfigDict,
    attack: str,
    target_workdir: str,
    generator_dir: str = '',
    checkpoint: str = '',
) -> ml_collections.ConfigDict:
  """The job config of `attack` on the target trained in `target_workdir`, at the study's checkpoint or at
  `checkpoint` (a matched step), with the generator in `generator_dir` when the study trained one for it."""
  row = ml_collections.ConfigDict(config.attacks[attack].to_dict())
  if 'generator_job' in row:
    del row['generator_job']
  row.seed, row.num_devices, row.matmul_precision = config.seed, config.num_devices, config.matmul_precision
  row.target.workdir = target_workdir
  row.target.checkpoint = checkpoint or _study_checkpoint(config.study)
  if generator_dir:
    row.generator.dir = generator_dir
  return row


def _study_checkpoint(study) -> str:
  """The checkpoint a job config names for study.checkpoint: the same, or 'best' for 'matched' (a target's
  stand-in until its matched step is known; the evaluation model's choice)."""
  return 'best' if study.checkpoint == 'matched' else study.checkpoint


def generator_config(
    config: ml_collections.ConfigDict, attack: str, target_workdir: str, checkpoint: str = ''
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
  row.gan.target.checkpoint = checkpoint or _study_checkpoint(config.study)
  return row


GENERATOR_EXPORT = 'gan'  # where the gan64 and plgmi_gan jobs leave their GAN directory in their workdir


def _target_dir(train_dir: str, defense: str) -> str:
  return os.path.join(train_dir, 'stage2') if defenses.defense_spec(defense).two_stage else train_dir


def _load(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


@dataclasses.dataclass(frozen=True)
class Task:
  """The work of one cell directory, a unit of the fan-out: train its target, then each attack and its
  evaluation. Cells that share the directory (identical training configs) are done by its first cell's task."""

  arch: str
  cell: Cell
  seed: int
  directory: str


def study_tasks(config: ml_collections.ConfigDict, workdir: str) -> list[Task]:
  """The study's tasks in matrix order (architecture, cell, seed): one per distinct cell directory."""
  tasks = {}
  for (arch, key, seed), directory in cell_directories(config, workdir).items():
    cell = next(c for c in study_cells(config, arch) if c.key == key)
    tasks.setdefault(directory, Task(arch, cell, seed, directory))
  return list(tasks.values())


TASK_CHOICES = "'all', 'evaluation', 'gather', 'list', 'slurm', an index i or a slice i:j of the tasks"


def selected_tasks(tasks: str, count: int, environ) -> range:
  """The task indices study.tasks names: an index 'i', a slice 'i:j', or 'slurm' (SLURM array task i of n
  runs tasks i, i+n, i+2n, ...: an array of any size covers the study). Raises ValueError naming the problem."""
  if tasks == 'all':
    return range(count)
  if tasks in ('evaluation', 'gather', 'list'):
    return range(0)
  if tasks == 'slurm':
    if 'SLURM_ARRAY_TASK_ID' not in environ:
      raise ValueError(
          "study.tasks='slurm' reads SLURM_ARRAY_TASK_ID, which is not set: run it in an sbatch --array job"
      )
    index = int(environ['SLURM_ARRAY_TASK_ID']) - int(environ.get('SLURM_ARRAY_TASK_MIN', 0))
    return range(index, count, int(environ.get('SLURM_ARRAY_TASK_COUNT', count)))
  if not re.fullmatch(r'\d+(:\d+)?', tasks):
    raise ValueError(f'expected {TASK_CHOICES}')
  start, _, stop = tasks.partition(':')
  chosen = range(int(start), int(stop) if stop else int(start) + 1)
  if not chosen or chosen.stop > count:
    raise ValueError(f'the study has {count} tasks (0 to {count - 1}): {tasks!r} is not among them')
  return chosen


def reproduce(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs (or finishes) the part of the study that study.tasks names in `workdir`; launch.py has validated
  `config` (validate_config).

  'all' (the default) trains the evaluation model, runs every task and writes the table. Fanned out
  (scripts/slurm/): 'evaluation' trains the evaluation model, which every task's evaluation needs, an index,
  slice or 'slurm' runs those tasks, and 'gather' builds the table and figures from the finished tasks and
  lists the missing ones. 'list' logs the tasks. Returns the table's rows (one per architecture, cell and
  attack, over the seeds; none for a task run); results.json also keeps every seed's row (`runs`)."""
  study = config.study
  tasks = study_tasks(config, workdir)
  eval_dir = os.path.join(workdir, 'evaluation_model')
  if study.tasks == 'list':
    logging.info('The study has %d tasks:\n%s', len(tasks), '\n'.join(_task_lines(tasks, workdir)))
    return []
  chosen = [tasks[i] for i in selected_tasks(study.tasks, len(tasks), os.environ)]
  per_target_generators = sum('generator_job' in config.attacks[a] for a in study.attacks)
  trains_evaluation = study.tasks in ('all', 'evaluation')
  total_jobs = trains_evaluation + len(chosen) * (1 + (2 + per_target_generators) * len(study.attacks))
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

  if trains_evaluation:
    step(
        f'evaluation model ({study.evaluation_model})',
        os.path.join(eval_dir, 'results.json'),
        lambda: jobs.run(evaluation_config(config), eval_dir),
    )
  elif chosen and not os.path.exists(os.path.join(eval_dir, 'results.json')):
    raise FileNotFoundError(
        f'{eval_dir} holds no trained evaluation model, which every task evaluates its attacks with: run '
        "study.tasks='evaluation' first (scripts/slurm/study.sh makes the task array wait for it)"
    )
  for task in chosen:
    logging.info('Task %d of %d: %s', tasks.index(task), len(tasks), _task_name(task, config))
    run_task(config, task, eval_dir, step)
  if study.tasks not in ('all', 'gather'):
    logging.info('Done in %s: %d task(s).', reporting.format_duration(time.time() - started), len(chosen))
    return []

  runs, missing = gather(config, workdir)
  if missing:
    logging.warning(
        'The table leaves out %d unfinished task(s) (run them, then gather again):\n%s',
        len(missing),
        '\n'.join(_task_lines(missing, workdir, tasks)),
    )
  rows = summarise(runs)
  write_table(workdir, rows, config, runs, missing=[_task_name(t, config) for t in missing])
  write_figures(workdir, rows, config)
  logging.info(
      'Study done in %s:\n%s',
      reporting.format_duration(time.time() - started),
      markdown_table(rows, _columns(study, num_classes=config.classifier.model.num_classes)),
  )
  return rows


def _task_name(task: Task, config: ml_collections.ConfigDict) -> str:
  return f'{task.arch} / {task.cell.label}' + (f' / seed {task.seed}' if len(seeds_of(config)) > 1 else '')


def _task_lines(listed: list[Task], workdir: str, tasks: list[Task] | None = None) -> list[str]:
  tasks = tasks or listed
  return [f'  {tasks.index(t):>3}  {os.path.relpath(t.directory, workdir)}' for t in listed]


def run_task(config: ml_collections.ConfigDict, task: Task, eval_dir: str, step):
  """Trains the task's target, then for each attack its generator (when trained per target), the attack and its
  evaluation; each step is skipped when its output exists (`step(what, output path, run)`)."""
  study, cell, seed = config.study, task.cell, task.seed
  what = _task_name(task, config)
  train_dir = os.path.join(task.directory, 'train')
  target_dir = _target_dir(train_dir, cell.defense)
  train_config = row_config(config, task.arch, cell, seed)
  step(f'{what}: train', os.path.join(train_dir, 'results.json'), lambda: jobs.run(train_config, train_dir))
  checkpoint = study.checkpoint
  if checkpoint == 'matched':
    checkpoint = str(matched_step(target_dir, study.match_accuracy))
  metrics = ml_collections.ConfigDict(config.metrics.to_dict())
  metrics.cache_dir = metrics.cache_dir or os.path.join(os.path.dirname(eval_dir), 'cache')
  for attack in study.attacks:
    attack_dir = os.path.join(task.directory, attack)
    generator_dir = ''
    generator_job = generator_config(config, attack, target_dir, checkpoint)
    if generator_job is not None:
      generator_job.seed = seed
      gan_workdir = os.path.join(task.directory, f'{attack}_generator')
      step(
          f'{what} / {attack}: generator',
          os.path.join(gan_workdir, 'results.json'),
          lambda: jobs.run(generator_job, gan_workdir),
      )
      generator_dir = os.path.join(gan_workdir, GENERATOR_EXPORT)
    attack_job = attack_config(config, attack, target_dir, generator_dir, checkpoint)
    attack_job.seed = seed
    step(
        f'{what} / {attack}: attack', os.path.join(attack_dir, 'attack.json'), lambda: jobs.run(attack_job, attack_dir)
    )
    step(
        f'{what} / {attack}: evaluate',
        os.path.join(attack_dir, 'evaluation.json'),
        lambda: evaluate.evaluate_attack(attack_dir, eval_dir, metrics, _study_checkpoint(study)),
    )


def gather(config: ml_collections.ConfigDict, workdir: str) -> tuple[list[dict], list[Task]]:
  """Every seed's row of the finished tasks (matrix order; a shared directory's rows under each of its cells)
  and the tasks not finished (some attack not evaluated yet)."""
  cell_dirs, runs, missing = cell_directories(config, workdir), [], []
  owners = {t.directory: t for t in study_tasks(config, workdir)}
  for (arch, key, seed), directory in cell_dirs.items():
    cell = next(c for c in study_cells(config, arch) if c.key == key)
    attack_dirs = {a: os.path.join(directory, a) for a in config.study.attacks}
    if not all(os.path.exists(os.path.join(d, 'evaluation.json')) for d in attack_dirs.values()):
      if owners[directory] not in missing:
        missing.append(owners[directory])
      continue
    target_dir = _target_dir(os.path.join(directory, 'train'), cell.defense)
    runs.extend(_run_row(arch, cell, a, seed, target_dir, d) for a, d in attack_dirs.items())
  return runs, missing


def cell_directories(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """{(arch, cell key, seed): the cell's directory}: <arch>/<key>[/seed<S> with several seeds]. A cell whose
  training config equals an earlier one's (SSF k=1 is No defense, k=0 RoLSS) shares that one's directory."""
  owners, directories, seeds = {}, {}, seeds_of(config)
  for arch in config.study.architectures:
    for cell in study_cells(config, arch):
      for seed in seeds:
        identity = json.dumps(row_config(config, arch, cell, seed).to_dict(), sort_keys=True, default=str)
        own = (
            os.path.join(workdir, arch, cell.key, f'seed{seed}')
            if len(seeds) > 1
            else os.path.join(workdir, arch, cell.key)
        )
        directories[arch, cell.key, seed] = owners.setdefault(identity, own)
  return directories


def _run_row(arch: str, cell: Cell, attack: str, seed: int, target_dir: str, attack_dir: str) -> dict:
  """One seed's row: the attacked checkpoint's accuracy, the evaluation, and the hits of each attacked class."""
  attacked = _load(os.path.join(attack_dir, 'attack.json'))
  trained = _load(os.path.join(target_dir, 'results.json'))
  evaluated = np.load(os.path.join(attack_dir, 'evaluation.npz'))
  hits = np.argmax(evaluated['eval_logits'], axis=1) == evaluated['targets']
  class_hits = [
      [int(c), int(hits[evaluated['targets'] == c].sum()), int((evaluated['targets'] == c).sum())]
      for c in np.unique(evaluated['targets'])
  ]
  return {
      'architecture': arch,
      'defense': cell.label,
      'key': cell.key,
      'sweep': cell.sweep,
      'value': cell.value,
      'attack': attack,
      'seed': seed,
      'acc': attacked['target_metrics']['test_accuracy'],
      'test_examples': trained['test_examples'],
      'step': attacked['target_step'],
      'epoch': attacked['target_step'] / trained['steps_per_epoch'],
      'class_hits': class_hits,
      **_load(os.path.join(attack_dir, 'evaluation.json')),
  }


NO_ACCURACY_COST = 'no acc. cost'  # Δ's cell where a defense does not lower the test accuracy


# Row fields averaged over seeds (the others are the cell's, or recomputed from the pooled images).
_AVERAGED = (
    'acc',
    'attack_acc_top1',
    'attack_acc_top5',
    'attack_acc_unfiltered_top1',
    'attack_acc_unfiltered_top5',
    'knn_dist_eval',
    'knn_dist_facenet',
    'knn_dist_inception',
    'fid',
    'prdc_precision',
    'prdc_recall',
    'prdc_density',
    'prdc_coverage',
    'target_accepts',
    'false_positive_rate',
    'epoch',
    'step',
)


def summarise(runs: list[dict]) -> list[dict]:
  """The table's rows from every seed's row: one per architecture, cell and attack, in the runs' order.

  Means over seeds; 95% intervals of Acc and AttAcc@1 over the test images and the final images (Wilson)
  with one seed, across seeds (Student t) with several; Δ of the means (NO_ACCURACY_COST without an
  accuracy drop); and `p_vs_none`, the paired sign-flip permutation test of the per-class attack accuracy
  against the No-defense row, the pairs being the same class attacked with the same seed.
  """
  groups = {}
  for r in runs:
    groups.setdefault((r['architecture'], r['key'], r.get('attack')), []).append(r)
  rows = []
  for group in groups.values():
    row = {k: v for k, v in group[0].items() if k not in ('seed', 'class_hits')}
    for key in _AVERAGED:
      values = [r[key] for r in group if isinstance(r.get(key), (int, float))]
      if len(values) == len(group):
        row[key] = float(np.mean(values))
    row['seeds'] = [r['seed'] for r in group if 'seed' in r]
    row['images'] = sum(r['images'] for r in group)
    row['per_seed'] = {key: [r[key] for r in group] for key in ('acc', 'attack_acc_top1')}
    if len(group) > 1:
      row['acc_ci'] = _unit_interval(scores.t_interval(row['per_seed']['acc']))
      row['attack_acc_top1_ci'] = _unit_interval(scores.t_interval(row['per_seed']['attack_acc_top1']))
    else:
      row['acc_ci'] = list(scores.wilson_interval(round(row['acc'] * row['test_examples']), row['test_examples']))
      row['attack_acc_top1_ci'] = list(scores.wilson_interval(_hits(row), row['images']))
    row['_runs'] = group
    rows.append(row)
  add_deltas(rows)
  for row in rows:
    del row['_runs']
  return rows


def _unit_interval(interval) -> list[float]:
  return [max(0.0, interval[0]), min(1.0, interval[1])]


def add_deltas(rows: list[dict]):
  """Δ of each row against the No-defense row of its architecture and attack, and the paired test.

  Δ: the top-1 attack-accuracy drop over the accuracy drop; NO_ACCURACY_COST where the defense does not
  lower the accuracy (Δ is undefined there). p_vs_none: over the (seed, class) pairs both rows attacked.
  """
  baseline = {(r['architecture'], r.get('attack')): r for r in rows if r['key'] == 'none'}
  for r in rows:
    base = baseline.get((r['architecture'], r.get('attack')))
    if base is None or r is base:
      r['delta'] = float('nan')
      continue
    if not scores.accuracy_cost(base['acc'], r['acc']):
      r['delta'] = NO_ACCURACY_COST
    else:
      r['delta'] = scores.delta_ratio(base['acc'], base['attack_acc_top1'], r['acc'], r['attack_acc_top1'])
    ours, theirs = _class_accuracies(r), _class_accuracies(base)
    pairs = sorted(set(ours) & set(theirs))
    if pairs:
      r['p_vs_none'] = scores.paired_permutation_p([ours[p] - theirs[p] for p in pairs])
      r['pairs'] = len(pairs)


def _class_accuracies(row: dict) -> dict:
  """{(seed, class): the share of the class's final images the evaluation model labels as the class}."""
  return {
      (run.get('seed'), c): hits / images
      for run in row.get('_runs', ())
      for c, hits, images in run.get('class_hits', ())
      if images
  }


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
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  if key.endswith('_ci'):  # a (low, high) interval of a percentage
    return '–'.join(f'{_no_negative_zero(100 * v):.1f}' for v in value)
  if isinstance(value, float) and math.isinf(value):
    return '∞' if value > 0 else '−∞'
  if key == 'p_vs_none':
    return f'{value:.2g}'
  value = _no_negative_zero(value + 0.0)
  if key == 'epoch':
    return f'{value:.3g}'  # a mean over seeds: 4.33
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


def write_table(
    workdir: str, rows: list[dict], config: ml_collections.ConfigDict, runs: list[dict] = (), missing: list[str] = ()
):
  fid = '; '.join(FID_CONVENTIONS.get(f, f) for f in sorted({r.get('fid_features', '') for r in rows}))
  seeds = seeds_of(config)
  if len(seeds) > 1:
    spread = (
        f'Each row is the mean of {len(seeds)} training seeds ({", ".join(map(str, seeds))}; the attack uses the '
        "same seed); its 95% CIs are Student-t intervals across the seeds. Images: the row's final images over "
        'all seeds.'
    )
  else:
    spread = (
        "One training seed: the 95% CIs are Wilson intervals over the test images (Acc) and the row's final "
        'images (AttAcc@1); they do not cover seed-to-seed variation.'
    )
  note = (
      f'Accuracies in %. Epoch: of the attacked checkpoint ({config.study.checkpoint}'
      + (
          f', test accuracy closest to {100 * config.study.match_accuracy:g}%'
          if config.study.checkpoint == 'matched'
          else ''
      )
      + "), whose test accuracy is Acc. AttAcc: the evaluation model's accuracy on the final images (unfilt.: on "
      'every optimised image, before final selection). KNN distances: squared L2 to the nearest private training '
      f'image of the class. FID and PRDC (k = 3, per class, averaged) on {fid}. Δ = AttAcc@1 drop / Acc drop '
      f'against No defense; "{NO_ACCURACY_COST}" where the defense does not lower Acc (Δ is undefined there: a '
      f'ratio to no cost). {spread} p vs none: two-sided paired sign-flip permutation test of the per-class '
      'AttAcc@1 against the No defense row, each attacked class (and seed) a pair. False pos.: share of the final '
      'images the target accepts (confidence > 0.5) that the evaluation model rejects.'
  )
  num_classes = config.classifier.model.num_classes
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(
        f'{markdown_table(rows, _columns(config.study, num_classes=num_classes))}\n\n'
        f'{markdown_table(rows, _columns(config.study, PRDC_COLUMNS))}\n\n{note}\n'
        + (f'\n**Not finished, left out of the table:** {"; ".join(missing)}.\n' if missing else '')
    )
  intervals = [k for k, _ in _columns(config.study) if k.endswith('_ci')]
  keys = (
      [k for k, _ in _columns(config.study) if k not in intervals]
      + [f'{k}_{end}' for k in intervals for end in ('low', 'high')]
      + [k for k, _ in PRDC_COLUMNS if k.startswith('prdc_')]
      + ['step', 'fid_features', 'sweep', 'value', 'seeds']
  )
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(keys)
    for r in rows:
      flat = dict(r, **{f'{k}_{end}': v for k in intervals if r.get(k) for end, v in zip(('low', 'high'), r[k])})
      flat['seeds'] = ' '.join(map(str, r.get('seeds', ())))
      writer.writerow([flat.get(k, '') for k in keys])
  reporting.write_json(
      os.path.join(workdir, 'results.json'),
      {'rows': rows, 'runs': list(runs), 'missing': list(missing), 'study': reporting.config_json(config)},
  )


def write_figures(workdir: str, rows: list[dict], config: ml_collections.ConfigDict):
  """Gradient flow per architecture (the main matrix, first seed), false positives, Acc and AttAcc@1 per row
  with their 95% intervals, and one figure per sweep and architecture against the swept value."""
  figures = os.path.join(workdir, 'figures')
  os.makedirs(figures, exist_ok=True)
  directories, first_seed = cell_directories(config, workdir), seeds_of(config)[0]
  several_attacks = len(config.study.attacks) > 1
  for arch in config.study.architectures:
    for attack in config.study.attacks:
      attack_dirs = {
          defenses.defense_spec(d).label: os.path.join(directories[arch, d, first_seed], attack)
          for d in config.study.defenses
      }
      attack_dirs = {  # a gather before every task finished plots the finished ones
          label: path for label, path in attack_dirs.items() if os.path.exists(os.path.join(path, 'attack.json'))
      }
      if not attack_dirs:
        continue
      name = f'gradient_flow_{arch}_{attack}.png' if several_attacks else f'gradient_flow_{arch}.png'
      gradient_flow.plot_gradient_flow(
          os.path.join(figures, name),
          arch,
          {label: gradient_flow.stage_gradient_norms(path) for label, path in attack_dirs.items()},
          {label: gradient_flow.stage_gradient_intervals(path) for label, path in attack_dirs.items()},
      )
  main = [r for r in rows if not r.get('sweep')]
  groups = [' '.join([r['architecture'], r['defense']] + ([r['attack']] if several_attacks else [])) for r in main]
  plots.grouped_bars(
      os.path.join(figures, 'false_positives.png'),
      groups,
      {
          'target accepts': [r['target_accepts'] for r in main],
          'evaluation model rejects (of those)': [r['false_positive_rate'] for r in main],
      },
      'False positives: accepted by the target, rejected by the evaluation model',
      'share of images',
  )
  plots.grouped_bars(
      os.path.join(figures, 'accuracy_vs_attack.png'),
      groups,
      {'Acc': [r['acc'] for r in main], 'AttAcc@1': [r['attack_acc_top1'] for r in main]},
      'Natural accuracy and attack accuracy per defense',
      'accuracy',
      intervals={'Acc': [r['acc_ci'] for r in main], 'AttAcc@1': [r['attack_acc_top1_ci'] for r in main]},
      note=_interval_note(config),
  )
  for sweep in config.study.sweeps:
    for arch in config.study.architectures:
      for attack in config.study.attacks:
        points = sorted(
            (r for r in rows if (r.get('sweep'), r['architecture'], r.get('attack')) == (sweep, arch, attack)),
            key=lambda r: r['value'],
        )
        name = f'sweep_{sweep}_{arch}' + (f'_{attack}' if several_attacks else '') + '.png'
        plots.sweep_lines(
            os.path.join(figures, name),
            [r['value'] for r in points],
            {
                'Acc': ([r['acc'] for r in points], [r['acc_ci'] for r in points]),
                'AttAcc@1': ([r['attack_acc_top1'] for r in points], [r['attack_acc_top1_ci'] for r in points]),
            },
            f'{arch}: {sweep.replace("_", " ")}' + (f' ({attack})' if several_attacks else ''),
            SWEEPS[sweep],
            'accuracy',
            integer_x=sweep != 'ssf_k',
            note=_interval_note(config),
        )
  path = os.path.join(figures, 'repvgg_equivalence.png')
  if config.analysis.repvgg and not os.path.exists(path):
    results = repvgg_equivalence.repvgg_equivalence(
        config.analysis.repvgg, width=config.analysis.repvgg_width, image_size=config.classifier.data.image_size
    )
    reporting.write_json(os.path.join(figures, 'repvgg_equivalence.json'), results)
    repvgg_equivalence.plot_repvgg_equivalence(path, results)


def _interval_note(config) -> str:
  seeds = seeds_of(config)
  if len(seeds) > 1:
    return f'Error bars: 95% Student-t intervals across {len(seeds)} training seeds.'
  return 'Error bars: 95% Wilson intervals over the test images (Acc) and final images (AttAcc); one seed.'


run = reproduce  # the `reproduce` job (mi_jax/jobs.py)
