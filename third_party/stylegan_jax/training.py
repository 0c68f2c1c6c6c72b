"""StyleGAN2 training as small pure functions: losses, R1, style mixing, EMA, one jitted step.

The recipe is StyleGAN2-ADA's without ADA and without path-length regularisation:
non-saturating logistic loss, lazy R1 on reals every `r1_interval` D steps, style
mixing, and an exponential moving average of G (G_ema) with a ramp-up.
"""

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import optax

from . import networks


@dataclasses.dataclass(frozen=True)
class GanHyperparams:
  g_lr: float = 0.0025  # Adam learning rate of G.
  d_lr: float = 0.0025  # Adam learning rate of D.
  betas: tuple[float, float] = (0.0, 0.99)  # Adam betas of both.
  r1_gamma: float = 10.0  # R1 weight (gamma / 2 * |grad D(real)|^2).
  r1_interval: int = 16  # Lazy R1: every this many D steps, scaled by the interval.
  style_mixing: float = 0.9  # Probability of mixing two ws at a random layer.
  ema_kimg: float = 10.0  # G_ema half-life in thousands of images.
  ema_rampup: float | None = 0.05  # Half-life <= rampup * images seen so far; None = no ramp-up.


@flax.struct.dataclass
class GanState:
  step: jax.Array
  g_params: dict
  g_buffers: dict  # w_avg (tracked while training) and noise_const.
  d_params: dict
  g_opt_state: optax.OptState
  d_opt_state: optax.OptState
  ema_params: dict  # G_ema: what samples, checkpoints and the attack use.
  ema_buffers: dict
  rng: jax.Array

  def ema_variables(self) -> dict:
    return {'params': self.ema_params, 'buffers': self.ema_buffers}


def make_optimizers(hp: GanHyperparams) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  b1, b2 = hp.betas
  return (optax.adam(hp.g_lr, b1=b1, b2=b2, eps=1e-8), optax.adam(hp.d_lr, b1=b1, b2=b2, eps=1e-8))


def create_state(G: networks.Generator, D: networks.Discriminator, hp: GanHyperparams, seed: int) -> GanState:
  cfg = G.config
  init_rng, d_rng, rng = jax.random.split(jax.random.key(seed), 3)
  z = jnp.zeros((1, cfg.z_dim))
  g_vars = jax.jit(G.init)(init_rng, z)
  d_params = jax.jit(D.init)(d_rng, jnp.zeros((1, cfg.img_resolution, cfg.img_resolution, cfg.img_channels)))
  g_tx, d_tx = make_optimizers(hp)
  return GanState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_vars['params'],
      g_buffers=g_vars['buffers'],
      d_params=d_params['params'],
      g_opt_state=g_tx.init(g_vars['params']),
      d_opt_state=d_tx.init(d_params['params']),
      ema_params=jax.tree.map(jnp.copy, g_vars['params']),  # own buffers: the state is donated
      ema_buffers=jax.tree.map(jnp.copy, g_vars['buffers']),
      rng=rng,
  )


def sample_ws(
    G: networks.Generator, variables: dict, rng: jax.Array, batch: int, style_mixing: float, update_w_avg: bool
) -> tuple[jax.Array, dict]:
  """ws for `batch` random z; with probability `style_mixing` the layers from a random cutoff on use a second z."""
  z_rng, z2_rng, cut_rng, mix_rng = jax.random.split(rng, 4)
  num_ws = G.config.num_ws
  mutable = ['buffers'] if update_w_avg else []
  ws, updates = G.apply(
      variables,
      jax.random.normal(z_rng, (batch, G.config.z_dim)),
      update_w_avg=update_w_avg,
      method=G.map,
      mutable=mutable,
  )
  if style_mixing > 0:
    ws2, _ = G.apply(variables, jax.random.normal(z2_rng, (batch, G.config.z_dim)), method=G.map, mutable=[])
    cutoff = jax.random.randint(cut_rng, (), 1, num_ws)
    cutoff = jnp.where(jax.random.uniform(mix_rng) < style_mixing, cutoff, num_ws)
    ws = jnp.where(jnp.arange(num_ws)[None, :, None] < cutoff, ws, ws2)
  return ws, updates.get('buffers')


def r1_penalty(D: networks.Discriminator, d_params: dict, real: jax.Array) -> jax.Array:
  """Per-sample squared norm of the gradient of D's logit with respect to the real image."""
  grads = jax.grad(lambda x: jnp.sum(D.apply({'params': d_params}, x)))(real)
  return jnp.sum(jnp.square(grads), axis=(1, 2, 3))


def ema_beta(hp: GanHyperparams, images_seen: jax.Array, batch: int) -> jax.Array:
  ema_nimg = hp.ema_kimg * 1000.0
  if hp.ema_rampup is not None:
    ema_nimg = jnp.minimum(ema_nimg, images_seen * hp.ema_rampup)
  return 0.5 ** (batch / jnp.maximum(ema_nimg, 1e-8))


def train_step(
    state: GanState,
    real: jax.Array,
    *,
    G: networks.Generator,
    D: networks.Discriminator,
    hp: GanHyperparams,
    with_r1: bool
) -> tuple[GanState, dict]:
  """One G update, one D update (with R1 if `with_r1`), then the EMA. `real`: [N, R, R, C] in [-1, 1]."""
  batch = real.shape[0]
  g_tx, d_tx = make_optimizers(hp)
  rng, g_rng, g_noise, d_rng, d_noise = jax.random.split(jax.random.fold_in(state.rng, state.step), 5)

  # ---- G: non-saturating loss softplus(-D(G(z))).
  def g_loss_fn(g_params):
    variables = {'params': g_params, 'buffers': state.g_buffers}
    ws, buffers = sample_ws(G, variables, g_rng, batch, hp.style_mixing, update_w_avg=True)
    fake = G.apply(variables, ws, noise_mode='random', method=G.synthesize, rngs={'noise': g_noise})
    logits = D.apply({'params': state.d_params}, fake)
    return jnp.mean(jax.nn.softplus(-logits)), buffers

  (g_loss, g_buffers), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g_params)
  g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)

  # ---- D: softplus(D(fake)) + softplus(-D(real)) [+ lazy R1].
  variables = {'params': g_params, 'buffers': g_buffers}
  ws, _ = sample_ws(G, variables, d_rng, batch, hp.style_mixing, update_w_avg=False)
  fake = jax.lax.stop_gradient(
      G.apply(variables, ws, noise_mode='random', method=G.synthesize, rngs={'noise': d_noise})
  )

  def d_loss_fn(d_params):
    fake_logits = D.apply({'params': d_params}, fake)
    real_logits = D.apply({'params': d_params}, real)
    loss = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
    r1 = jnp.zeros(())
    if with_r1:
      r1 = jnp.mean(r1_penalty(D, d_params, real))
      loss = loss + r1 * (hp.r1_gamma / 2) * hp.r1_interval
    return loss, {'d_real': jnp.mean(real_logits), 'd_fake': jnp.mean(fake_logits), 'r1': r1}

  (d_loss, d_metrics), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params)
  d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state, state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)

  # ---- G_ema.
  beta = ema_beta(hp, (state.step + 1) * batch, batch)
  ema_params = jax.tree.map(lambda e, p: p + beta * (e - p), state.ema_params, g_params)

  new_state = state.replace(
      step=state.step + 1,
      g_params=g_params,
      g_buffers=g_buffers,
      d_params=d_params,
      g_opt_state=g_opt_state,
      d_opt_state=d_opt_state,
      ema_params=ema_params,
      ema_buffers=g_buffers,
      rng=rng,
  )
  # 'r1' is 0 on steps without R1 (one metrics structure for both compiled steps).
  return new_state, {'loss_g': g_loss, 'loss_d': d_loss, 'ema_beta': beta, **d_metrics}


def compile_train_steps(G, D, hp: GanHyperparams, state_sharding=None, batch_sharding=None):
  """(step without R1, step with R1), jitted once each; the state is donated."""

  def jit(with_r1):
    fn = functools.partial(train_step, G=G, D=D, hp=hp, with_r1=with_r1)
    return jax.jit(
        fn,
        in_shardings=(state_sharding, batch_sharding) if state_sharding is not None else None,
        out_shardings=(state_sharding, None) if state_sharding is not None else None,
        donate_argnums=0,
    )

  return jit(False), jit(True)
