"""PPA's candidate sampling, initial selection and final selection."""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.data import transforms


def candidate_z(seed: int, search_space_size: int, z_dim: int) -> np.ndarray:
  """PPA's latent pool: np.random.RandomState(seed).randn(S, z_dim), the same pool for every class."""
  return np.random.RandomState(seed).randn(search_space_size, z_dim)


def top_candidates(confidences: np.ndarray, classes, num_candidates: int) -> dict[int, np.ndarray]:
  """Per class, the indices of the `num_candidates` most confident distinct pool members.

  PPA takes, for each entry of the target vector in turn, the arg-max of the
  class's confidence column and sets it to -1; a stable descending sort per
  column gives the same indices (ties resolve to the lowest index, like argmax).
  """
  if num_candidates > confidences.shape[0]:
    raise ValueError(f'num_candidates={num_candidates} exceeds the search space of {confidences.shape[0]} latents')
  return {int(c): np.argsort(-confidences[:, c], kind='stable')[:num_candidates] for c in classes}


def flip_averaged_confidence(classify: Callable[[jax.Array], jax.Array], images: jax.Array) -> jax.Array:
  """Mean softmax of the target over each image and its horizontal mirror (initial selection)."""
  return 0.5 * (jax.nn.softmax(classify(images)) + jax.nn.softmax(classify(images[:, :, ::-1])))


def final_scores(
    classify: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    targets: jax.Array,
    key: jax.Array,
    iterations: int,
    scale=(0.5, 0.9),
    ratio=(0.8, 1.2),
    antialias: bool = True,
) -> jax.Array:
  """Mean target-class probability over `iterations` random resized crops + flips (one draw per iteration).

  `images` are already framed for the target (centre crop + resize). The draws depend on `key` only, so
  every batch scored with the same key sees the same crops: PPA scores a class's candidates in one batch.
  """
  size = images.shape[1]

  def one(key):
    crop_key, flip_key = jax.random.split(key)
    x = transforms.random_resized_crop(crop_key, images, size, scale, ratio, antialias)
    x = transforms.random_hflip(flip_key, x)
    return jnp.take_along_axis(jax.nn.softmax(classify(x)), targets[:, None], axis=1)[:, 0]

  return jnp.mean(jax.lax.map(one, jax.random.split(key, iterations)), axis=0)


def top_final(scores: np.ndarray, num_final: int) -> np.ndarray:
  """Indices of the `num_final` best-scoring samples of one class, best first."""
  return np.argsort(-np.asarray(scores), kind='stable')[:num_final]
