"""Trap-MID building blocks: blend, labels, augmentation, trigger step, and a trapdoor learnt by a tiny model."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mi_jax.defenses import trapdoor

# One compilation for every augmentation test (the probabilities are traced; the shape is shared).
_augment = jax.jit(trapdoor.augment)
_IMAGES = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 6, 3), minval=-1, maxval=1)


def _ramp(height=8, width=8, channels=3):
  """[H, W, c] with pixel (r, c, k) = 10 r + c + 100 k: bilinear resampling of it is exact arithmetic."""
  rows, cols, channels = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels), indexing='ij')
  return jnp.asarray(10.0 * rows + cols + 100.0 * channels, jnp.float32)


def test_init_triggers_are_uniform_images_in_range():
  triggers = trapdoor.init_triggers(jax.random.PRNGKey(0), 5, (8, 8, 3))
  assert triggers.shape == (5, 8, 8, 3) and triggers.dtype == jnp.float32
  assert float(triggers.min()) >= -1.0 and float(triggers.max()) <= 1.0
  assert abs(float(triggers.mean())) < 0.1 and float(triggers.std()) > 0.5  # uniform: std 1 / sqrt(3)


def test_blend_picks_each_images_trap_trigger():
  images = jnp.stack([jnp.full((2, 2, 1), 1.0), jnp.full((2, 2, 1), -1.0)])
  triggers = jnp.stack([jnp.full((2, 2, 1), 0.5), jnp.full((2, 2, 1), -0.5), jnp.full((2, 2, 1), 0.0)])
  blended = trapdoor.blend(images, triggers, jnp.array([2, 1]), 0.25)
  # 0.25 * 0 + 0.75 * 1 and 0.25 * -0.5 + 0.75 * -1
  np.testing.assert_array_equal(blended[:, :, :, 0], np.array([np.full((2, 2), 0.75), np.full((2, 2), -0.875)]))


def test_blend_with_alpha_zero_is_the_identity_and_one_the_trigger():
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 6, 6, 3), minval=-1, maxval=1)
  triggers = trapdoor.init_triggers(jax.random.PRNGKey(1), 3, (6, 6, 3))
  labels = jnp.array([2, 0, 1, 2])
  np.testing.assert_array_equal(trapdoor.blend(images, triggers, labels, 0.0), images)
  np.testing.assert_array_equal(trapdoor.blend(images, triggers, labels, 1.0), triggers[labels])


def test_balanced_trap_labels_counts_differ_by_at_most_one():
  for seed, batch_size, num_classes in [(0, 10, 4), (1, 7, 3), (2, 5, 8), (3, 64, 1000)]:
    labels = trapdoor.balanced_trap_labels(jax.random.PRNGKey(seed), batch_size, num_classes)
    assert labels.shape == (batch_size,) and labels.dtype == jnp.int32
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    assert counts.max() - counts.min() <= 1 and counts.sum() == batch_size, counts


def test_balanced_trap_labels_is_a_permutation_when_classes_divide_the_batch():
  labels = jax.jit(trapdoor.balanced_trap_labels, static_argnums=(1, 2))(jax.random.PRNGKey(0), 12, 4)
  np.testing.assert_array_equal(np.sort(labels), np.sort(np.arange(12) % 4))
  assert not np.array_equal(labels, np.arange(12) % 4)  # shuffled


def test_balanced_trap_labels_with_fewer_images_than_classes_reach_every_class():
  # 2 images, 10 classes: over many batches every class is a trapdoor label, not only classes 0 and 1.
  draw = jax.vmap(lambda rng: trapdoor.balanced_trap_labels(rng, 2, 10))
  labels = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), 200)))
  assert np.all(labels[:, 0] != labels[:, 1])
  assert np.bincount(labels.ravel(), minlength=10).min() > 20  # 40 expected per class


def test_augment_with_every_probability_zero_is_the_identity():
  out = _augment(jax.random.PRNGKey(1), _IMAGES, crop_p=0.0, flip_p=0.0, rotation_p=0.0)
  np.testing.assert_array_equal(out, _IMAGES)


def test_augment_flip_alone_is_a_flip_of_the_width_axis():
  out = _augment(jax.random.PRNGKey(1), _IMAGES, crop_p=0.0, flip_p=1.0, rotation_p=0.0)
  np.testing.assert_array_equal(out, jnp.flip(_IMAGES, axis=2))


def test_rotation_by_multiples_of_90_degrees_is_rot90():
  image = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 3), minval=-1, maxval=1)
  for quarter_turns in range(4):
    rotated = jax.jit(trapdoor.rotate)(image, 90.0 * quarter_turns)
    want = jnp.rot90(image, quarter_turns, axes=(0, 1))
    np.testing.assert_allclose(rotated[1:-1, 1:-1], want[1:-1, 1:-1], atol=1e-5)


def test_rotation_pads_outside_with_black():
  rotated = trapdoor.rotate(jnp.full((8, 8, 3), 0.5), 45.0)
  np.testing.assert_array_equal(rotated[0, 0], np.full(3, trapdoor.PADDING))  # the corner reads outside
  np.testing.assert_allclose(rotated[3:5, 3:5], 0.5, atol=1e-6)


def test_resized_crop_of_the_whole_image_is_the_identity():
  image = jax.random.uniform(jax.random.PRNGKey(0), (8, 6, 3), minval=-1, maxval=1)
  np.testing.assert_allclose(jax.jit(trapdoor.resized_crop)(image, 0.0, 0.0, 8.0, 6.0), image, atol=1e-5)


def test_resized_crop_corners_are_the_boxs_corner_pixels():
  # Box of 3 x 3 pixels from (1, 2) on a 5 x 5 ramp: output (i, j) reads (1 + i / 2, 2 + j / 2).
  cropped = jax.jit(trapdoor.resized_crop)(_ramp(5, 5, 1), 1.0, 2.0, 3.0, 3.0)[:, :, 0]
  i, j = np.meshgrid(np.arange(5), np.arange(5), indexing='ij')
  np.testing.assert_allclose(cropped, 10.0 * (1 + i / 2) + (2 + j / 2), atol=1e-5)


def test_augment_crops_whole_batches_by_default():
  outcomes = set()
  for seed in range(12):
    out = _augment(jax.random.PRNGKey(seed), _IMAGES, crop_p=0.5, flip_p=0.0, rotation_p=0.0)
    unchanged = np.all(np.asarray(out) == np.asarray(_IMAGES), axis=(1, 2, 3))
    assert unchanged.all() or not unchanged.any(), unchanged  # one coin for the batch, as kornia's p_batch
    outcomes.add(bool(unchanged[0]))
  assert outcomes == {True, False}


def test_augment_is_differentiable_in_the_images():
  weights = jax.random.normal(jax.random.PRNGKey(1), _IMAGES.shape)

  def weighted_sum(x):
    return jnp.sum(weights * trapdoor.augment(jax.random.PRNGKey(2), x, crop_p=1.0, flip_p=0.5, rotation_p=1.0))

  grad = jax.jit(jax.grad(weighted_sum))(_IMAGES)
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0


def test_trigger_step_is_a_clipped_signed_step():
  triggers = jnp.array([0.5, 0.5, 0.5, -0.99, 0.99])
  grad = jnp.array([3.0, -0.1, 0.0, 2.0, -2.0])
  np.testing.assert_array_equal(
      trapdoor.trigger_step(triggers, grad, 0.25), jnp.array([0.25, 0.75, 0.5, -1.0, 1.0], jnp.float32)
  )


def test_published_values():
  assert (trapdoor.ALPHA, trapdoor.BETA) == (0.02, 0.2)
  assert trapdoor.TRIGGER_STEP == 2 * 1e-2  # 1e-2 of the [0, 1] range is 2e-2 of [-1, 1]


class _TinyClassifier(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, images):
    hidden = nn.relu(nn.Dense(64)(images.reshape(images.shape[0], -1)))
    return nn.Dense(self.num_classes)(hidden)


@functools.partial(jax.jit, static_argnames='steps')
def _train_tiny_classifier(images, labels, triggers, alpha, beta, steps=200):
  """(1 - beta) CE(f(x), y) + beta CE(f(blend(x, t, y_trap)), y_trap) with fresh trapdoor labels each step."""
  model = _TinyClassifier(triggers.shape[0])
  optimizer = optax.adam(1e-2)

  def loss_fn(params, trap_labels):
    clean = optax.softmax_cross_entropy_with_integer_labels(model.apply(params, images), labels).mean()
    triggered_images = trapdoor.blend(images, triggers, trap_labels, alpha)
    triggered = optax.softmax_cross_entropy_with_integer_labels(model.apply(params, triggered_images), trap_labels)
    return (1.0 - beta) * clean + beta * triggered.mean()

  def step(carry, rng):
    params, opt_state = carry
    trap_labels = trapdoor.balanced_trap_labels(rng, images.shape[0], triggers.shape[0])
    updates, opt_state = optimizer.update(jax.grad(loss_fn)(params, trap_labels), opt_state)
    return (optax.apply_updates(params, updates), opt_state), None

  params = model.init(jax.random.PRNGKey(0), images)
  rngs = jax.random.split(jax.random.PRNGKey(1), steps)
  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), rngs)
  return params


def test_trapdoor_trigger_steers_a_tiny_model_to_its_class():
  # alpha 0.3 instead of 0.02 so that 200 steps of a 192-64-4 MLP learn it: the trigger's share must stand
  # out of the image noise (at 0.2 the hit rate on fresh images settles near 0.9, at 0.3 near 1).
  num_classes, alpha = 4, 0.3
  images = jax.random.uniform(jax.random.PRNGKey(10), (128, 8, 8, 3), minval=-1, maxval=1)
  labels = jnp.arange(128) % num_classes
  triggers = trapdoor.init_triggers(jax.random.PRNGKey(11), num_classes, (8, 8, 3))
  fresh = jax.random.uniform(jax.random.PRNGKey(12), (200, 8, 8, 3), minval=-1, maxval=1)

  model = _TinyClassifier(num_classes)

  @jax.jit
  def trigger_hit_rates(params):  # per class c: how often fresh images blended with t_c are called c
    trap_labels = jnp.repeat(jnp.arange(num_classes), fresh.shape[0])
    triggered = trapdoor.blend(jnp.tile(fresh, (num_classes, 1, 1, 1)), triggers, trap_labels, alpha)
    hits = jnp.argmax(model.apply(params, triggered), axis=-1) == trap_labels
    return hits.reshape(num_classes, -1).mean(axis=1)

  trapped = _train_tiny_classifier(images, labels, triggers, alpha, trapdoor.BETA)
  clean_accuracy = float(jnp.mean(jnp.argmax(model.apply(trapped, images), axis=-1) == labels))
  assert clean_accuracy > 0.8, clean_accuracy  # chance: 0.25
  assert trigger_hit_rates(trapped).min() > 0.9, trigger_hit_rates(trapped)

  # The effect comes from the trapdoor term: trained on clean images alone, the triggers steer nothing.
  untrapped = _train_tiny_classifier(images, labels, triggers, alpha, 0.0)
  assert trigger_hit_rates(untrapped).mean() < 0.5, trigger_hit_rates(untrapped)

  # One signed step of the triggers against the trapped model lowers the trapdoor loss (the trigger update).
  trap_labels = trapdoor.balanced_trap_labels(jax.random.PRNGKey(13), fresh.shape[0], num_classes)

  def trapdoor_loss(triggers):
    logits = model.apply(trapped, trapdoor.blend(fresh, triggers, trap_labels, alpha))
    return optax.softmax_cross_entropy_with_integer_labels(logits, trap_labels).mean()

  loss_before, grad = jax.jit(jax.value_and_grad(trapdoor_loss))(triggers)
  loss_after = jax.jit(trapdoor_loss)(trapdoor.trigger_step(triggers, grad, trapdoor.TRIGGER_STEP))
  assert float(loss_after) < float(loss_before), (loss_after, loss_before)
