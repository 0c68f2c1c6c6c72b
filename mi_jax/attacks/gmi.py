"""GMI and KEDMI (with LOMMA's losses): inverting a classifier through a low-resolution GAN (mi_jax/gan64).

  GMI    (Zhang et al. 2020)  one latent per identity, `restarts` times from N(0, I): Nesterov SGD
                              (lr 0.02, momentum 0.9; optax's nesterov update is GMI's hand-written one),
                              z clipped to [-1, 1] after every step; per identity the restart with the
                              highest target logit is kept.
  KEDMI  (Chen et al. 2021)   a Gaussian N(mu, exp(logvar)) per identity (mu = 0, logvar = 1 at the
                              start), one reparameterised sample per step, Adam (lr 0.02); afterwards
                              `samples` latents are drawn from it and all are kept.

Loss per step: prior + identity_weight x identity. The prior is the GAN's own: -mean D(G(z)) for a
WGAN-GP critic (GMI's GAN), mean -log sigmoid(LSE l(G(z))) for KEDMI's discriminator. The identity
term is the target's cross-entropy (GMI, KEDMI) or LOMMA's logit loss (Nguyen et al. 2023): minus the
label's logit, averaged over the target and any surrogate models (`lomma.surrogates`), plus
`lomma.feature_weight` x mean((f_T(x) - p_reg)^2), f_T the target's penultimate features and p_reg
their mean over `lomma.public_samples` public images.

Latents, logs and kept images follow mi_jax/attack_outputs.py (`w` holds the z latents), so the
evaluate job and the study read these attacks like PPA. Generated images are in [0, 1]; the target
and the evaluation model see them as our classifiers expect: 2x - 1, at their own input size.
"""

import dataclasses
import functools
import os
from typing import Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mi_jax import attack_outputs, config_checks
from mi_jax.data import pipeline, sources, transforms
from mi_jax.gan64 import checkpoint as gan_io
from mi_jax.gan64 import losses as gan_losses
from mi_jax.gan64 import networks
from mi_jax.gan64 import training as gan_training
from mi_jax.metrics import scores as scores_lib
from mi_jax.models import layers
from mi_jax.train import reporting, sharding

from mi_jax.attacks import ppa  # the attack job's shared pieces: errors, loading, run identity

METHODS = ('gmi', 'kedmi')
IDENTITY_LOSSES = ('ce', 'logit')
GRID_CLASSES = 16  # rows of final_grid.png


@dataclasses.dataclass(frozen=True)
class InversionSettings:
  method: str = 'gmi'  # 'gmi' (a latent per identity) or 'kedmi' (a distribution per identity)
  steps: int = 1500
  lr: float = 0.02
  momentum: float = 0.9  # gmi: Nesterov momentum
  identity_weight: float = 100.0  # lambda: prior + lambda x identity
  identity_loss: str = 'ce'  # 'ce' (GMI, KEDMI) or 'logit' (LOMMA)
  feature_weight: float = 0.0  # LOMMA: weight of mean((f_T - p_reg)^2); 0 = off
  clip: bool = True  # gmi: z to [-1, 1] after each step; kedmi: each sampled z (KEDMI: off, LOMMA: on)


def to_classifier(images: jax.Array, size: int, antialias: bool) -> jax.Array:
  """Generator images in [0, 1] -> our classifiers' input: [-1, 1] at `size` px."""
  x = images * 2.0 - 1.0
  return x if x.shape[1] == size else transforms.resize(x, size, antialias)


def logits_and_features(model, variables, x, perturbations=None):
  """(logits, the penultimate features: the hidden feature a classifier records last) in one pass;
  `perturbations` are added at the stage inputs (their gradient is dL/dz_i)."""
  if perturbations:  # None or {} (a model without stage inputs to perturb): plain forward
    variables = {**variables, 'perturbations': perturbations}
  logits, recorded = model.apply(variables, x, train=False, mutable=[layers.HIDDEN_COLLECTION])
  return logits, recorded[layers.HIDDEN_COLLECTION][layers.HIDDEN_NAME][-1]


def prior_loss(kind: str, critic_output) -> jax.Array:
  """Per-sample prior loss from the critic's output on G(z): -D (WGAN-GP critic) or -log sigmoid(LSE) (KEDMI)."""
  if kind == 'wgan_gp':
    return -critic_output
  _, logits = critic_output
  return gan_losses.real_loss(logits)


def identity_loss(name: str, logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-sample identity loss: cross-entropy, or LOMMA's logit loss (minus the label's logit)."""
  if name == 'ce':
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return -jnp.take_along_axis(logits.astype(jnp.float32), targets[:, None], axis=1)[:, 0]


def make_inversion_fn(
    generate: Callable[[jax.Array], jax.Array],  # z [B, z_dim] -> images in [0, 1]
    critic: Callable,  # images -> the critic's output (scores, or (features, logits))
    gan_kind: str,  # 'wgan_gp' or 'kedmi': which prior the critic gives
    classifiers: list[Callable],  # (images in [0, 1], perturbations) -> (logits, features): the target, surrogates
    p_reg: jax.Array | None,  # LOMMA: the target's mean public feature; None = no feature term
    settings: InversionSettings,
    perturbations_like: Callable[[int], dict] = lambda batch: {},  # zeros at the target's stage inputs
):
  """Returns invert(init, targets [B], valid [B], key) -> (params, log); one jitted scan over the steps.

  gmi: init and params are z [B, z_dim]; kedmi: {'mu', 'logvar'} [B, z_dim] each. `valid` marks the real rows
  of a padded batch: every mean is over them. Only the target gets `perturbations` (surrogates get None).
  log: per step 'loss', 'prior', 'identity', 'finite', 'w_grad_abs_mean' / 'w_grad_abs_std' (of the
  gradient w.r.t. z or mu), and 'stage_grad_norm' {stage input: mean over the valid rows of
  ||dL/dz_i||, L the summed per-sample losses}: the paper's gradient-flow measure, as PPA logs it.
  """
  kedmi = settings.method == 'kedmi'
  tx = optax.adam(settings.lr) if kedmi else optax.sgd(settings.lr, momentum=settings.momentum, nesterov=True)

  def sample(params, key):
    if not kedmi:
      return params
    z = params['mu'] + jnp.exp(0.5 * params['logvar']) * jax.random.normal(key, params['mu'].shape)
    return jnp.clip(z, -1.0, 1.0) if settings.clip else z

  def invert(init, targets, valid, key):
    weight = valid.astype(jnp.float32)
    count = jnp.sum(weight)
    masked_mean = lambda values: jnp.sum(values * weight) / count

    def loss_fn(params, perturbations, step_key):
      images = generate(sample(params, step_key))
      prior = masked_mean(prior_loss(gan_kind, critic(images)))
      identity = 0.0
      for i, classify in enumerate(classifiers):
        logits, features = classify(images, perturbations if i == 0 else None)
        identity += masked_mean(identity_loss(settings.identity_loss, logits, targets)) / len(classifiers)
        if i == 0 and p_reg is not None:  # the feature term is the target's only, counted once
          identity += settings.feature_weight * masked_mean(jnp.mean(jnp.square(features - p_reg), axis=1))
      return prior + settings.identity_weight * identity, (prior, identity)

    zeros = perturbations_like(targets.shape[0])

    def step(carry, step_key):
      params, opt_state = carry
      (loss, (prior, identity)), (grads, stage_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
          params, zeros, step_key
      )
      norms = {  # x count: the gradient of the summed (not averaged) per-sample losses, as PPA's
          '/'.join(path): masked_mean(count * jnp.sqrt(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)))
          for path, g in flax.traverse_util.flatten_dict(stage_grads).items()
      }
      finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
      updates, new_opt_state = tx.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      if not kedmi and settings.clip:
        new_params = jnp.clip(new_params, -1.0, 1.0)
      params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_params, params)  # NaN-safe
      opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_opt_state, opt_state)
      z_grad = jnp.abs(grads['mu'] if kedmi else grads) * weight[:, None]
      elements = count * z_grad.shape[1]
      abs_mean = jnp.sum(z_grad) / elements
      abs_std = jnp.sqrt(jnp.sum(jnp.square(z_grad - abs_mean) * weight[:, None]) / (elements - 1))
      log = {'loss': loss, 'prior': prior, 'identity': identity, 'finite': finite, 'stage_grad_norm': norms}
      return (params, opt_state), {**log, 'w_grad_abs_mean': abs_mean, 'w_grad_abs_std': abs_std}

    (params, _), log = jax.lax.scan(step, (init, tx.init(init)), jax.random.split(key, settings.steps))
    return params, log

  return invert


# ---------------------------------------------------------------------------- the job


def validate_config(config: ml_collections.ConfigDict):
  """Fails early, naming the field, before anything is loaded."""
  check = functools.partial(config_checks.check_field, error=ppa.AttackError)
  a = config.attack
  check(a.method in METHODS, 'attack.method', a.method, f'expected one of {METHODS}')
  check(config.job == f'attack_{a.method}', 'attack.method', a.method, f'the job is {config.job}')
  ppa.check_target_workdir(config)
  gan_dir = os.path.expanduser(config.generator.dir)
  check(
      bool(config.generator.dir) and os.path.isfile(os.path.join(gan_dir, gan_io.META_FILE)),
      'generator.dir',
      config.generator.dir,
      f'not a low-resolution GAN directory (no {gan_io.META_FILE}; the gan64 job writes one)',
  )
  config_checks.check_positive_ints(
      config, [f'attack.{f}' for f in ('steps', 'batch_size', 'restarts', 'samples', 'keep')], error=ppa.AttackError
  )
  for field in ('target.checkpoint', 'evaluation.checkpoint'):
    config_checks.check_checkpoint_choice(config, field, ppa.AttackError)
  check(a.lr > 0, 'attack.lr', a.lr, 'expected > 0')
  check(a.num_classes >= 0, 'attack.num_classes', a.num_classes, 'expected >= 0 (0 = every class)')
  per_class = a.restarts if a.method == 'gmi' else a.samples
  check(a.keep <= per_class, 'attack.keep', a.keep, f'expected <= the {per_class} latents per class')
  check(
      a.lomma.identity_loss in IDENTITY_LOSSES,
      'attack.lomma.identity_loss',
      a.lomma.identity_loss,
      f'expected one of {IDENTITY_LOSSES}',
  )
  check(a.lomma.feature_weight >= 0, 'attack.lomma.feature_weight', a.lomma.feature_weight, 'expected >= 0')
  if a.lomma.feature_weight > 0:
    sources.resolve(config.public_data)
    config_checks.check_positive_ints(config, ['attack.lomma.public_samples'], error=ppa.AttackError)


def settings_from(config: ml_collections.ConfigDict) -> InversionSettings:
  a = config.attack
  return InversionSettings(
      method=a.method,
      steps=a.steps,
      lr=a.lr,
      momentum=a.momentum,
      identity_weight=a.identity_weight,
      identity_loss=a.lomma.identity_loss,
      feature_weight=a.lomma.feature_weight,
      clip=a.clip,
  )


def public_feature_mean(config, classify, size: int) -> np.ndarray:
  """LOMMA's p_reg: the target's mean penultimate feature over the first `public_samples` shuffled public images."""
  a = config.attack
  data = ml_collections.ConfigDict(config.public_data.to_dict())
  data.image_size = size
  source = sources.get_source(sources.prepare(data), data.train_split)
  dataset = pipeline.train_dataset(source, data, 50, 1, config.seed, augment=False)  # the reference's batch of 50
  total, count = None, 0
  for batch in dataset:
    images = (np.asarray(batch['image']) + 1.0) / 2.0  # the pipeline's [-1, 1] -> the generator's range
    _, features = classify(jnp.asarray(images))
    features = np.asarray(features, np.float64)
    total = features.sum(0) if total is None else total + features.sum(0)
    count += len(features)
    if count >= a.lomma.public_samples:
      break
  return (total / count).astype(np.float32)


def attack_gan64(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """GMI or KEDMI (config.attack.method), resumable per batch of identities."""
  a = config.attack
  settings = settings_from(config)
  model, target_vars, saved, target_step, target_metrics = ppa.load_classifier(
      config.target.workdir, config.target.checkpoint, 'target'
  )
  gan_config, gan_kind, g_vars, d_vars = gan_io.load_gan(config.generator.dir)
  if gan_kind not in gan_training.KINDS:
    raise ppa.AttackError(
        f"config.generator.dir={config.generator.dir!r} holds a {gan_kind!r} GAN; {a.method.upper()} needs GMI's "
        "or KEDMI's (the gan64 job); PLG-MI's conditional GAN is attack_plgmi's"
    )
  size, num_classes = saved['data']['image_size'], saved['model']['num_classes']
  if gan_config.resolution != size:
    raise ppa.AttackError(
        f'config.generator.dir={config.generator.dir!r} makes {gan_config.resolution}px images; the target in '
        f"config.target.workdir takes {size}px ones: train the GAN at the protocol's size"
    )
  classes = attack_classes(a, num_classes)

  G = networks.Generator(gan_config)
  D = networks.WGANCritic(gan_config) if gan_kind == 'wgan_gp' else networks.MinibatchCritic(gan_config)
  generate = lambda z: G.apply(g_vars, z)
  critic = lambda images: D.apply(d_vars, images)
  classify_with = lambda m, v, s: (
      lambda images, perturbations=None: logits_and_features(m, v, to_classifier(images, s, a.antialias), perturbations)
  )
  target = classify_with(model, target_vars, size)
  surrogates = []
  for i, surrogate_dir in enumerate(a.lomma.surrogates):
    s_model, s_vars, s_saved, _, _ = ppa.load_classifier(surrogate_dir, 'latest', f'attack.lomma.surrogates[{i}]')
    surrogates.append(classify_with(s_model, s_vars, s_saved['data']['image_size']))
  p_reg = None
  if settings.feature_weight > 0:
    p_reg = jnp.asarray(_cached_p_reg(workdir, lambda: public_feature_mean(config, jax.jit(target), size)))
  evaluator = _make_evaluator(config, a.antialias)

  mesh = sharding.make_mesh(config.num_devices)
  batch_size = a.batch_size
  if batch_size % mesh.devices.size:
    raise ppa.AttackError(f'config.attack.batch_size={batch_size} does not split over {mesh.devices.size} devices')
  ppa._check_same_attack(workdir, config, batch_size)  # pylint: disable=protected-access
  perturbations_like = ppa.perturbation_zeros(model, target_vars, size, gan_config.img_channels)
  invert = jax.jit(
      make_inversion_fn(generate, critic, gan_kind, [target] + surrogates, p_reg, settings, perturbations_like)
  )
  put = lambda x: jax.device_put(x, sharding.data_sharded(mesh))

  # ---- optimisation: per batch of identities (and restart), optimized/batch_<i>.npz
  logs, latents, latent_classes = [], [], []
  batches = [classes[i : i + batch_size] for i in range(0, len(classes), batch_size)]
  units = [(b, r) for b in range(len(batches)) for r in range(a.restarts if a.method == 'gmi' else 1)]
  progress = reporting.Progress(len(units), batch_size, name=a.method)
  for unit, (b, restart) in enumerate(units):
    path = attack_outputs.batch_path(workdir, unit)
    if not os.path.exists(path):
      _optimize_unit(config, invert, put, batches[b], batch_size, gan_config.z_dim, unit, b, restart, path)
    with np.load(path) as f:
      record = {k: f[k] for k in f.files}
    latents.append(record['w'])
    latent_classes.append(record['classes'])
    logs.append({k: v.tolist() for k, v in record.items() if k not in ('w', 'classes', 'mu', 'logvar')})
    progress.update(unit + 1, {'loss': logs[-1]['loss'][-1]})
  latents, latent_classes = np.concatenate(latents), np.concatenate(latent_classes)

  # ---- final selection: per class the `keep` latents with the highest target logit
  score = jax.jit(lambda z, y: jnp.take_along_axis(target(generate(z))[0], y[:, None], axis=1)[:, 0])
  results = {
      'method': a.method,
      'lomma': bool(a.lomma.identity_loss == 'logit' or surrogates or p_reg is not None),
      'classes': len(classes),
      'latents_optimized': int(len(latents)),
      'batches': len(units),
      'final_per_class': int(a.keep),
      'target_step': int(target_step),
      'target_checkpoint': str(config.target.checkpoint),
      'target_metrics': {k: float(v) for k, v in target_metrics.items()},
      'final_loss_mean': float(np.mean([log['loss'][-1] for log in logs])),
  }
  return select_final_and_report(
      config, workdir, saved, results, classes, latents, latent_classes, score, jax.jit(generate), evaluator
  )


def attack_classes(attack: ml_collections.ConfigDict, num_classes: int) -> list[int]:
  """The identities a low-resolution attack inverts: attack.classes, else the first attack.num_classes (0: all)
  of the target's `num_classes`; refuses classes the target does not have."""
  classes = [int(c) for c in attack.classes] or list(range(attack.num_classes or num_classes))
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad:
    raise ppa.AttackError(f"config.attack.classes: {bad[:10]} are outside the target's {num_classes} classes")
  return classes


def select_final_and_report(
    config, workdir, saved, results, classes, latents, latent_classes, score, generate, evaluator
) -> dict:
  """The low-resolution attacks' last step: per class the `attack.keep` latents `score(latents, classes)`
  ranks highest (final/class_<c>.npz, read back when present), final_grid.png, and attack.json with
  `results` and the evaluation model's attack accuracy. `generate` maps latents to images in [0, 1]."""
  keep = config.attack.keep
  grid_rows, evaluated = [], ([], [])
  os.makedirs(os.path.join(workdir, 'final'), exist_ok=True)
  for c in classes:
    path = attack_outputs.final_path(workdir, c)
    if not os.path.exists(path):
      z = latents[latent_classes == c]
      scores = np.asarray(score(jnp.asarray(z), jnp.full(len(z), c)))
      kept = np.argsort(-scores, kind='stable')[:keep]
      record = {'w': z[kept], 'scores': scores[kept]}
      if evaluator is not None:
        record['eval_logits_all'] = np.asarray(evaluator(generate(jnp.asarray(z))))
        record['eval_logits'] = record['eval_logits_all'][kept]
      reporting.save_npz(path, **record)
    with np.load(path) as f:
      record = {k: f[k] for k in f.files}
    if len(grid_rows) < GRID_CLASSES:
      grid_rows.append(np.asarray(generate(jnp.asarray(record['w']))) * 2.0 - 1.0)
    if 'eval_logits' in record:
      evaluated[0].append(record['eval_logits'])
      evaluated[1].append(np.full(len(record['eval_logits']), c))
  reporting.save_png(os.path.join(workdir, 'final_grid.png'), reporting.image_grid(np.concatenate(grid_rows), keep))
  if evaluated[0]:
    accuracy = scores_lib.attack_accuracy(np.concatenate(evaluated[0]), np.concatenate(evaluated[1]))
    results['eval_top1'], results['eval_top5'] = accuracy['top1'], accuracy['top5']
  reporting.write_json(
      os.path.join(workdir, attack_outputs.ATTACK_FILE),
      {'settings': reporting.config_json(config), 'target_config': saved, **results},
  )
  logging.info('Attack done: %s', results)
  return results


def _optimize_unit(config, invert, put, batch_classes, batch_size, z_dim, unit, b, restart, path):
  """One batch of identities (one restart of GMI): optimise, check, write optimized/batch_<unit>.npz."""
  a = config.attack
  n = len(batch_classes)
  targets = np.asarray(batch_classes + batch_classes[:1] * (batch_size - n), np.int32)  # padded rows repeat one
  valid = np.arange(batch_size) < n
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), b), restart)
  init_key, run_key, sample_key = jax.random.split(key, 3)
  if a.method == 'gmi':
    init = put(jax.random.normal(init_key, (batch_size, z_dim)))
  else:
    init = {'mu': put(jnp.zeros((batch_size, z_dim))), 'logvar': put(jnp.ones((batch_size, z_dim)))}
  params, log = invert(init, put(targets), put(valid), run_key)
  log = jax.device_get(log)
  norms = log.pop('stage_grad_norm')
  record = {
      **{k: np.asarray(v) for k, v in log.items()},
      **{f'{attack_outputs.GRAD_NORM_PREFIX}{k}': np.asarray(v) for k, v in norms.items()},
  }
  if not np.all(log['finite']):
    failed = path.replace('.npz', '.failed.npz')
    reporting.save_npz(failed, **record, **(params if a.method == 'kedmi' else {'w': np.asarray(params)}))
    raise reporting.NonFiniteError(
        f'non-finite loss or gradient in batch {unit} (classes {batch_classes[:5]}...) at step '
        f'{int(np.argmin(log["finite"]))}; the latents and the loss log are in {failed}. Finished batches are kept; '
        'lower config.attack.lr or check the target and the GAN, then relaunch to resume.'
    )
  if a.method == 'gmi':
    z, classes = np.asarray(params)[:n], np.asarray(batch_classes, np.int32)
    extra = {}
  else:  # `samples` draws from each identity's distribution
    mu, logvar = np.asarray(params['mu'])[:n], np.asarray(params['logvar'])[:n]
    eps = np.asarray(jax.random.normal(sample_key, (a.samples, n, z_dim)))
    z = mu[None] + np.exp(0.5 * logvar)[None] * eps
    z = np.clip(z, -1.0, 1.0) if a.clip else z
    z, classes = z.reshape(-1, z_dim), np.tile(np.asarray(batch_classes, np.int32), a.samples)
    extra = {'mu': mu, 'logvar': logvar}
  reporting.save_npz(path, w=z.astype(np.float32), classes=classes, **record, **extra)


def _cached_p_reg(workdir: str, compute) -> np.ndarray:
  path = os.path.join(workdir, 'p_reg.npz')
  if not os.path.exists(path):
    reporting.save_npz(path, p_reg=compute())
  with np.load(path) as f:
    return f['p_reg']


def _make_evaluator(config, antialias: bool):
  """Generator images in [0, 1] -> the evaluation model's logits; None without an evaluation model."""
  if not config.evaluation.workdir:
    return None
  model, variables, saved, _, _ = ppa.load_classifier(
      config.evaluation.workdir, config.evaluation.checkpoint, 'evaluation'
  )
  size = saved['data']['image_size']
  return jax.jit(lambda images: model.apply(variables, to_classifier(images, size, antialias), train=False))


run = attack_gan64  # the `attack_gmi` and `attack_kedmi` jobs (mi_jax/jobs.py)
