"""The objectives of the low-resolution GANs and of the attacks' priors, as the reference code computes them.

GMI trains a WGAN-GP (Gulrajani et al.): the critic maximises D(real) - D(fake) with a gradient penalty,
and the generator maximises D(fake). KEDMI's inversion-specific GAN has a discriminator with one logit
per private class l(x); its "real" probability is sigmoid(LSE(l(x))) (LSE: logsumexp over classes,
Salimans et al.'s K+1-class trick), it learns the target's soft labels on public images, and the
generator matches the discriminator's mean features and lowers the entropy of its class predictions.
"""

import jax
import jax.numpy as jnp


def gradient_penalty(critic, real: jax.Array, fake: jax.Array, alpha: jax.Array) -> jax.Array:
  """mean over the batch of (|grad critic(x_hat)|_2 - 1)^2, x_hat = real + alpha (fake - real).

  `critic` maps images [B, H, W, C] to scores [B], each score depending on its own image only (the
  WGAN critic's instance norm keeps it so); `alpha` [B] ~ U(0, 1), one per sample.
  """
  x_hat = real + alpha[:, None, None, None] * (fake - real)
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(x_hat)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads), axis=(1, 2, 3)))
  return jnp.mean(jnp.square(norms - 1.0))


def wgan_critic_loss(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
  """The critic's Wasserstein loss: -(mean D(real) - mean D(fake)); add gp_weight * gradient_penalty."""
  return jnp.mean(fake_scores) - jnp.mean(real_scores)


def wgan_generator_loss(fake_scores: jax.Array) -> jax.Array:
  """-mean D(G(z)): also GMI's prior loss in the attack."""
  return -jnp.mean(fake_scores)


def real_loss(logits: jax.Array) -> jax.Array:
  """-log sigmoid(LSE(l(x))) per sample: KEDMI's "this is real" loss (its attack prior).

  The reference writes softplus(LSE) - LSE; softplus(-LSE) is the same number without the cancellation
  (in float32 the difference loses digits once the discriminator is confident).
  """
  return jax.nn.softplus(-jax.nn.logsumexp(logits, axis=-1))


def fake_loss(logits: jax.Array) -> jax.Array:
  """-log(1 - sigmoid(LSE(l(x)))) = softplus(LSE) per sample."""
  return jax.nn.softplus(jax.nn.logsumexp(logits, axis=-1))


def soft_cross_entropy(logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """-sum_c softmax(teacher)_c log_softmax(logits)_c, averaged over the batch (temperature 1)."""
  return -jnp.mean(jnp.sum(jax.nn.softmax(teacher_logits) * jax.nn.log_softmax(logits), axis=-1))


def kedmi_discriminator_loss(
    labelled_logits: jax.Array,  # l(x) of public images the target labelled
    teacher_logits: jax.Array,  # the target's logits of those images (its soft labels)
    real_logits: jax.Array,  # l(x) of another batch of public images
    fake_logits: jax.Array,  # l(G(z))
) -> jax.Array:
  """Soft-label cross-entropy + 0.5 (mean real loss + mean fake loss)."""
  unlabelled = 0.5 * (jnp.mean(real_loss(real_logits)) + jnp.mean(fake_loss(fake_logits)))
  return soft_cross_entropy(labelled_logits, teacher_logits) + unlabelled


def entropy(logits: jax.Array) -> jax.Array:
  """-sum_c p_c log p_c of softmax(logits), per sample."""
  return -jnp.sum(jax.nn.softmax(logits) * jax.nn.log_softmax(logits), axis=-1)


def kedmi_generator_loss(
    fake_features: jax.Array,  # the discriminator's features of G(z) [B, F]
    real_features: jax.Array,  # ... of a batch of public images [B', F]
    fake_logits: jax.Array,  # l(G(z))
    entropy_weight: float,  # KEDMI: 1e-4
) -> jax.Array:
  """Feature matching (mean |mean_batch f(fake) - mean_batch f(real)|) + entropy_weight * entropy.

  The entropy is summed over the batch, not averaged, as KEDMI's HLoss does: its weight is per sample.
  """
  matching = jnp.mean(jnp.abs(jnp.mean(fake_features, axis=0) - jnp.mean(real_features, axis=0)))
  return matching + entropy_weight * jnp.sum(entropy(fake_logits))
