"""MID: mutual-information regularisation through a variational information bottleneck (Wang et al., AAAI 2021).

The classifier ends in a k-dimensional stochastic bottleneck z ~ N(mu, std^2) (mi_jax/models/vib.py,
config.model.vib_dim = k) and its loss gains beta KL(N(mu, std^2) || N(0, I)), which bounds the mutual
information between input and z:

    loss = CE + beta * mean_batch sum_k -0.5 (1 + 2 log std - mu^2 - std^2)

as `Jiachen-T-Wang/mi-defense` (gmi/target/engine.py) computes it. k = half the width of the features the head
reads (the official `self.k = self.feat_dim // 2`). beta: 0.003 in MID's own VGG16 on CelebA
(gmi/target/train_vib.py); 0.01 in its update-leak experiments, in Defend_MI's comparison checkpoints
(0.003 / 0.01 / 0.02) and as the MI toolbox's default. No beta is published for the PPA protocol.
"""

import jax.numpy as jnp
import ml_collections

from mi_jax import config_checks
from mi_jax.models import vib
from mi_jax.train import steps


def default_config() -> ml_collections.ConfigDict:
  """config.mid of every classifier config: off (beta = 0; the bottleneck itself is config.model.vib_dim)."""
  config = ml_collections.ConfigDict()
  config.beta = 0.0  # Weight of the bottleneck's KL term; MID needs config.model.vib_dim > 0 as well.
  return config


def validate_config(config: ml_collections.ConfigDict):
  check = config_checks.check_field
  check(config.mid.beta >= 0, 'mid.beta', config.mid.beta, 'expected >= 0')
  check(
      not config.mid.beta or config.model.get('vib_dim', 0) > 0,
      'model.vib_dim',
      config.model.get('vib_dim', 0),
      'MID (mid.beta > 0) regularises the bottleneck of config.model.vib_dim: expected its width k > 0',
  )


def is_enabled(config: ml_collections.ConfigDict) -> bool:
  return bool(config.mid.beta)


def kl_to_standard_normal(mu, std):
  """[B, k] -> [B]: KL(N(mu, diag std^2) || N(0, I)), summed over the k dimensions."""
  return jnp.sum(-0.5 * (1.0 + 2.0 * jnp.log(std) - mu**2 - std**2), axis=-1)


def make_regularizer(beta: float) -> steps.Regularizer:
  """beta * the batch mean of the bottleneck's KL, from what VIBClassifier records in training."""

  def regularizer(images, labels, recorded):
    del images, labels
    if 'mu' not in recorded:
      raise ValueError('MID: the model records no bottleneck statistics; set config.model.vib_dim > 0')
    (mu,), (std,) = recorded['mu'], recorded['std']
    kl = jnp.mean(kl_to_standard_normal(mu.astype(jnp.float32), std.astype(jnp.float32)))
    return beta * kl, {'vib_kl': kl}

  return steps.Regularizer(vib.VIB_COLLECTION, regularizer)
