"""The `attack_plgmi` job: PLG-MI's attack through its conditional GAN (mi_jax/gan64/plgmi.py).

PLG-MI (Yuan et al., AAAI 2023; LetheSec/PLG-MI-Attack reconstruct.py): for each identity y, z ~ N(0, I)
is optimised with Adam (lr 0.1, betas (0.9, 0.999)) for 600 steps to minimise the target's max-margin
loss, max_{j != y} l_j - l_y, summed over `views` (2) independently augmented views of G(z, y) (random
resized crop, colour jitter (always, p 1), flip, small rotation: mi_jax/gan64/plgmi.py); z is not
clipped; G runs on its BatchNorm running statistics. Each identity is attacked from `restarts` (5)
starting points, the r-th one drawn from seed r for the whole batch, as the reference reseeds per
restart (identities k and k + batch_size share their starts), and every restart is kept: the
reference averages accuracy over them.

Outputs follow mi_jax/attack_outputs.py. The latent of an image is (z, y): `w` holds z with the class
as its last column, so the renderer needs nothing else. Generated images are [0, 1]-valued (the GAN's
data range); the target and the evaluation model see them as our classifiers expect: 2x - 1, at their
own input size.
"""

import dataclasses
import functools
import os
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mi_jax import attack_outputs, config_checks
from mi_jax.attacks import gmi, losses, ppa
from mi_jax.gan64 import checkpoint as gan_io
from mi_jax.gan64 import conditional, plgmi
from mi_jax.train import reporting, sharding


@dataclasses.dataclass(frozen=True)
class Settings:
  steps: int = 600
  lr: float = 0.1
  betas: tuple[float, float] = (0.9, 0.999)
  views: int = 2  # augmented views per step, their losses summed
  jitter_p: float = 1.0  # the colour jitter's probability in the attack's augmentation


def latents_with_class(z: np.ndarray, classes: np.ndarray) -> np.ndarray:
  """The stored latent rows: z with the class appended as its last column (exact in float32)."""
  return np.concatenate([z, classes[:, None].astype(z.dtype)], axis=1)


def split_latents(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(z, classes) of stored latent rows."""
  return w[:, :-1], w[:, -1].astype(jnp.int32)


def make_attack_fn(
    generate: Callable[[jax.Array, jax.Array], jax.Array],  # (z, y) -> images in about [0, 1]
    classify: Callable[[jax.Array, dict | None], jax.Array],  # (images in [0, 1], perturbations) -> logits
    settings: Settings,
    perturbations_like: Callable[[int], dict] = lambda batch: {},
):
  """Returns attack(z0 [B, z_dim], targets [B], valid [B], key) -> (z, log); one jitted scan over the steps.

  log: per step 'loss' (the mean over valid rows, summed over views), 'finite', 'w_grad_abs_mean' /
  'w_grad_abs_std' (of dL/dz) and 'stage_grad_norm' {stage input: mean over the valid rows of ||dL_n/dz_i||}.
  """
  tx = optax.adam(settings.lr, b1=settings.betas[0], b2=settings.betas[1], eps=1e-8)

  def attack(z0, targets, valid, key):
    weight = valid.astype(jnp.float32)
    count = jnp.sum(weight)
    masked_mean = lambda values: jnp.sum(values * weight) / count
    zeros = perturbations_like(targets.shape[0])

    def summed_loss(z, perturbations, step_key):  # sum over rows and views: dL/dz_i[n] is sample n's own
      images = generate(z, targets)
      total = 0.0
      for view_key in jax.random.split(step_key, settings.views):
        logits = classify(plgmi.augment(view_key, images, settings.jitter_p), perturbations)
        total += jnp.sum(losses.max_margin_loss(logits.astype(jnp.float32), targets) * weight)
      return total

    def step(carry, step_key):
      z, opt_state = carry
      total, (grad, stage_grads) = jax.value_and_grad(summed_loss, argnums=(0, 1))(z, zeros, step_key)
      grad = grad / count  # the gradient of the per-view batch means, summed over views, as the reference's
      finite = jnp.isfinite(total) & jnp.all(jnp.isfinite(grad))
      updates, new_opt_state = tx.update(grad, opt_state, z)
      z = jnp.where(finite, optax.apply_updates(z, updates), z)  # a non-finite step leaves z as it was
      opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_opt_state, opt_state)
      norms = {
          '/'.join(path): masked_mean(jnp.sqrt(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)))
          for path, g in flax.traverse_util.flatten_dict(stage_grads).items()
      }
      magnitude = jnp.abs(grad) * weight[:, None]
      elements = count * grad.shape[1]
      abs_mean = jnp.sum(magnitude) / elements
      abs_std = jnp.sqrt(jnp.sum(jnp.square(magnitude - abs_mean) * weight[:, None]) / (elements - 1))
      return (z, opt_state), {
          'loss': total / count,
          'finite': finite,
          'stage_grad_norm': norms,
          'w_grad_abs_mean': abs_mean,
          'w_grad_abs_std': abs_std,
      }

    (z, _), log = jax.lax.scan(step, (z0, tx.init(z0)), jax.random.split(key, settings.steps))
    return z, log

  return attack


# ---------------------------------------------------------------------------- the job


def validate_config(config: ml_collections.ConfigDict):
  """Fails early, naming the field, before anything is loaded."""
  check = functools.partial(config_checks.check_field, error=ppa.AttackError)
  a = config.attack
  ppa.check_target_workdir(config)
  gan_dir = os.path.expanduser(config.generator.dir)
  check(
      bool(config.generator.dir) and os.path.isfile(os.path.join(gan_dir, gan_io.META_FILE)),
      'generator.dir',
      config.generator.dir,
      f'not a GAN directory (no {gan_io.META_FILE}; the plgmi_gan job writes one)',
  )
  config_checks.check_positive_ints(
      config, [f'attack.{f}' for f in ('steps', 'batch_size', 'restarts', 'keep', 'views')], error=ppa.AttackError
  )
  for field in ('target.checkpoint', 'evaluation.checkpoint'):
    config_checks.check_checkpoint_choice(config, field, ppa.AttackError)
  check(a.lr > 0, 'attack.lr', a.lr, 'expected > 0')
  check(a.num_classes >= 0, 'attack.num_classes', a.num_classes, 'expected >= 0 (0 = every class)')
  check(a.keep <= a.restarts, 'attack.keep', a.keep, f'expected <= attack.restarts ({a.restarts})')
  check(0 <= a.jitter_p <= 1, 'attack.jitter_p', a.jitter_p, 'expected a probability')


def attack_plgmi(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """PLG-MI, resumable per batch of identities and restart."""
  a = config.attack
  settings = Settings(steps=a.steps, lr=a.lr, betas=tuple(a.betas), views=a.views, jitter_p=a.jitter_p)
  model, target_vars, saved, target_step, target_metrics = ppa.load_classifier(
      config.target.workdir, config.target.checkpoint, 'target'
  )
  gan_config, kind, g_vars, _ = gan_io.load_gan(config.generator.dir)
  if kind != plgmi.KIND:
    raise ppa.AttackError(
        f'config.generator.dir={config.generator.dir!r} holds a {kind!r} GAN; PLG-MI needs its conditional GAN '
        '(the plgmi_gan job)'
    )
  size, num_classes = saved['data']['image_size'], saved['model']['num_classes']
  if gan_config.num_classes != num_classes:
    raise ppa.AttackError(
        f'config.generator.dir={config.generator.dir!r} was trained for {gan_config.num_classes} classes; the '
        f'target in config.target.workdir has {num_classes}: PLG-MI trains its GAN for the target it attacks'
    )
  classes = gmi.attack_classes(a, num_classes)

  G = conditional.ConditionalGenerator(gan_config)
  generate = lambda z, y: G.apply(g_vars, z, y)
  classify = lambda images, perturbations=None: gmi.logits_and_features(
      model, target_vars, gmi.to_classifier(images, size, a.antialias), perturbations
  )[0]
  evaluator = gmi._make_evaluator(config, a.antialias)  # pylint: disable=protected-access
  mesh = sharding.make_mesh(config.num_devices)
  if a.batch_size % mesh.devices.size:
    raise ppa.AttackError(f'config.attack.batch_size={a.batch_size} does not split over {mesh.devices.size} devices')
  ppa._check_same_attack(workdir, config, a.batch_size)  # pylint: disable=protected-access
  perturbations_like = ppa.perturbation_zeros(model, target_vars, size, gan_config.img_channels)
  run_attack = jax.jit(make_attack_fn(generate, classify, settings, perturbations_like))
  put = lambda x: jax.device_put(x, sharding.data_sharded(mesh))

  # ---- optimisation: per batch of identities and restart, optimized/batch_<i>.npz
  batches = [classes[i : i + a.batch_size] for i in range(0, len(classes), a.batch_size)]
  units = [(b, r) for b in range(len(batches)) for r in range(a.restarts)]
  progress = reporting.Progress(len(units), a.batch_size * a.steps, name='plgmi')
  logs, latents, latent_classes = [], [], []
  for unit, (b, restart) in enumerate(units):
    path = attack_outputs.batch_path(workdir, unit)
    if not os.path.exists(path):
      _optimize_unit(config, run_attack, put, batches[b], gan_config.z_dim, unit, restart, path)
    with np.load(path) as f:
      record = {k: f[k] for k in f.files}
    latents.append(record['w'])
    latent_classes.append(record['classes'])
    logs.append({k: v.tolist() for k, v in record.items() if k not in ('w', 'classes')})
    progress.update(unit + 1, {'loss': logs[-1]['loss'][-1]})
  latents, latent_classes = np.concatenate(latents), np.concatenate(latent_classes)

  # ---- per class, the `keep` latents the target is most confident about (all restarts by default)
  render = lambda w: generate(*split_latents(w))
  confidence = lambda w, y: jnp.take_along_axis(jax.nn.softmax(classify(render(w))), y[:, None], axis=1)[:, 0]
  results = {
      'method': 'plgmi',
      'classes': len(classes),
      'latents_optimized': int(len(latents)),
      'batches': len(units),
      'final_per_class': int(a.keep),
      'target_step': int(target_step),
      'target_checkpoint': str(config.target.checkpoint),
      'target_metrics': {k: float(v) for k, v in target_metrics.items()},
      'final_loss_mean': float(np.mean([log['loss'][-1] for log in logs])),
  }
  return gmi.select_final_and_report(
      config, workdir, saved, results, classes, latents, latent_classes, jax.jit(confidence), jax.jit(render), evaluator
  )


def _optimize_unit(config, run_attack, put, batch_classes, z_dim, unit, restart, path):
  """One batch of identities from one restart: optimise, check, write optimized/batch_<unit>.npz."""
  a = config.attack
  n = len(batch_classes)
  targets = np.asarray(batch_classes + batch_classes[:1] * (a.batch_size - n), np.int32)  # padded rows repeat one
  valid = np.arange(a.batch_size) < n
  start_key, run_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), restart))
  z0 = jax.random.normal(start_key, (a.batch_size, z_dim))  # the same starts for every batch (the reference)
  z, log = run_attack(put(z0), put(targets), put(valid), jax.random.fold_in(run_key, unit))
  log = jax.device_get(log)
  norms = log.pop('stage_grad_norm')
  record = {
      **{k: np.asarray(v) for k, v in log.items()},
      **{f'{attack_outputs.GRAD_NORM_PREFIX}{k}': np.asarray(v) for k, v in norms.items()},
  }
  w = latents_with_class(np.asarray(z)[:n], targets[:n])
  if not np.all(log['finite']):
    failed = path.replace('.npz', '.failed.npz')
    reporting.save_npz(failed, w=w, classes=targets[:n], **record)
    raise reporting.NonFiniteError(
        f'non-finite loss or gradient in batch {unit} (classes {batch_classes[:5]}...) at step '
        f'{int(np.argmin(log["finite"]))}; the latents and the loss log are in {failed}. Finished batches are kept; '
        'lower config.attack.lr or check the target and the GAN, then relaunch to resume.'
    )
  reporting.save_npz(path, w=w, classes=targets[:n], **record)


run = attack_plgmi  # the `attack_plgmi` job (mi_jax/jobs.py)
