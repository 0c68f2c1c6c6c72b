"""BiDO-HSIC: the kernels and normalised HSIC on inputs with known answers, and the regularised step."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import jax.test_util
import ml_collections
import numpy as np
import pytest

from configs import bido as bido_config, rolss_bido
from mi_jax import jobs, models
from mi_jax.defenses import bido
from mi_jax.models import layers
from mi_jax.train import optim, state as state_lib, steps


def _one_hot_labels(num_classes=4, per_class=10):
  labels = np.repeat(np.arange(num_classes), per_class)
  return labels, np.eye(num_classes)[labels]


def test_gaussian_kernel_matches_pairwise_definition():
  x = np.random.RandomState(0).randn(7, 3, 2, 2)
  flat = x.reshape(7, -1)
  want = np.array([[np.exp(-np.sum((a - b) ** 2) / (2 * 5.0**2 * 12)) for b in flat] for a in flat])
  np.testing.assert_allclose(bido.gaussian_kernel(jnp.asarray(x), 5.0), want, rtol=1e-5, atol=1e-6)


def test_nhsic_of_labels_with_themselves_is_the_class_count_minus_one():
  # Centred one-hot labels span C - 1 dimensions; R is (almost) the projector onto them.
  _, one_hot = _one_hot_labels(num_classes=4)
  kernel = bido.linear_kernel(jnp.asarray(one_hot))
  assert float(bido.normalized_hsic(kernel, kernel)) == pytest.approx(3.0, abs=1e-3)


def test_nhsic_of_features_orthogonal_to_the_labels_is_zero():
  # Features with zero mean inside every class carry no label information: their span is
  # orthogonal to the centred class indicators, so tr(R_z R_y) = 0.
  labels, one_hot = _one_hot_labels(num_classes=4)
  features = np.random.RandomState(1).randn(len(labels), 3)
  for c in range(4):
    features[labels == c] -= features[labels == c].mean(0)
  kernel_y = bido.linear_kernel(jnp.asarray(one_hot))
  kernel_z = bido.linear_kernel(jnp.asarray(features))
  assert float(bido.normalized_hsic(kernel_z, kernel_y)) == pytest.approx(0.0, abs=1e-3)
  # ... while the class means themselves carry all of it.
  means = np.random.RandomState(2).randn(4, 3)[labels]
  assert float(bido.normalized_hsic(bido.linear_kernel(jnp.asarray(means)), kernel_y)) == pytest.approx(3.0, abs=1e-2)


def test_nhsic_is_symmetric_and_invariant_to_a_joint_permutation():
  rng = np.random.RandomState(3)
  a, b = rng.randn(12, 5), rng.randn(12, 5) + rng.randn(12, 1)
  ka, kb = bido.gaussian_kernel(jnp.asarray(a), 1.0), bido.gaussian_kernel(jnp.asarray(b), 1.0)
  order = rng.permutation(12)
  value = float(bido.normalized_hsic(ka, kb))
  assert float(bido.normalized_hsic(kb, ka)) == pytest.approx(value, rel=1e-4)
  assert float(bido.normalized_hsic(ka[order][:, order], kb[order][:, order])) == pytest.approx(value, rel=1e-4)


def test_inverse_by_elimination_matches_numpy_and_its_gradient_the_closed_form():
  rng = np.random.default_rng(0)
  batch = rng.normal(size=(3, 12, 12)).astype(np.float32) + 3 * np.eye(12, dtype=np.float32)
  np.testing.assert_allclose(bido.inverse(batch), np.linalg.inv(batch), atol=1e-5, rtol=1e-4)
  swap = np.array([[0.0, 2.0], [1.0, 0.0]], np.float32)  # a zero pivot: only row exchanges get through
  np.testing.assert_allclose(bido.inverse(swap), [[0.0, 1.0], [0.5, 0.0]])
  jax.test_util.check_grads(bido.inverse, (batch[0],), order=1, modes=['rev'], atol=2e-2, rtol=2e-2)


def test_nhsic_equals_the_solve_definition_in_float64():
  """R = K_c (K_c + eps m I)^-1 through the elimination, against LAPACK's solve in float64, where the
  (ill-conditioned, cond ~ 1e5) systems leave no doubt about the digits."""
  rng = np.random.default_rng(1)
  x, z = rng.normal(size=(32, 40)), rng.normal(size=(32, 8))
  z[:, :4] += x[:, :4]
  with jax.enable_x64(True):
    ka, kb = bido.gaussian_kernel(jnp.asarray(x), 1.0).astype(jnp.float64), bido.linear_kernel(jnp.asarray(z))
    ka, kb = jnp.asarray(ka, jnp.float64), jnp.asarray(kb, jnp.float64)
    m = 32
    a = lambda k: bido.centred(k) + bido.EPSILON * m * jnp.eye(m)
    want = jnp.sum(
        jnp.linalg.solve(a(ka).T, bido.centred(ka).T).T * jnp.linalg.solve(a(kb).T, bido.centred(kb).T)
    )  # tr(R_a R_b), R^T = solve(A^T, K_c^T)
    assert float(bido.normalized_hsic(ka, kb)) == pytest.approx(float(want), rel=1e-9)


def test_bido_loss_runs_no_lapack_and_gives_the_same_bits_whatever_openblas_does(tmp_path):
  """The machine-dependent step of BiDO was LAPACK (scipy's OpenBLAS picks kernels by CPU and thread count):
  the loss now lowers to plain XLA operations, and its value and gradient keep every bit when OpenBLAS is
  told to use the kernels of other CPUs (which change the bits of the LAPACK solve it used before)."""
  rng = np.random.default_rng(2)
  x, z = rng.normal(size=(16, 30)).astype(np.float32), rng.normal(size=(16, 6)).astype(np.float32)
  loss = lambda z: bido.normalized_hsic(bido.gaussian_kernel(x, 2.0), bido.gaussian_kernel(z, 2.0))
  assert 'custom_call' not in jax.jit(jax.value_and_grad(loss)).lower(z).as_text()
  np.save(tmp_path / 'x.npy', x)
  np.save(tmp_path / 'z.npy', z)
  script = (
      'import sys, jax, numpy as np\n'
      'from mi_jax.defenses import bido\n'
      f'x, z = (jax.numpy.asarray(np.load("{tmp_path}/" + n + ".npy")) for n in "xz")\n'
      'f = lambda z: bido.normalized_hsic(bido.gaussian_kernel(x, 2.0), bido.gaussian_kernel(z, 2.0))\n'
      'value, grad = jax.jit(jax.value_and_grad(f))(z)\n'
      'sys.stdout.write(np.asarray(value).tobytes().hex() + np.asarray(grad).tobytes().hex())\n'
  )
  outputs = set()
  for env in ({}, {'OPENBLAS_CORETYPE': 'Sandybridge'}, {'OPENBLAS_CORETYPE': 'Prescott'}):
    done = subprocess.run(
        [sys.executable, '-c', script], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    outputs.add(done.stdout)
  assert len(outputs) == 1


def _model_config(name, skip=(1, 1, 1, 1)):
  return ml_collections.ConfigDict(
      dict(name=name, num_classes=4, skip=skip, width=8, stem='small', dtype='float32', skip_mode='truncate')
  )


@pytest.mark.parametrize('name, count, last', [('resnet18', 1 + 8 + 1, 64), ('densenet121', 1 + 4 + 1, 128)])
def test_models_record_stem_stage_and_pooled_features(name, count, last):
  model = models.build_model(_model_config(name))
  images = jnp.ones((2, 16, 16, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images))
  _, recorded = jax.eval_shape(lambda v: model.apply(v, images, mutable=[layers.HIDDEN_COLLECTION]), variables)
  hidden = recorded[layers.HIDDEN_COLLECTION][layers.HIDDEN_NAME]
  assert len(hidden) == count
  assert hidden[0].shape == (2, 16, 16, 8) and hidden[-1].shape == (2, last)


def test_recording_hidden_features_leaves_the_logits_unchanged():
  model = models.build_model(_model_config('resnet18'))
  images = jnp.asarray(np.random.RandomState(0).randn(2, 16, 16, 1), jnp.float32)
  variables = models.init_variables(model, images.shape, jax.random.PRNGKey(0))
  apply = jax.jit(model.apply, static_argnames='mutable')
  logits, _ = apply(variables, images, mutable=(layers.HIDDEN_COLLECTION,))
  np.testing.assert_allclose(apply(variables, images), logits, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_regularised_step_adds_the_hsic_terms():
  config = bido_config.get_config()
  config.model = _model_config('resnet18')
  model = models.build_model(config.model)
  lr_fn = optim.create_learning_rate_fn(config.optim, steps_per_epoch=10)
  state = state_lib.create_train_state(model, optim.create_optimizer(config.optim, lr_fn), (1, 16, 16, 1), seed=0)
  rng = np.random.RandomState(0)
  batch = {'image': jnp.asarray(rng.randn(16, 16, 16, 1), jnp.float32), 'label': jnp.asarray(np.arange(16) % 4)}
  step = jax.jit(steps.train_step, static_argnums=(2, 3))
  _, metrics = step(state, batch, lr_fn, (bido.make_regularizer(config.bido, num_classes=4),))
  want = metrics['cross_entropy'] + 0.05 * metrics['hsic_xz'] - 0.5 * metrics['hsic_yz']
  assert float(metrics['loss']) == pytest.approx(float(want), rel=1e-5)
  assert 0 < float(metrics['hsic_yz']) <= 10 * 3 + 1e-3  # each of 10 features: at most rank C - 1 = 3


def test_bido_configs_and_validation():
  config = rolss_bido.get_config('demo')
  assert tuple(config.model.skip) == (1.0, 1.0, 1.0, 0.0) and (config.bido.a1, config.bido.a2) == (0.05, 0.5)
  jobs.validate_config(config)
  config.bido.sigma = 0.0
  with pytest.raises(ValueError, match='config.bido.sigma=0.0'):
    jobs.validate_config(config)
  config = bido_config.get_config('demo')
  config.model.name = 'mobilenet_v2'
  config.model.skip = (1,) * 7
  with pytest.raises(ValueError, match='config.model.name=.mobilenet_v2.*BiDO'):
    jobs.validate_config(config)
