"""The `attack_ifgmi` job: IF-GMI, inverting through the intermediate features of a StyleGAN2 generator.

IF-GMI (Qiu et al., ECCV 2024; final-solution/IF-GMI attacks/optimize.py, utils/stylegan.py) starts as
PPA and then walks down the synthesis network, one resolution block at a time:

  stage 0   PPA's latent optimisation of w (one w for every layer; Poincaré loss, random resized crops,
            Adam with betas (0.1, 0.1)), with w kept in an l1 ball around its starting value;
  stage s   the features entering block s are computed once from the previous stage's result (block s - 1
            run on it) and then optimised together with w: each deviation from the stage's starting
            value is projected onto its own l1 ball (`feature_radius[s]`, `w_radius[s]`, per sample over
            every element) after every Adam step; a fresh Adam state per stage, as the reference's.
            The image is made by blocks s.. alone: the reference starts the RGB accumulation at block s
            (the ToRGB outputs of blocks < s are dropped); `carry_skip_image` keeps them instead.

Candidates come from PPA's initial selection (mi_jax/attacks/ppa.py); the reference keeps every
candidate (num_candidates = final_samples = 50), so its final selection only orders them.

Outputs (mi_jax/attack_outputs.py): an image is a function of w *and* a feature map that grows to
128 x 256 x 256 at the last stage of a 1024 px generator, so IF-GMI stores images rather than latents:
`images` in each batch and final file, float16, centre-cropped as the target sees them and resized to
`store_size` (299, the Inception and FID input; 0 = the crop at full resolution), next to `w`. The
evaluation model's logits are computed from the full-resolution images during the attack, for every
stage (`eval_top1_per_stage` in attack.json: the reference reports its best stage by that number).
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mi_jax import attack_outputs, config_checks
from mi_jax.attacks import optimize, ppa, selection
from mi_jax.data import transforms
from mi_jax.metrics import scores as scores_lib
from mi_jax.stylegan import networks
from mi_jax.train import reporting, sharding


def project_l1_ball(x: jax.Array, radius) -> jax.Array:
  """Euclidean projection of each sample of x (flattened over all but the batch axis) onto {v: |v|_1 <= radius}.

  Duchi et al. (2008), by sorting, as the reference's: theta = (sum of the rho largest |x_i| - radius) / rho
  with rho the largest k such that k-th largest |x| > (sum of the k largest - radius) / k; then
  sign(x) max(|x| - theta, 0). Samples already strictly inside the ball are returned unchanged.
  """
  flat = x.reshape(x.shape[0], -1)
  magnitude = jnp.abs(flat)
  mu = -jnp.sort(-magnitude, axis=1)  # descending
  cumsum = jnp.cumsum(mu, axis=1)
  k = jnp.arange(1, flat.shape[1] + 1, dtype=flat.dtype)
  rho = jnp.max(jnp.where(mu * k > cumsum - radius, k, 0.0), axis=1)
  rho = jnp.maximum(rho, 1.0)  # rho >= 1 whenever radius > 0; guards radius 0
  theta = (jnp.take_along_axis(cumsum, rho.astype(jnp.int32)[:, None] - 1, axis=1)[:, 0] - radius) / rho
  projected = jnp.sign(flat) * jnp.maximum(magnitude - theta[:, None], 0.0)
  inside = jnp.sum(magnitude, axis=1) < radius
  return jnp.where(inside[:, None], flat, projected).reshape(x.shape)


def l1_ball_constraint(radii: dict, fixed: tuple[str, ...] = ('skip',)):
  """constrain(params, params0) for optimize.make_optimize_fn: each entry of `radii` ({name: radius > 0})
  kept within its l1 ball around params0's value; `fixed` entries stay at params0's (the carried skip
  image is an input, not a variable); the rest (or radius <= 0) are free."""

  def one(name, value, start):
    if name in fixed:
      return start
    if radii.get(name, 0) > 0:
      return start + project_l1_ball(value - start, radii[name])
    return value

  def constrain(params, params0):
    if not isinstance(params, dict):  # stage 0: the latent alone
      return one('w', params, params0)
    return {name: one(name, value, params0[name]) for name, value in params.items()}

  return constrain


# ---------------------------------------------------------------------------- config


def validate_config(config: ml_collections.ConfigDict):
  """PPA's checks, and the stage lists."""
  check = functools.partial(config_checks.check_field, error=ppa.AttackError)
  a = config.attack
  ppa.validate_common(config)
  steps = tuple(a.stage_steps)
  check(
      len(steps) > 0 and all(isinstance(s, int) and s > 0 for s in steps),
      'attack.stage_steps',
      steps,
      'expected positive step counts, one per stage',
  )
  for field in ('w_radius', 'feature_radius'):
    check(
        len(a[field]) >= len(steps),
        f'attack.{field}',
        tuple(a[field]),
        f'expected a radius for each of the {len(steps)} stages (<= 0: unconstrained)',
    )
  check(a.store_size >= 0, 'attack.store_size', a.store_size, 'expected >= 0 (0 = the crop at full resolution)')


def stage_settings(config: ml_collections.ConfigDict, input_size: int, stage: int) -> optimize.OptimizeSettings:
  return ppa.settings_from(config, input_size, steps=config.attack.stage_steps[stage])


# ---------------------------------------------------------------------------- the job


class _Stages:
  """The jitted pieces of every stage, compiled once per stage for the batch shape."""

  def __init__(self, attack: ppa._Attack, num_stages: int):  # pylint: disable=protected-access
    a, G, gen_vars = attack.a, attack.G, attack.gen_vars
    self.attack, self.num_blocks = attack, len(networks.block_resolutions(attack.gen_config.img_resolution))
    if num_stages > self.num_blocks:
      raise ppa.AttackError(
          f'config.attack.stage_steps has {num_stages} stages; the {attack.gen_config.img_resolution}px generator '
          f'has {self.num_blocks} blocks, so at most {self.num_blocks} stages'
      )
    batch_sharded, replicated = sharding.data_sharded(attack.mesh), sharding.replicated(attack.mesh)
    zeros = ppa.perturbation_zeros(
        attack.model, attack.target_vars, attack.settings.input_size, attack.gen_config.img_channels
    )
    self.optimize, self.render = [], []
    for s in range(num_stages):
      settings = stage_settings(attack.config, attack.settings.input_size, s)
      render = self._renderer(s)
      radii = {'w': a.w_radius[s], 'feature': a.feature_radius[s] if s else 0.0}
      run = optimize.make_optimize_fn(render, attack.classify, zeros, settings, l1_ball_constraint(radii))
      self.optimize.append(
          jax.jit(
              run,
              in_shardings=(batch_sharded, batch_sharded, batch_sharded, replicated),
              out_shardings=(batch_sharded, replicated),
          )
      )
      self.render.append(jax.jit(render))
    # The features (and image so far) leaving block s - 1, from stage s - 1's result: stage s's start.
    self.enter = jax.jit(
        lambda w, feature, skip, block: G.apply(
            gen_vars, w[:, None], (block, block + 1), feature, skip, method=G.synthesize_blocks
        ),
        static_argnums=3,
    )

  def _renderer(self, stage: int):
    """params -> images in about [-1, 1]: w alone (stage 0) or {'w', 'feature'(, 'skip')} through blocks stage.."""
    attack, G, gen_vars = self.attack, self.attack.G, self.attack.gen_vars
    if stage == 0:
      return attack.synthesize
    blocks = (stage, self.num_blocks)

    def render(params):
      skip = params.get('skip')
      return G.apply(gen_vars, params['w'][:, None], blocks, params['feature'], skip, method=G.synthesize_blocks)[1]

    return render


def attack_ifgmi(config: ml_collections.ConfigDict, workdir: str) -> dict:
  a = config.attack
  attack, saved, target_step, target_metrics = ppa.setup(config, workdir, first_stage_steps=a.stage_steps[0])
  stages = _Stages(attack, len(a.stage_steps))
  cand_w, cand_classes = ppa.select_candidates(attack)
  store = _storer(attack)

  batch_size = attack.batch_size
  num_batches = -(-len(cand_w) // batch_size)
  progress = reporting.Progress(num_batches, batch_size * sum(a.stage_steps), name='ifgmi batch')
  logs = []
  for b in range(num_batches):
    path = attack_outputs.batch_path(workdir, b)
    rows = slice(b * batch_size, min((b + 1) * batch_size, len(cand_w)))
    if not os.path.exists(path):
      _optimize_batch(attack, stages, store, cand_w[rows], cand_classes[rows], b, path)
    with np.load(path) as f:
      logs.append({k: f[k].tolist() for k in f.files if k not in ('w', 'classes', 'images') and 'eval_logits' not in k})
    progress.update(b + 1, {'loss': logs[-1]['loss'][-1]})

  summary, per_stage = _select_final(attack, num_batches, len(a.stage_steps))
  results = {
      'classes': len(attack.classes),
      'latents_optimized': int(len(cand_w)),
      'batches': num_batches,
      'stages': len(a.stage_steps),
      'final_per_class': int(a.final_samples),
      'target_step': int(target_step),
      'target_checkpoint': str(config.target.checkpoint),
      'target_metrics': {k: float(v) for k, v in target_metrics.items()},
      'mean_final_target_confidence': float(np.mean(list(summary.values()))),
      'final_loss_mean': float(np.mean([log['loss'][-1] for log in logs])),
      **per_stage,
  }
  return ppa.write_outputs(config, workdir, saved, results, logs, summary)


def _storer(attack: ppa._Attack):  # pylint: disable=protected-access
  """Generator images -> what the outputs keep: centre-cropped as the target sees them, at store_size, float16."""
  a, resolution = attack.a, attack.gen_config.img_resolution
  crop = a.center_crop or resolution
  size = a.store_size or crop
  return jax.jit(lambda images: transforms.generator_to_classifier(images, a.center_crop, size, a.antialias))


def _optimize_batch(attack, stages: _Stages, store, w0, classes, b: int, path: str):
  """Every stage of one batch of candidates; writes optimized/batch_<b>.npz (or .failed.npz and raises)."""
  a, batch_size, n = attack.a, attack.batch_size, len(w0)
  put, fetch = attack.put, ppa._fetch  # pylint: disable=protected-access
  targets, valid = put(ppa._pad_to(classes, batch_size)), put(np.arange(batch_size) < n)  # pylint: disable=protected-access
  w, feature, skip = put(ppa._pad_to(w0, batch_size)), None, None  # pylint: disable=protected-access
  key = jax.random.fold_in(jax.random.key(attack.config.seed), b)
  stage_logs, eval_logits = [], {}
  for s, run in enumerate(stages.optimize):
    if s == 0:
      params = w
    else:
      feature, image_so_far = stages.enter(w, feature, skip, s - 1)
      skip = image_so_far if a.carry_skip_image else None
      params = {'w': w, 'feature': feature, **({'skip': skip} if skip is not None else {})}
    params, log = run(params, targets, valid, jax.random.fold_in(key, s))
    if s:
      w, feature = params['w'], params['feature']
    else:
      w = params
    log = jax.device_get(log)
    stage_logs.append(log)
    images = stages.render[s](params)
    if attack.evaluation_logits is not None:
      eval_logits[f'eval_logits_stage{s}'] = fetch(attack.evaluation_logits(images))[:n]
    if not np.all(log['finite']):
      failed = path.replace('.npz', '.failed.npz')
      reporting.save_npz(failed, w=fetch(w)[:n], w0=w0, classes=classes, stage=np.int32(s), loss=log['loss'])
      raise reporting.NonFiniteError(
          f'non-finite loss or gradient in batch {b} (classes {sorted(set(classes.tolist()))}), stage {s} at step '
          f'{int(np.argmin(log["finite"]))}; the latents and the loss log are in {failed}. Finished batches are '
          'kept; lower config.attack.lr or check the target and generator, then relaunch to resume.'
      )
  flat = {
      'loss': np.concatenate([log['loss'] for log in stage_logs]),
      'finite': np.concatenate([log['finite'] for log in stage_logs]),
      'stage': np.concatenate([np.full(len(log['loss']), s, np.int32) for s, log in enumerate(stage_logs)]),
      'w_grad_abs_mean': np.concatenate([log['w_grad_abs_mean'] for log in stage_logs]),
      'w_grad_abs_std': np.concatenate([log['w_grad_abs_std'] for log in stage_logs]),
  }
  for name in stage_logs[0]['stage_grad_norm']:
    flat[f'{attack_outputs.GRAD_NORM_PREFIX}{name}'] = np.concatenate(
        [log['stage_grad_norm'][name] for log in stage_logs]
    )
  stored = fetch(store(images))[:n].astype(np.float16)
  reporting.save_npz(path, w=fetch(w)[:n], classes=classes, images=stored, **eval_logits, **flat)


def _select_final(attack, num_batches: int, num_stages: int):
  """Per class the final_samples stored images the target is most confident about under PPA's final
  crops and flips (the same draws for every candidate of the class); final/class_<c>.npz and grids.

  Returns ({class: mean final confidence}, the evaluation model's attack accuracy per stage and at the end).
  """
  a, workdir = attack.a, attack.workdir
  batch_file = lambda b: np.load(attack_outputs.batch_path(workdir, b))
  with batch_file(0) as f:
    has_eval = f'eval_logits_stage{num_stages - 1}' in f.files
  small = ['classes', 'w'] + [f'eval_logits_stage{s}' for s in range(num_stages) if has_eval]
  columns = {name: [] for name in small}
  for b in range(num_batches):  # every array but the images (those are read per class)
    with batch_file(b) as f:
      for name in small:
        columns[name].append(f[name])
  column = lambda name: np.concatenate(columns[name])
  w, classes = column('w'), column('classes')
  batch_of = np.concatenate([np.full(len(c), b) for b, c in enumerate(columns['classes'])])
  row_in_batch = np.concatenate([np.arange(len(c)) for c in columns['classes']])

  def images_at(idx):
    out = []
    for b in np.unique(batch_of[idx]):
      with batch_file(b) as f:
        out.append(f['images'][row_in_batch[idx[batch_of[idx] == b]]])
    return np.concatenate(out)

  size = attack.settings.input_size
  score = jax.jit(
      lambda x, targets, key: selection.final_scores(
          attack.classify,
          transforms.resize(x.astype(jnp.float32), size, a.antialias) if x.shape[1] != size else x.astype(jnp.float32),
          targets,
          key,
          a.final_iterations,
          tuple(a.final_rrc_scale),
          tuple(a.final_rrc_ratio),
          a.antialias,
      )
  )
  for directory in ('final', 'grids'):
    os.makedirs(os.path.join(workdir, directory), exist_ok=True)
  summary, overview = {}, []
  for c in attack.classes:
    path = attack_outputs.final_path(workdir, c)
    idx = np.flatnonzero(classes == c)
    if not os.path.exists(path):
      key = jax.random.fold_in(jax.random.key(attack.config.seed + 1), c)
      images = images_at(idx)  # batches hold whole classes in order, so idx's rows come back in order
      scores = np.concatenate(
          [
              np.asarray(score(jnp.asarray(images[i : i + 64]), jnp.full(len(images[i : i + 64]), c), key))
              for i in range(0, len(images), 64)
          ]
      )
      keep = selection.top_final(scores, a.final_samples)
      record = {'w': w[idx[keep]], 'images': images[keep], 'scores': scores[keep]}
      if has_eval:
        record['eval_logits_all'] = column(f'eval_logits_stage{num_stages - 1}')[idx]
        record['eval_logits'] = record['eval_logits_all'][keep]
      grid = reporting.image_grid(record['images'].astype(np.float32))
      reporting.save_png(os.path.join(workdir, 'grids', f'class_{c:05d}.png'), grid)
      reporting.save_npz(path, **record)
    with np.load(path) as f:
      summary[c] = float(np.mean(f['scores']))
      if len(overview) < ppa.OVERVIEW_CLASSES:
        overview.append(f['images'][: ppa.OVERVIEW_PER_CLASS].astype(np.float32))
  per_row = min(ppa.OVERVIEW_PER_CLASS, a.final_samples)
  reporting.save_png(
      os.path.join(workdir, 'final_grid.png'),
      reporting.image_grid(np.concatenate([row[:per_row] for row in overview]), ncols=per_row),
  )
  per_stage = {}
  if has_eval:
    per_stage['eval_top1_per_stage'] = [
        scores_lib.attack_accuracy(column(f'eval_logits_stage{s}'), classes)['top1'] for s in range(num_stages)
    ]
    finals = [np.load(attack_outputs.final_path(workdir, c)) for c in attack.classes]
    logits = np.concatenate([f['eval_logits'] for f in finals])
    targets = np.concatenate([np.full(len(f['eval_logits']), c) for f, c in zip(finals, attack.classes)])
    accuracy = scores_lib.attack_accuracy(logits, targets)
    per_stage['eval_top1'], per_stage['eval_top5'] = accuracy['top1'], accuracy['top5']
    accuracy = scores_lib.attack_accuracy(column(f'eval_logits_stage{num_stages - 1}'), classes)
    per_stage['eval_unfiltered_top1'], per_stage['eval_unfiltered_top5'] = accuracy['top1'], accuracy['top5']
  return summary, per_stage


run = attack_ifgmi  # the `attack_ifgmi` job (mi_jax/jobs.py)
