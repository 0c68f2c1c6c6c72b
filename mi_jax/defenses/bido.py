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

The inverse is computed with XLA operations only (`inverse`: Gauss-Jordan elimination), not
jnp.linalg.solve: on CPU that calls LAPACK in scipy's OpenBLAS, which picks its kernels by CPU model.
Measured: with OPENBLAS_CORETYPE=Sandybridge or Prescott (the kernels OpenBLAS runs on those CPUs) the
solve-based loss and its gradient change in their last bits, and over thousands of steps that made the
BiDO rows of the study differ between machines while every other row reproduced exactly.
"""

import jax
import jax.numpy as jnp
import ml_collections

from mi_jax import config_checks, models
from mi_jax.models import layers
from mi_jax.train import steps

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
  x = jnp.asarray(x).reshape(x.shape[0], -1).astype(jnp.float32)
  sq = jnp.sum(x * x, axis=1)
  distances = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
  return jnp.exp(-distances / (2.0 * sigma**2 * x.shape[1]))


def linear_kernel(x):
  x = jnp.asarray(x).reshape(x.shape[0], -1).astype(jnp.float32)
  return x @ x.T


def centred(kernel):
  """K H with H = I - 11^T/m: subtracts each row's mean."""
  return kernel - jnp.mean(kernel, axis=1, keepdims=True)


@jax.custom_vjp
def inverse(matrix):
  """[..., m, m] -> the inverse by Gauss-Jordan elimination with partial pivoting, in XLA operations only.

  Machine-independent where LAPACK is not (see the module docstring); its gradient is the closed form
  d(A^-1) = -A^-1 dA A^-1, so nothing is differentiated through the elimination loop.
  """
  return _gauss_jordan(matrix)


def _gauss_jordan(matrix):
  m = matrix.shape[-1]
  assert matrix.shape[-2:] == (m, m), matrix.shape
  rows = jnp.arange(m)

  def eliminate(j, augmented):  # [..., m, 2m]: column j becomes the unit vector e_j
    is_j = (rows == j)[:, None]
    candidates = jnp.where(rows >= j, jnp.abs(augmented[..., :, j]), -1.0)
    is_pivot = (rows == jnp.argmax(candidates, axis=-1)[..., None])[..., :, None]  # partial pivoting
    pick = lambda mask: jnp.sum(jnp.where(mask, augmented, 0.0), axis=-2, keepdims=True)  # one row, exactly
    row_j, row_pivot = pick(is_j), pick(is_pivot)
    swapped = jnp.where(is_j, row_pivot, jnp.where(is_pivot, row_j, augmented))
    pivot_row = row_pivot / row_pivot[..., 0, j][..., None, None]
    factors = jnp.where(is_j, 0.0, swapped[..., :, j][..., None])
    return jnp.where(is_j, pivot_row, swapped - factors * pivot_row)

  identity = jnp.broadcast_to(jnp.eye(m, dtype=matrix.dtype), matrix.shape)
  augmented = jax.lax.fori_loop(0, m, eliminate, jnp.concatenate([matrix, identity], axis=-1))
  return augmented[..., m:]


def _inverse_forward(matrix):
  inverted = _gauss_jordan(matrix)
  return inverted, inverted


def _inverse_backward(inverted, cotangent):
  transposed = jnp.swapaxes(inverted, -1, -2)
  return (-transposed @ cotangent @ transposed,)


inverse.defvjp(_inverse_forward, _inverse_backward)


def resolvents(kernels, epsilon: float = EPSILON):
  """[n, m, m] kernels -> [n, m, m] R = K_c (K_c + eps m I)^-1 of each centred kernel K_c.

  K_c commutes with K_c + eps m I, so R = I - eps m (K_c + eps m I)^-1: one inverse per kernel, all in one
  batched elimination."""
  m = kernels.shape[-1]
  regulariser = epsilon * m * jnp.eye(m, dtype=kernels.dtype)
  return jnp.eye(m, dtype=kernels.dtype) - epsilon * m * inverse(centred(kernels) + regulariser)


def normalized_hsic(kernel_a, kernel_b, epsilon: float = EPSILON):
  """tr(R_a R_b), R = K_c (K_c + eps m I)^-1 of each centred kernel; about the shared rank when dependent."""
  r_a, r_b = resolvents(jnp.stack([kernel_a, kernel_b]), epsilon)
  return hsic_of_resolvents(r_a, r_b)


def hsic_of_resolvents(r_a, r_b):
  """tr(R_a R_b) from two resolvents (`resolvents`)."""
  return jnp.sum(r_a * jnp.swapaxes(r_b, -1, -2), axis=(-2, -1))


def make_regularizer(bido_config: ml_collections.ConfigDict, num_classes: int) -> steps.Regularizer:
  """steps.train_step's regularizer of the hidden features the model records."""
  a1, a2, sigma = bido_config.a1, bido_config.a2, bido_config.sigma
  label_kernel = {'linear': linear_kernel, 'gaussian': lambda y: gaussian_kernel(y, sigma)}[bido_config.label_kernel]

  def regularizer(images, labels, hidden_collection):
    hidden = hidden_collection.get(layers.HIDDEN_NAME)
    if not hidden:
      raise ValueError(
          'BiDO needs hidden features, but the model records none (layers.sow_hidden); '
          'ResNets and DenseNets record them'
      )
    # Every kernel's resolvent in one batched inverse: X, Y, then each hidden feature.
    kernels = [gaussian_kernel(images, sigma), label_kernel(jax.nn.one_hot(labels, num_classes))]
    kernels += [gaussian_kernel(z, sigma) for z in hidden]
    r_x, r_y, *r_z = resolvents(jnp.stack(kernels))
    hsic_xz = sum(hsic_of_resolvents(r_x, r) for r in r_z)
    hsic_yz = sum(hsic_of_resolvents(r, r_y) for r in r_z)
    return a1 * hsic_xz - a2 * hsic_yz, {'hsic_xz': hsic_xz, 'hsic_yz': hsic_yz}

  return steps.Regularizer(layers.HIDDEN_COLLECTION, regularizer)


def is_enabled(bido_config: ml_collections.ConfigDict) -> bool:
  return bool(bido_config.a1 or bido_config.a2)
