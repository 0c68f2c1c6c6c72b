"""BiDO: bilateral dependency optimisation (Peng et al., KDD 2022), the HSIC variant.

The classifier's loss gains, for every hidden feature Z_j the model records
(ResNet: the stem output, every block output and the pooled feature; DenseNet:
the stem, every dense block (after its transition) and the pooled feature),

    a1 * nHSIC(X, Z_j)  -  a2 * nHSIC(Z_j, Y)

so the features keep little about the input X (what an inversion recovers) and
much about the label Y. As in the official code (Defend_MI/BiDO/hsic.py):
a Gaussian kernel exp(-|a - b|^2 / (2 sigma^2 dim)) on flattened inputs and
features, a linear kernel on one-hot labels, centring K -> K H, and the
normalised HSIC tr(R_a R_b) with R = K (K + eps m I)^-1, eps = 1e-5.
The kernels run over the global batch, as in the official code (DataParallel gathers every
GPU's hidden features onto one device before the loss).
"""

import jax
import jax.numpy as jnp
import ml_collections

from mi_jax import config_checks, models
from mi_jax.models import layers

EPSILON = 1e-5


def validate_config(config: ml_collections.ConfigDict):
  """config.bido of a classifier config: weights, kernel, and a model that records hidden features."""
  check, b = config_checks.check_field, config.bido
  check(b.a1 >= 0 and b.a2 >= 0, 'bido', (b.a1, b.a2), 'expected weights a1, a2 >= 0')
  check(b.sigma > 0, 'bido.sigma', b.sigma, 'expected > 0')
  check(
      b.label_kernel in ('linear', 'gaussian'), 'bido.label_kernel', b.label_kernel, "expected 'linear' or 'gaussian'"
  )
  if is_enabled(b):
    check(
        models.family_of(config.model.name).records_hidden,
        'model.name',
        config.model.name,
        'BiDO regularises the hidden features a model records (layers.sow_hidden); this family records none',
    )


def gaussian_kernel(x, sigma: float):
  """[m, ...] -> [m, m]: exp(-|x_a - x_b|^2 / (2 sigma^2 d)), d = the flattened feature size."""
  x = x.reshape(x.shape[0], -1).astype(jnp.float32)
  sq = jnp.sum(x * x, axis=1)
  distances = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
  return jnp.exp(-distances / (2.0 * sigma**2 * x.shape[1]))


def linear_kernel(x):
  x = x.reshape(x.shape[0], -1).astype(jnp.float32)
  return x @ x.T


def centred(kernel):
  """K H with H = I - 11^T/m: subtracts each row's mean."""
  return kernel - jnp.mean(kernel, axis=1, keepdims=True)


def normalized_hsic(kernel_a, kernel_b, epsilon: float = EPSILON):
  """tr(R_a R_b), R = K_c (K_c + eps m I)^-1 of each centred kernel; about the shared rank when dependent."""
  m = kernel_a.shape[0]
  regulariser = epsilon * m * jnp.eye(m, dtype=kernel_a.dtype)

  def resolvent(kernel):
    k = centred(kernel)
    # R = K (K + eps m I)^-1, i.e. R^T = solve((K + eps m I)^T, K^T).
    return jnp.linalg.solve((k + regulariser).T, k.T).T

  return jnp.sum(resolvent(kernel_a) * resolvent(kernel_b).T)


def make_regularizer(bido_config: ml_collections.ConfigDict, num_classes: int):
  """Returns regularizer(images, labels, hidden_collection) -> (loss, metrics) for steps.train_step."""
  a1, a2, sigma = bido_config.a1, bido_config.a2, bido_config.sigma
  label_kernel = {'linear': linear_kernel, 'gaussian': lambda y: gaussian_kernel(y, sigma)}[bido_config.label_kernel]

  def regularizer(images, labels, hidden_collection):
    hidden = hidden_collection.get(layers.HIDDEN_NAME)
    if not hidden:
      raise ValueError(
          'BiDO needs hidden features, but the model records none (layers.sow_hidden); '
          'ResNets and DenseNets record them'
      )
    kernel_x = gaussian_kernel(images, sigma)
    kernel_y = label_kernel(jax.nn.one_hot(labels, num_classes))
    hsic_xz = hsic_yz = 0.0
    for z in hidden:
      kernel_z = gaussian_kernel(z, sigma)
      hsic_xz += normalized_hsic(kernel_x, kernel_z)
      hsic_yz += normalized_hsic(kernel_z, kernel_y)
    return a1 * hsic_xz - a2 * hsic_yz, {'hsic_xz': hsic_xz, 'hsic_yz': hsic_yz}

  return regularizer


def is_enabled(bido_config: ml_collections.ConfigDict) -> bool:
  return bool(bido_config.a1 or bido_config.a2)
