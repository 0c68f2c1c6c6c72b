"""PPA building blocks: Poincaré loss, crop/resize semantics, candidate and final selection."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax.attacks import losses, selection
from mi_jax.data import transforms


def test_poincare_loss_hand_computed():
  # logits (3, 1) -> u = (0.75, 0.25); target 0 with xi = 0.1 -> v = (0.9, 0).
  # |u|^2 = 0.625, |v|^2 = 0.81, |u - v|^2 = 0.0225 + 0.0625 = 0.085
  # delta = 2 * 0.085 / (0.375 * 0.19) = 2.3859649..., loss = arccosh(3.3859649...)
  got = losses.poincare_loss(jnp.array([[3.0, 1.0]]), jnp.array([0]), xi=0.1)
  np.testing.assert_allclose(got, [math.acosh(1 + 2 * 0.085 / (0.375 * 0.19))], rtol=1e-6)
  # Negative logits count by magnitude in the L1 norm: (-1, 3) -> u = (-0.25, 0.75); target 1, xi 1e-4.
  u, v = np.array([-0.25, 0.75]), np.array([0.0, 0.9999])
  delta = 2 * np.sum((u - v) ** 2) / ((1 - np.sum(u**2)) * (1 - np.sum(v**2)))
  # (1 - |v|^2 = 2e-4 cancels in float32: rtol 1e-4.)
  np.testing.assert_allclose(
      losses.poincare_loss(jnp.array([[-1.0, 3.0]]), jnp.array([1])), [np.arccosh(1 + delta)], rtol=1e-4
  )


def test_poincare_loss_falls_as_the_target_logit_dominates():
  values = [float(losses.poincare_loss(jnp.array([[t, 1.0, 1.0]]), jnp.array([0]))[0]) for t in (1.0, 3.0, 10.0, 100.0)]
  assert values == sorted(values, reverse=True)


def test_center_crop_and_resize():
  images = jnp.arange(2 * 10 * 10 * 1, dtype=jnp.float32).reshape(2, 10, 10, 1)
  crop = transforms.center_crop(images, 6)
  np.testing.assert_array_equal(crop, images[:, 2:8, 2:8])
  np.testing.assert_array_equal(transforms.center_crop(images[:, :, :9], 6), images[:, 2:8, 2:8])  # round(1.5)=2
  assert transforms.resize(images, 10, antialias=True) is images
  constant = jnp.full((1, 12, 12, 3), 0.3)
  for antialias in (False, True):
    np.testing.assert_allclose(transforms.resize(constant, 5, antialias), 0.3, rtol=1e-6)
  with pytest.raises(ValueError, match='larger than'):
    transforms.center_crop(images, 11)


def test_resized_crop_of_an_integer_box_equals_slicing():
  images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 12, 12, 3)), jnp.float32)
  box = jnp.array([3.0, 2.0, 6.0, 6.0])  # top, left, h, w at the output size: no resampling
  full = jnp.array([0.0, 0.0, 12.0, 12.0])
  for antialias in (False, True):
    np.testing.assert_allclose(transforms.resized_crop(images, box, 6, antialias), images[:, 3:9, 2:8], atol=1e-6)
    np.testing.assert_allclose(transforms.resized_crop(images, full, 12, antialias), images, atol=1e-6)
  # A 2x downscale: antialiased, the triangle filter spans 4 input pixels per axis (weights 1, 3, 3, 1);
  # plain bilinear samples midway between two pixels, the mean of a 2x2 block.
  weights = np.array([1.0, 3.0, 3.0, 1.0]) / 8
  block = np.asarray(images[:, 3:7, 5:9])  # around output pixel (2, 3)
  aa = np.einsum('i,j,nijc->nc', weights, weights, block)
  np.testing.assert_allclose(transforms.resized_crop(images, full, 6, True)[:, 2, 3], aa, atol=1e-6)
  np.testing.assert_allclose(
      transforms.resized_crop(images, full, 6, False)[:, 2, 3], images[:, 4:6, 6:8].mean(axis=(1, 2)), atol=1e-6
  )


@pytest.mark.parametrize('antialias', [False, True])
def test_resizes_match_torchvision(antialias):
  """F.resize and F.resized_crop of float tensors, antialias off (the RoLSS code) and on (upstream PPA)."""
  torch = pytest.importorskip('torch', reason='torch is not installed')
  from mi_jax.convert import torch_compat  # pylint: disable=g-import-not-at-top

  functional = torch_compat.import_torchvision().transforms.functional
  images = np.random.default_rng(1).uniform(-1, 1, (2, 37, 41, 3)).astype(np.float32)
  nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
  to_nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
  square = images[:, :, :37]
  for size in (7, 16, 60, 299):  # down and up
    want = to_nhwc(functional.resize(nchw[..., :37], [size, size], antialias=antialias))
    assert np.abs(np.asarray(transforms.resize(jnp.asarray(square), size, antialias)) - want).max() <= 1e-5
    assert np.abs(transforms.resize(square, size, antialias, xp=np) - want).max() <= 1e-5  # the host-side copy
  for box in ((3, 5, 20, 30), (10, 2, 11, 9), (0, 0, 37, 41)):  # crops: resampled from their own pixels only
    want = to_nhwc(functional.resized_crop(nchw, *box, [16, 16], antialias=antialias))
    got = transforms.resized_crop(jnp.asarray(images), jnp.asarray(box, jnp.float32), 16, antialias)
    assert np.abs(np.asarray(got) - want).max() <= 1e-5
  # Antialiasing matters: the two settings give other images.
  other = transforms.resize(jnp.asarray(square), 7, not antialias)
  assert (
      np.abs(np.asarray(other) - to_nhwc(functional.resize(nchw[..., :37], [7, 7], antialias=antialias))).max() > 0.05
  )


def test_random_resized_crop_box_follows_scale_and_ratio():
  boxes = jax.vmap(lambda k: transforms.random_resized_crop_box(k, 100, 100, (0.5, 0.9), (1.0, 1.0)))(
      jax.random.split(jax.random.key(0), 200)
  )
  top, left, h, w = np.asarray(boxes).T
  assert np.all(h == w)  # ratio 1: square crops
  assert np.all((h * w >= 0.5 * 1e4 - 200) & (h * w <= 0.9 * 1e4 + 200))  # area within scale (rounding)
  assert np.all((top >= 0) & (left >= 0) & (top + h <= 100) & (left + w <= 100))
  assert len(np.unique(top)) > 20  # positions vary
  # Impossible ratios fall back to the centred, ratio-clamped whole image.
  fallback = transforms.random_resized_crop_box(jax.random.key(1), 100, 50, (1.0, 1.0), (4.0, 5.0))
  np.testing.assert_array_equal(fallback, [44, 0, 12, 50])  # w = 50, h = round(50 / 4) = 12, centred


def test_top_candidates_are_distinct_per_class_and_match_greedy_argmax():
  conf = np.random.default_rng(1).random((50, 3))
  conf[7, 0] = conf[9, 0] = 2.0  # a tie: the lower index first, like argmax
  chosen = selection.top_candidates(conf, [0, 2], 5)
  for c, idx in chosen.items():
    column, greedy = conf[:, c].copy(), []
    for _ in range(5):  # PPA: argmax, then set the score to -1
      greedy.append(int(np.argmax(column)))
      column[greedy[-1]] = -1
    np.testing.assert_array_equal(idx, greedy)
  assert list(chosen[0][:2]) == [7, 9]
  with pytest.raises(ValueError, match='search space'):
    selection.top_candidates(conf, [0], 51)


def test_final_selection_prefers_what_the_target_is_sure_of():
  # A fake target whose logit for class 0 is the image's mean brightness times 10: brighter = more confident,
  # whatever the crop or flip.
  classify = lambda x: jnp.stack([10 * x.mean(axis=(1, 2, 3)), jnp.zeros(x.shape[0])], axis=1)
  levels = jnp.array([-0.5, 0.8, 0.1, 0.5, -0.9])
  images = jnp.broadcast_to(levels[:, None, None, None], (5, 16, 16, 1))
  scores = selection.final_scores(classify, images, jnp.zeros(5, jnp.int32), jax.random.key(0), iterations=4)
  np.testing.assert_allclose(scores, jax.nn.sigmoid(10 * levels), rtol=1e-4, atol=1e-7)
  np.testing.assert_array_equal(selection.top_final(np.asarray(scores), 2), [1, 3])
  # One key per class: scoring the candidates in two batches gives the same crops, so the same scores.
  key = jax.random.key(3)
  images = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (5, 16, 16, 1)), jnp.float32)
  classify_pixels = lambda x: jnp.stack([10 * x[:, 4:12, 4:12].mean(axis=(1, 2, 3)), jnp.zeros(x.shape[0])], axis=1)
  whole = selection.final_scores(classify_pixels, images, jnp.zeros(5, jnp.int32), key, iterations=6)
  split = jnp.concatenate(
      [
          selection.final_scores(classify_pixels, images[:2], jnp.zeros(2, jnp.int32), key, 6),
          selection.final_scores(classify_pixels, images[2:], jnp.zeros(3, jnp.int32), key, 6),
      ]
  )
  np.testing.assert_allclose(split, whole, rtol=1e-6)
  images = jnp.broadcast_to(levels[:, None, None, None], (5, 16, 16, 1))
  both = selection.flip_averaged_confidence(classify, images)
  np.testing.assert_allclose(both[:, 0], jax.nn.sigmoid(10 * levels), rtol=1e-4, atol=1e-7)
