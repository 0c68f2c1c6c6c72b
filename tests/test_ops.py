"""The CPU fast path of convolution and max pooling against XLA's own ops: values, gradients, parameters."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mi_jax import models
from mi_jax.models import ops

NHWC = ('NHWC', 'HWIO', 'NHWC')

# (input size, channels in, channels out, kernel, stride, padding): the stage-4 shapes of a 64 px ImageNet-stem
# network, a strided 4x4 input, a 7x7 stem, non-square and asymmetric paddings, 'SAME' and 'VALID'.
GEOMETRIES = [
    ((2, 2), 16, 8, (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((4, 4), 8, 16, (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((4, 3), 5, 7, (3, 3), (1, 1), ((0, 2), (1, 0))),
    ((12, 12), 3, 8, (7, 7), (2, 2), ((3, 3), (3, 3))),
    ((9, 7), 4, 6, (5, 3), (2, 1), 'SAME'),
    ((6, 6), 4, 6, (3, 3), (1, 1), 'VALID'),
    ((3, 3), 6, 4, (1, 1), (2, 2), ((0, 0), (0, 0))),
]


def _xla_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)


@pytest.mark.parametrize('in_hw, cin, cout, window, strides, padding', GEOMETRIES)
def test_patches_conv_matches_xla_conv_in_value_and_gradients(in_hw, cin, cout, window, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, *in_hw, cin)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(*window, cin, cout)) / np.sqrt(np.prod(window) * cin), jnp.float32)
  with jax.default_matmul_precision('highest'):
    expected, expected_vjp = jax.vjp(lambda x, k: _xla_conv(x, k, strides, padding), x, kernel)
    got, got_vjp = jax.vjp(lambda x, k: ops.patches_conv(x, k, strides, padding), x, kernel)
    cotangent = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
    expected_grads, got_grads = expected_vjp(cotangent), got_vjp(cotangent)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
  for name, g, e in zip(('input', 'kernel'), got_grads, expected_grads):
    np.testing.assert_allclose(g, e, atol=1e-5, rtol=1e-5, err_msg=f'gradient of the {name}')


def _convolutions_in_conv_and_gradients(x, kernel) -> int:
  """XLA convolutions in the compiled forward and backward pass; traced anew, so `fast_cpu_path` applies."""
  dimension_numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, NHWC)
  conv = lambda x, k: ops.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dimension_numbers)
  forward_and_backward = jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1))
  return jax.jit(forward_and_backward).lower(x, kernel).compile().as_text().count('convolution(')


@pytest.mark.parametrize(
    'in_hw, channels, takes_patches',
    [((2, 2), 128, True), ((4, 4), 128, True), ((8, 8), 128, False), ((2, 2), 64, False)],
)
def test_small_maps_of_many_channels_take_the_patches_path_on_cpu_and_the_rest_keep_xla(in_hw, channels, takes_patches):
  x, kernel = jnp.ones((2, *in_hw, channels)), jnp.ones((3, 3, channels, channels))
  assert (_convolutions_in_conv_and_gradients(x, kernel) == 0) == takes_patches
  with ops.fast_cpu_path(False):
    assert _convolutions_in_conv_and_gradients(x, kernel) > 0


def test_conv_keeps_nn_conv_parameters_and_outputs(monkeypatch):
  monkeypatch.setattr(ops, 'MIN_CHANNEL_PRODUCT', 1)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 2, 2, 8)), jnp.float32)
  layer = dict(features=5, kernel_size=(3, 3), padding=((1, 1), (1, 1)), use_bias=True)
  params = nn.Conv(**layer).init(jax.random.key(0), x)
  fast_params = ops.Conv(**layer).init(jax.random.key(0), x)
  assert jax.tree.structure(params) == jax.tree.structure(fast_params)
  jax.tree.map(np.testing.assert_array_equal, params, fast_params)
  with jax.default_matmul_precision('highest'):
    np.testing.assert_allclose(ops.Conv(**layer).apply(params, x), nn.Conv(**layer).apply(params, x), atol=1e-5)


@pytest.mark.parametrize('ties', [False, True])
@pytest.mark.parametrize(
    'window, strides, padding',
    [((3, 3), (2, 2), ((1, 1), (1, 1))), ((2, 2), (2, 2), 'VALID'), ((3, 2), (1, 2), 'SAME')],
)
def test_max_pool_matches_flax_in_value_and_gradient(window, strides, padding, ties):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 9, 8, 3)), jnp.float32)
  if ties:  # after a ReLU most windows hold several equal zeros; quantised values tie too
    x = jnp.round(jax.nn.relu(x) * 2) / 2
  expected, expected_vjp = jax.vjp(lambda x: nn.max_pool(x, window, strides=strides, padding=padding), x)
  got, got_vjp = jax.vjp(lambda x: ops.max_pool(x, window, strides, padding), x)
  np.testing.assert_array_equal(got, expected)
  cotangent = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
  # each output's gradient lands on one input, the same one (the first maximum), so the sums agree to rounding
  np.testing.assert_allclose(got_vjp(cotangent)[0], expected_vjp(cotangent)[0], atol=1e-6)


def _resnet18(width):
  return models.build_model(
      ml_collections.ConfigDict(
          dict(name='resnet18', num_classes=5, skip=(1, 1, 1, 1), width=width, stem='imagenet', dtype='float32')
      )
  )


def test_a_resnet_at_64_px_trains_the_same_with_and_without_the_fast_path(monkeypatch):
  """Stage 4 runs on 2x2 maps here: the whole network's loss gradient agrees with XLA's convolutions."""
  monkeypatch.setattr(ops, 'MIN_CHANNEL_PRODUCT', 1)  # the narrow test network's small-map convs take the path too
  model = _resnet18(width=8)
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.normal(size=(4, 64, 64, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 5, 4))
  variables = model.init(jax.random.key(0), images[:1], train=False)

  def loss(params):
    logits, _ = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, images, train=True, mutable=['batch_stats']
    )
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

  with jax.default_matmul_precision('highest'):
    fast_loss, fast_grads = jax.jit(jax.value_and_grad(loss))(variables['params'])
    with ops.fast_cpu_path(False):
      xla_loss, xla_grads = jax.jit(jax.value_and_grad(loss))(variables['params'])
  np.testing.assert_allclose(fast_loss, xla_loss, rtol=1e-5)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(xla_grads))
  for path, fast, xla in zip(
      jax.tree_util.tree_leaves_with_path(fast_grads), jax.tree.leaves(fast_grads), jax.tree.leaves(xla_grads)
  ):
    np.testing.assert_allclose(fast, xla, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path[0]))
