"""The `attack_ppa` job: Plug & Play Attack on a trained target with a StyleGAN2 prior, resumable.

PPA (Struppek et al., ICML 2022; Plug-and-Play-Attacks: attacks/initial_selection.py, optimize.py,
final_selection.py) in three stages, each resumable from its own outputs:
  1. candidates (`candidates.npz`): a seeded pool of z -> mapping (truncation psi, cutoff) -> score each
     image (clipped, framed for the target, averaged with its mirror) -> the top `num_candidates`
     distinct latents per class;
  2. optimisation (`optimized/batch_<i>.npz`, one per batch, written atomically): every (class,
     candidate) pair in batches of `batch_size` per device, sharded over all devices; one jitted scan of
     `steps` Adam steps per batch (optimize.py);
  3. final selection (`final/class_<c>.npz`, one per class): the `final_samples` images the target is
     most confident about under `final_iterations` random crops + flips, the same crops for every
     candidate of the class.
Then `attack.json` (settings, the attacked checkpoint, summary), `log.json` (per step and batch: loss,
per-stage gradient norms, mean and std of |dL/dw|), `grids/class_<c>.png` and `final_grid.png`. The
layout is the attack interface's (mi_jax/attack_outputs.py): evaluation renders the float images from
the latents; uint8 images exist only in the PNGs.
"""

import dataclasses
import functools
import json
import os
from typing import Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from mi_jax import attack_outputs, config_checks, errors, models
from mi_jax.attacks import optimize, selection
from mi_jax.data import transforms
from mi_jax.metrics import scores as scores_lib
from mi_jax.models import maxvit
from mi_jax.train import checkpoint, reporting, sharding
from mi_jax.stylegan import checkpoint as generator_io
from mi_jax.stylegan import networks

OVERVIEW_CLASSES, OVERVIEW_PER_CLASS = 16, 8  # final_grid.png


class AttackError(errors.MiJaxError, ValueError):
  """A target, generator or setting that the attack cannot use."""


# ---------------------------------------------------------------------------- inputs


def load_classifier(workdir: str, which: str, field: str):
  """checkpoint.load_classifier for the run config.<field>.workdir names, with errors naming the field."""
  try:
    return checkpoint.load_classifier(os.path.expanduser(workdir), which)
  except (FileNotFoundError, checkpoint.CheckpointError) as e:
    raise AttackError(
        f'config.{field}.workdir={workdir!r}, checkpoint {which!r}: {e} (for TTS name its stage2/ ' 'directory)'
    ) from None


def check_compatible(model, variables, saved: dict, gen_config: networks.GeneratorConfig, settings, classes):
  """Fails before any work if generator, target and settings do not fit together."""
  size, channels = saved['data']['image_size'], gen_config.img_channels
  if settings.center_crop > gen_config.img_resolution:
    raise AttackError(
        f"config.attack.center_crop={settings.center_crop} exceeds the generator's "
        f'{gen_config.img_resolution}px images (0 = no crop)'
    )
  try:
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, size, size, channels)), train=False), variables)
  except Exception as e:  # pylint: disable=broad-except
    raise AttackError(
        f'the target ({saved["model"]["name"]}, {size}px) does not take the generator\'s '
        f'{channels}-channel images: {str(e)[:300]}'
    ) from None
  num_classes = saved['model']['num_classes']
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad:
    raise AttackError(f"config.attack.classes has {bad}, outside the target's {num_classes} classes")


def check_target_workdir(config: ml_collections.ConfigDict):
  """config.target.workdir must be a train job's directory (every attack's first check)."""
  config_checks.check_field(
      bool(config.target.workdir) and os.path.isdir(os.path.expanduser(config.target.workdir)),
      'target.workdir',
      config.target.workdir,
      'not a directory (the workdir of a train job)',
      AttackError,
  )


def validate_config(config: ml_collections.ConfigDict):
  """Fails early, naming the field, before anything is loaded."""
  validate_common(config)
  config_checks.check_positive_ints(config, ['attack.steps'], error=AttackError)


def validate_common(config: ml_collections.ConfigDict):
  """The checks of every StyleGAN-prior attack (PPA, IF-GMI): target, generator, candidates, selection."""
  check = functools.partial(config_checks.check_field, error=AttackError)
  a = config.attack
  check_target_workdir(config)
  gen_dir = os.path.expanduser(config.generator.dir)
  check(
      bool(config.generator.dir) and os.path.isfile(os.path.join(gen_dir, generator_io.CONFIG_FILE)),
      'generator.dir',
      config.generator.dir,
      f'not a generator directory (no {generator_io.CONFIG_FILE})',
  )
  config_checks.check_positive_ints(
      config,
      [
          f'attack.{field}'
          for field in (
              'search_space_size',
              'num_candidates',
              'batch_size',
              'final_samples',
              'final_iterations',
          )
      ],
      error=AttackError,
  )
  for field in ('target.checkpoint', 'evaluation.checkpoint'):
    config_checks.check_checkpoint_choice(config, field, AttackError)
  check(
      a.num_candidates <= a.search_space_size,
      'attack.num_candidates',
      a.num_candidates,
      f'expected <= attack.search_space_size ({a.search_space_size})',
  )
  check(
      a.final_samples <= a.num_candidates,
      'attack.final_samples',
      a.final_samples,
      f'expected <= attack.num_candidates ({a.num_candidates})',
  )
  check(a.lr > 0, 'attack.lr', a.lr, 'expected > 0')
  for field in ('rrc_scale', 'final_rrc_scale'):
    config_checks.check_range(config, f'attack.{field}', error=AttackError)


def settings_from(config: ml_collections.ConfigDict, input_size: int, steps: int = 0) -> optimize.OptimizeSettings:
  """The optimisation settings of config.attack (`steps` > 0 overrides attack.steps: IF-GMI's stages)."""
  a = config.attack
  return optimize.OptimizeSettings(
      steps=steps or a.steps,
      lr=a.lr,
      betas=tuple(a.betas),
      lr_milestones=tuple(a.lr_milestones),
      lr_gamma=a.lr_gamma,
      poincare_xi=a.poincare_xi,
      center_crop=a.center_crop,
      input_size=input_size,
      rrc_scale=tuple(a.rrc_scale),
      rrc_ratio=tuple(a.rrc_ratio),
      antialias=a.antialias,
      clip=a.clip,
      remat=a.remat,
  )


# ---------------------------------------------------------------------------- the job


@dataclasses.dataclass
class _Attack:
  """What the three stages share: the config, the jitted pieces, the device layout."""

  config: ml_collections.ConfigDict
  workdir: str
  settings: optimize.OptimizeSettings
  gen_config: networks.GeneratorConfig
  G: networks.Generator
  gen_vars: dict
  model: object
  target_vars: dict
  classes: list
  mesh: object
  batch_size: int  # global: per-device batch x devices
  evaluation_logits: Callable | None  # generator images -> the evaluation model's logits

  @property
  def a(self):
    return self.config.attack

  def synthesize(self, w):  # [B, w_dim] -> [B, R, R, C], one w for every layer
    return self.G.apply(self.gen_vars, w[:, None], noise_mode='const', method=self.G.synthesize)

  def classify(self, x, perturbations=None):
    variables = self.target_vars if perturbations is None else {**self.target_vars, 'perturbations': perturbations}
    return self.model.apply(variables, x, train=False)

  def frame(self, images):  # generator images -> the target's input
    return transforms.generator_to_classifier(
        images, self.settings.center_crop, self.settings.input_size, self.settings.antialias
    )

  def put(self, array):  # a global batch, split over the devices
    return jax.device_put(array, sharding.data_sharded(self.mesh))


def setup(config: ml_collections.ConfigDict, workdir: str, first_stage_steps: int = 0):
  """Loads and checks target, generator and evaluation model, checks the run's identity, and returns
  (the attack's shared pieces, the target's saved config, its step, its metrics)."""
  a = config.attack
  model, target_vars, saved, target_step, target_metrics = load_classifier(
      config.target.workdir, config.target.checkpoint, 'target'
  )
  if config.target.get('official_rebuild', False) and models.family_of(saved['model']['name']).name == 'maxvit':
    model = models.build_model(ml_collections.ConfigDict(maxvit.as_official_attack_rebuilds(saved['model'])))
    logging.info('target.official_rebuild: attacking the MaxViT with every residual in place (the RoLSS code)')
  logging.info(
      'Attacking %s at step %d (%s checkpoint; test accuracy %s)',
      config.target.workdir,
      target_step,
      config.target.checkpoint,
      target_metrics.get('test_accuracy'),
  )
  gen_config, gen_vars, _ = generator_io.load_generator(config.generator.dir)
  settings = settings_from(config, saved['data']['image_size'], first_stage_steps)
  classes = [int(c) for c in a.classes] or list(range(saved['model']['num_classes']))
  check_compatible(model, target_vars, saved, gen_config, settings, classes)
  evaluation_logits = _make_evaluator(config, gen_config, settings, classes)  # validated before any work

  mesh = sharding.make_mesh(config.num_devices)
  batch_size = a.batch_size * mesh.devices.size
  _check_same_attack(workdir, config, batch_size, models.family_of(saved['model']['name']).name == 'maxvit')
  replicated = sharding.replicated(mesh)
  attack = _Attack(
      config,
      workdir,
      settings,
      gen_config,
      networks.Generator(gen_config),
      jax.device_put(gen_vars, replicated),
      model,
      jax.device_put(target_vars, replicated),
      classes,
      mesh,
      batch_size,
      evaluation_logits,
  )
  return attack, saved, target_step, target_metrics


def attack_ppa(config: ml_collections.ConfigDict, workdir: str) -> dict:
  a = config.attack
  attack, saved, target_step, target_metrics = setup(config, workdir)
  cand_w, cand_classes = select_candidates(attack)
  final_w, logs = optimize_candidates(attack, cand_w, cand_classes)
  summary, evaluated = select_final(attack, final_w, cand_classes)

  results = {
      'classes': len(attack.classes),
      'latents_optimized': int(len(cand_w)),
      'batches': len(logs),
      'final_per_class': int(a.final_samples),
      'target_step': int(target_step),
      'target_checkpoint': str(config.target.checkpoint),
      'target_metrics': {k: float(v) for k, v in target_metrics.items()},
      'mean_final_target_confidence': float(np.mean(list(summary.values()))),
      'final_loss_mean': float(np.mean([log['loss'][-1] for log in logs])),
  }
  if attack.evaluation_logits is not None:
    for name, prefix in (('filtered', 'eval'), ('unfiltered', 'eval_unfiltered')):
      accuracy = scores_lib.attack_accuracy(*map(np.concatenate, evaluated[name]))
      results[f'{prefix}_top1'], results[f'{prefix}_top5'] = accuracy['top1'], accuracy['top5']
  return write_outputs(config, workdir, saved, results, logs, summary)


def write_outputs(config, workdir: str, saved: dict, results: dict, logs: list, summary: dict) -> dict:
  """log.json (per batch and step) and attack.json (settings, the target's config, per-class final
  confidence `summary`, `results`) of a StyleGAN-prior attack; returns `results`."""
  reporting.write_json(os.path.join(workdir, 'log.json'), {'batches': logs}, indent=None)
  reporting.write_json(
      os.path.join(workdir, attack_outputs.ATTACK_FILE),
      {
          'settings': reporting.config_json(config),
          'target_config': saved,
          'per_class_confidence': {str(k): v for k, v in summary.items()},
          **results,
      },
  )
  logging.info('Attack done: %s', results)
  return results


def select_candidates(attack: _Attack):
  """Stage 1: (latents [N, w_dim], classes [N]), num_candidates per class; read back from candidates.npz."""
  a, path = attack.a, os.path.join(attack.workdir, 'candidates.npz')
  if os.path.exists(path):
    with np.load(path) as f:
      return f['w'], f['classes']
  G, gen_vars, batch_size = attack.G, attack.gen_vars, attack.batch_size
  z = selection.candidate_z(attack.config.seed, a.search_space_size, attack.gen_config.z_dim).astype(np.float32)

  @jax.jit
  def score(z):
    ws = G.apply(gen_vars, z, None, a.truncation_psi, a.truncation_cutoff, method=G.map)
    images = jnp.clip(G.apply(gen_vars, ws, noise_mode='const', method=G.synthesize), -1.0, 1.0)
    return ws[:, 0], selection.flip_averaged_confidence(attack.classify, attack.frame(images))

  firsts, confidences = [], []
  for start in range(0, len(z), batch_size):
    w0, conf = score(attack.put(_pad_to(z[start : start + batch_size], batch_size)))
    n = min(batch_size, len(z) - start)
    firsts.append(_fetch(w0)[:n])
    confidences.append(_fetch(conf)[:n])
  pool_w, confidences = np.concatenate(firsts), np.concatenate(confidences)
  chosen = selection.top_candidates(confidences, attack.classes, a.num_candidates)
  cand_classes = np.concatenate([np.full(a.num_candidates, c, np.int32) for c in attack.classes])
  cand_w = np.concatenate([pool_w[chosen[c]] for c in attack.classes])
  reporting.save_npz(path, w=cand_w, classes=cand_classes, pool_confidence=confidences)
  logging.info(
      'Initial selection: %d latents for %d classes from a pool of %d', len(cand_w), len(attack.classes), len(z)
  )
  return cand_w, cand_classes


def optimize_candidates(attack: _Attack, cand_w: np.ndarray, cand_classes: np.ndarray):
  """Stage 2: (optimised latents [N, w_dim], per-batch logs); finished batches are read back."""
  settings, batch_size = attack.settings, attack.batch_size
  batch_sharded, replicated = sharding.data_sharded(attack.mesh), sharding.replicated(attack.mesh)
  zeros_like_perturbations = perturbation_zeros(
      attack.model, attack.target_vars, settings.input_size, attack.gen_config.img_channels
  )
  run = jax.jit(
      optimize.make_optimize_fn(attack.synthesize, attack.classify, zeros_like_perturbations, settings),
      in_shardings=(batch_sharded, batch_sharded, batch_sharded, replicated),
      out_shardings=(batch_sharded, replicated),
  )
  num_batches = -(-len(cand_w) // batch_size)
  progress = reporting.Progress(num_batches, batch_size * settings.steps, name='attack batch')
  final_w, logs = np.zeros_like(cand_w), []
  for b in range(num_batches):
    path = attack_outputs.batch_path(attack.workdir, b)
    rows = slice(b * batch_size, min((b + 1) * batch_size, len(cand_w)))
    n = rows.stop - rows.start
    if not os.path.exists(path):
      key = jax.random.fold_in(jax.random.key(attack.config.seed), b)
      w, log = run(
          attack.put(_pad_to(cand_w[rows], batch_size)),
          attack.put(_pad_to(cand_classes[rows], batch_size)),
          attack.put(np.arange(batch_size) < n),
          key,
      )
      w, log = _fetch(w)[:n], jax.device_get(log)
      flat_log = {
          'loss': log['loss'],
          'finite': log['finite'],
          'w_grad_abs_mean': log['w_grad_abs_mean'],
          'w_grad_abs_std': log['w_grad_abs_std'],
          **{f'{attack_outputs.GRAD_NORM_PREFIX}{k}': v for k, v in log['stage_grad_norm'].items()},
      }
      if not np.all(log['finite']):
        bad_step = int(np.argmin(log['finite']))
        failed = path.replace('.npz', '.failed.npz')
        reporting.save_npz(failed, w=w, w0=cand_w[rows], classes=cand_classes[rows], **flat_log)
        raise reporting.NonFiniteError(
            f'non-finite loss or gradient in batch {b} (classes {sorted(set(cand_classes[rows].tolist()))}) at '
            f'step {bad_step}; latents from before that step and the loss log are in {failed}. Finished batches '
            f'are kept; lower config.attack.lr or check the target and generator, then relaunch to resume.'
        )
      reporting.save_npz(path, w=w, classes=cand_classes[rows], **flat_log)
    else:  # finished by an earlier launch
      with np.load(path) as f:
        w, flat_log = f['w'], {k: f[k] for k in f.files if k not in ('w', 'classes')}
    final_w[rows] = w
    logs.append({k: np.asarray(v).tolist() for k, v in flat_log.items()})
    progress.update(b + 1, {'loss': logs[-1]['loss'][-1]} if (b + 1) % max(1, num_batches // 20) == 0 else None)
  return final_w, logs


def select_final(attack: _Attack, final_w: np.ndarray, cand_classes: np.ndarray):
  """Stage 3: per class, the best final_samples latents (final/class_<c>.npz, read back when present).

  Returns ({class: mean final confidence}, {'filtered'|'unfiltered': (evaluation logits, targets)}).
  """
  a, batch_size, workdir = attack.a, attack.batch_size, attack.workdir

  @jax.jit
  def final_images_and_scores(w, targets, key):
    images = attack.synthesize(w)
    return images, selection.final_scores(
        attack.classify,
        attack.frame(images),
        targets,
        key,
        a.final_iterations,
        tuple(a.final_rrc_scale),
        tuple(a.final_rrc_ratio),
        attack.settings.antialias,
    )

  summary, overview = {}, []
  evaluated = {'filtered': ([], []), 'unfiltered': ([], [])}
  for c in attack.classes:
    path = attack_outputs.final_path(workdir, c)
    idx = np.flatnonzero(cand_classes == c)
    if os.path.exists(path):  # finished by an earlier launch
      with np.load(path) as f:
        record = {k: f[k] for k in f.files}
      framed = None
    else:
      key = jax.random.fold_in(jax.random.key(attack.config.seed + 1), c)  # one key per class: the same crops for all
      images, scores = [], []
      for start in range(0, len(idx), batch_size):
        rows = idx[start : start + batch_size]
        imgs, sc = final_images_and_scores(
            attack.put(_pad_to(final_w[rows], batch_size)), attack.put(np.full(batch_size, c, np.int32)), key
        )
        images.append(_fetch(imgs)[: len(rows)])
        scores.append(_fetch(sc)[: len(rows)])
      images, scores = np.concatenate(images), np.concatenate(scores)
      keep = selection.top_final(scores, a.final_samples)
      record = {'w': final_w[idx[keep]], 'scores': scores[keep]}
      if attack.evaluation_logits is not None:  # every optimised image (PPA's unfiltered accuracy) and the kept
        record['eval_logits_all'] = np.concatenate(
            [np.asarray(attack.evaluation_logits(jnp.asarray(images[i : i + 64]))) for i in range(0, len(images), 64)]
        )
        record['eval_logits'] = record['eval_logits_all'][keep]
      framed = np.asarray(attack.frame(jnp.asarray(images[keep])))  # at the target's input size, float
      reporting.save_png(os.path.join(workdir, 'grids', f'class_{c:05d}.png'), reporting.image_grid(framed))
      reporting.save_npz(path, **record)
    summary[c] = float(np.mean(record['scores']))
    if len(overview) < OVERVIEW_CLASSES:
      if framed is None:
        framed = np.asarray(attack.frame(attack.synthesize(jnp.asarray(record['w'][:OVERVIEW_PER_CLASS]))))
      overview.append(framed[:OVERVIEW_PER_CLASS])
    if 'eval_logits' in record:
      for name, logits in (('unfiltered', record['eval_logits_all']), ('filtered', record['eval_logits'])):
        evaluated[name][0].append(logits)
        evaluated[name][1].append(np.full(len(logits), c))
  per_row = min(OVERVIEW_PER_CLASS, a.final_samples)  # one row per class (the first OVERVIEW_CLASSES), best first
  reporting.save_png(
      os.path.join(workdir, 'final_grid.png'),
      reporting.image_grid(np.concatenate([row[:per_row] for row in overview]), ncols=per_row),
  )
  return summary, evaluated


def _make_evaluator(config, gen_config, settings, classes):
  """Generator images [n, R, R, C] -> the evaluation model's logits; None without an evaluation model."""
  if not config.evaluation.workdir:
    return None
  model, variables, saved, _, _ = load_classifier(config.evaluation.workdir, config.evaluation.checkpoint, 'evaluation')
  check_compatible(model, variables, saved, gen_config, settings, classes)
  size = saved['data']['image_size']

  @jax.jit
  def logits(images):
    framed = transforms.generator_to_classifier(images, settings.center_crop, size, settings.antialias)
    return model.apply(variables, framed, train=False)

  return logits


def _check_same_attack(workdir: str, config: ml_collections.ConfigDict, global_batch: int, maxvit_target: bool = False):
  """Writes `run.json` on the first launch; a relaunch must describe the same attack (it resumes it).

  Devices may change between launches as long as the global batch stays the same.
  """
  current = reporting.config_json(config)
  identity = {
      'seed': current['seed'],
      # official_rebuild changes MaxViT targets only: other runs resume whatever it says (or if it is absent).
      'target': {k: v for k, v in current['target'].items() if k != 'official_rebuild' or maxvit_target},
      'generator': current['generator'],
      'attack': {k: v for k, v in current['attack'].items() if k != 'batch_size'},
      'global_batch': global_batch,
  }
  path = os.path.join(workdir, 'run.json')
  if not os.path.exists(path):
    reporting.write_json(path, identity)
    return
  with open(path) as f:
    saved = json.load(f)
  try:
    reporting.check_same_run(saved, identity, workdir, 'attack')
  except reporting.DifferentRunError as e:
    raise AttackError(str(e)) from None


def _fetch(x: jax.Array) -> np.ndarray:
  """A (possibly multi-host) sharded array as one numpy array on every process."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _pad_to(array: np.ndarray, size: int) -> np.ndarray:
  """Pads a short last batch by repeating its first row (the extra rows are dropped afterwards)."""
  if len(array) == size:
    return array
  return np.concatenate([array, np.repeat(array[:1], size - len(array), axis=0)])


def perturbation_zeros(model, variables, size: int, channels: int):
  """batch -> zeros of the target's `perturbations` collection (its stage inputs) for that batch size."""

  def zeros(batch):
    _, shapes = jax.eval_shape(
        lambda: model.apply(variables, jnp.zeros((batch, size, size, channels)), train=False, mutable=['perturbations'])
    )
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes.get('perturbations', {}))

  return zeros


run = attack_ppa  # the `attack_ppa` job (mi_jax/jobs.py)
