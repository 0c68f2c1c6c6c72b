"""Training the low-resolution GANs as small pure functions: the state, one critic step, one generator step.

Both GMI and KEDMI take one critic step per batch and one generator step after every `n_critic`-th critic
step (the reference counts critic steps from 1), Adam(2e-4, betas (0.5, 0.999)) for both networks. The
generator runs in training mode throughout (its BatchNorm statistics move with every batch it makes).

  wgan_gp  GMI: critic loss D(fake) - D(real) + gp_weight * GP; generator loss -D(fake).
  kedmi    KEDMI: the discriminator learns the target's soft labels on public images and tells real
           from fake through the logsumexp of its class logits; the generator matches its mean features
           and lowers the entropy of its class predictions (mi_jax/gan64/losses.py).

Images are in [0, 1], the generator's range; `teacher` (KEDMI) maps such images to the target's logits.
"""

import dataclasses
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax

from mi_jax.gan64 import losses, networks

KINDS = ('wgan_gp', 'kedmi')


@dataclasses.dataclass(frozen=True)
class Hyperparams:
  kind: str = 'wgan_gp'  # 'wgan_gp' (GMI) or 'kedmi'
  lr: float = 2e-4  # Adam, both networks
  betas: tuple[float, float] = (0.5, 0.999)
  n_critic: int = 5  # critic steps per generator step
  gp_weight: float = 10.0  # wgan_gp: the gradient penalty's weight
  entropy_weight: float = 1e-4  # kedmi: the entropy term's weight (summed over the batch)


def make_critic(config: networks.GanConfig, kind: str):
  """GMI's WGAN critic or KEDMI's minibatch discriminator."""
  if kind not in KINDS:
    raise ValueError(f'GAN kind {kind!r}: expected one of {KINDS}')
  return networks.WGANCritic(config) if kind == 'wgan_gp' else networks.MinibatchCritic(config)


@flax.struct.dataclass
class GanState:
  step: jax.Array  # critic steps taken
  g_params: dict
  g_batch_stats: dict
  d_params: dict
  g_opt_state: optax.OptState
  d_opt_state: optax.OptState
  rng: jax.Array

  def generator_variables(self) -> dict:
    return {'params': self.g_params, 'batch_stats': self.g_batch_stats}


def optimizer(hp: Hyperparams) -> optax.GradientTransformation:
  return optax.adam(hp.lr, b1=hp.betas[0], b2=hp.betas[1], eps=1e-8)  # torch Adam's defaults otherwise


def create_state(config: networks.GanConfig, hp: Hyperparams, seed: int) -> GanState:
  g_rng, d_rng, rng = jax.random.split(jax.random.key(seed), 3)
  G, D = networks.Generator(config), make_critic(config, hp.kind)
  g_vars = jax.jit(G.init)(g_rng, jnp.zeros((2, config.z_dim)))
  d_vars = jax.jit(D.init)(d_rng, jnp.zeros((2, config.resolution, config.resolution, config.img_channels)))
  tx = optimizer(hp)
  return GanState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_vars['params'],
      g_batch_stats=g_vars['batch_stats'],
      d_params=d_vars['params'],
      g_opt_state=tx.init(g_vars['params']),
      d_opt_state=tx.init(d_vars['params']),
      rng=rng,
  )


def _generate(G, g_params, g_batch_stats, z):
  """G(z) in training mode: (images, updated BatchNorm statistics)."""
  images, updates = G.apply({'params': g_params, 'batch_stats': g_batch_stats}, z, train=True, mutable=['batch_stats'])
  return images, updates['batch_stats']


def critic_step(
    state: GanState,
    batch: dict,  # 'real' [B, R, R, C] in [0, 1]; kedmi: also 'labelled' (the soft-labelled batch)
    *,
    config: networks.GanConfig,
    hp: Hyperparams,
    teacher: Callable[[jax.Array], jax.Array] | None = None,  # kedmi: images in [0, 1] -> the target's logits
) -> tuple[GanState, dict]:
  """One critic update on a fresh batch of fakes."""
  G, D = networks.Generator(config), make_critic(config, hp.kind)
  real = batch['real']
  rng, z_rng, alpha_rng = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
  z = jax.random.normal(z_rng, (real.shape[0], config.z_dim))
  fake, g_batch_stats = _generate(G, state.g_params, state.g_batch_stats, z)
  fake = jax.lax.stop_gradient(fake)

  def loss_fn(d_params):
    apply = lambda x: D.apply({'params': d_params}, x)
    if hp.kind == 'wgan_gp':
      real_scores, fake_scores = apply(real), apply(fake)
      alpha = jax.random.uniform(alpha_rng, (real.shape[0],))
      gp = losses.gradient_penalty(apply, real, fake, alpha)
      wasserstein = losses.wgan_critic_loss(real_scores, fake_scores)
      return wasserstein + hp.gp_weight * gp, {
          'd_real': jnp.mean(real_scores),
          'd_fake': jnp.mean(fake_scores),
          'gp': gp,
      }
    labelled = batch['labelled']
    teacher_logits = jax.lax.stop_gradient(teacher(labelled))
    (_, labelled_logits), (_, real_logits), (_, fake_logits) = apply(labelled), apply(real), apply(fake)
    loss = losses.kedmi_discriminator_loss(labelled_logits, teacher_logits, real_logits, fake_logits)
    agreement = jnp.mean(jnp.argmax(labelled_logits, -1) == jnp.argmax(teacher_logits, -1))
    return loss, {
        'd_real': jnp.mean(-losses.real_loss(real_logits)),  # log D(real)
        'd_fake': jnp.mean(-losses.fake_loss(fake_logits)),  # log (1 - D(fake))
        'teacher_agreement': agreement,
    }

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
  updates, d_opt_state = optimizer(hp).update(grads, state.d_opt_state, state.d_params)
  new_state = state.replace(
      step=state.step + 1,
      d_params=optax.apply_updates(state.d_params, updates),
      d_opt_state=d_opt_state,
      g_batch_stats=g_batch_stats,
      rng=rng,
  )
  return new_state, {'loss_d': loss, **metrics}


def generator_step(
    state: GanState,
    batch: dict,  # 'real' (its size is the number of fakes); kedmi: 'real2', public images to match features with
    *,
    config: networks.GanConfig,
    hp: Hyperparams,
) -> tuple[GanState, dict]:
  """One generator update on fresh latents."""
  G, D = networks.Generator(config), make_critic(config, hp.kind)
  rng, z_rng = jax.random.split(state.rng)
  z = jax.random.normal(z_rng, (batch['real'].shape[0], config.z_dim))

  def loss_fn(g_params):
    fake, g_batch_stats = _generate(G, g_params, state.g_batch_stats, z)
    apply = lambda x: D.apply({'params': state.d_params}, x)
    if hp.kind == 'wgan_gp':
      return losses.wgan_generator_loss(apply(fake)), g_batch_stats
    fake_features, fake_logits = apply(fake)
    real_features, _ = apply(batch['real2'])
    return losses.kedmi_generator_loss(fake_features, real_features, fake_logits, hp.entropy_weight), g_batch_stats

  (loss, g_batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
  updates, g_opt_state = optimizer(hp).update(grads, state.g_opt_state, state.g_params)
  new_state = state.replace(
      g_params=optax.apply_updates(state.g_params, updates),
      g_batch_stats=g_batch_stats,
      g_opt_state=g_opt_state,
      rng=rng,
  )
  return new_state, {'loss_g': loss}
