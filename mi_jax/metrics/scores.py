"""Metrics computed from logits and features (numpy; batched by the caller over large sets).

attack_accuracy   top-1 / top-5 of an evaluation model on attack images (PPA metrics/accuracy.py)
knn_distance      mean over attack images of the squared L2 distance to the nearest private training
                  feature of the same class (PPA metrics/distance_metrics.py)
frechet_distance  FID between two Gaussians fitted to Inception features (pytorch-fid's formula)
delta_ratio       Δ = (AttAcc_nodef - AttAcc_def) / (Acc_nodef - Acc_def), higher is better; undefined without a cost
wilson_interval   the 95% Wilson interval of a proportion (attack accuracy over n images)
t_interval        the 95% Student-t interval of a mean over replicates (seeds, batches)
paired_permutation_p  two-sided sign-flip permutation test of paired differences (per seed and class)
prdc              precision, recall, density, coverage (Naeem et al., ICML 2020), per class as PPA
"""

import math

import numpy as np
import scipy.linalg
import scipy.stats


def attack_accuracy(logits: np.ndarray, targets: np.ndarray, k: int = 5) -> dict[str, float]:
  """Share of images whose target class is the arg-max (top1) or among the k largest logits (top5)."""
  logits, targets = np.asarray(logits), np.asarray(targets)
  if logits.shape[0] != targets.shape[0] or logits.ndim != 2:
    raise ValueError(f'expected logits [N, classes] and targets [N], got {logits.shape} and {targets.shape}')
  top_k = np.argsort(-logits, axis=1, kind='stable')[:, :k]
  return {
      'top1': float(np.mean(top_k[:, 0] == targets)),
      f'top{k}': float(np.mean(np.any(top_k == targets[:, None], 1))),
  }


def knn_distance(
    attack_features: np.ndarray, attack_labels: np.ndarray, private_features: np.ndarray, private_labels: np.ndarray
) -> float:
  """Mean over attack images of min_j ||a_i - p_j||^2 over private images j of the same class."""
  attack_features = np.asarray(attack_features, np.float64)
  private_features = np.asarray(private_features, np.float64)
  minima = np.empty(len(attack_features))
  for c in np.unique(attack_labels):
    rows = np.flatnonzero(attack_labels == c)
    refs = private_features[np.asarray(private_labels) == c]
    if not len(refs):
      raise ValueError(f'class {c} has attack images but no private training images')
    minima[rows] = squared_distances(attack_features[rows], refs).min(axis=1)
  return float(np.mean(minima))


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Squared Euclidean distances [len(a), len(b)] in float64 (the expansion, floored at 0 against rounding)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.maximum(np.sum(a**2, 1)[:, None] - 2 * a @ b.T + np.sum(b**2, 1)[None, :], 0.0)


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased, as np.cov) covariance of [N, D] features."""
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with pytorch-fid's guard for singular products."""
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f'statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}')
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():  # near-singular product: offset the diagonals
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'imaginary component {np.max(np.abs(covmean.imag))} in the covariance square root')
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def delta_ratio(acc_nodef: float, attack_acc_nodef: float, acc_def: float, attack_acc_def: float) -> float:
  """Attack-accuracy drop per point of natural-accuracy drop against the no-defense model.

  Undefined (NaN) when the defense does not lower the natural accuracy: a ratio to a zero or negative
  cost would rank a defense that also raises accuracy by the sign of an accident (the table says "no
  accuracy cost" there, `accuracy_cost`).
  """
  if not accuracy_cost(acc_nodef, acc_def):
    return float('nan')
  return (attack_acc_nodef - attack_acc_def) / (acc_nodef - acc_def)


def accuracy_cost(acc_nodef: float, acc_def: float) -> bool:
  """Whether the defense lowers the natural accuracy (Δ is defined only then)."""
  return acc_def < acc_nodef


def paired_permutation_p(differences, n_resamples: int = 100_000, seed: int = 0) -> float:
  """Two-sided p-value that paired differences (defense - No defense, one per seed and class) have mean 0.

  A sign-flip permutation test (scipy.stats.permutation_test on the pairs): exact while 2^n <= n_resamples,
  Monte Carlo with a fixed seed beyond. Classes and seeds are the units because one attacked class gives
  both rows their images: its difficulty is shared, its images are not independent draws. NaN for no pairs;
  1.0 when every difference is 0.
  """
  differences = np.asarray(differences, np.float64)
  if differences.size == 0:
    return float('nan')
  if not np.any(differences):
    return 1.0
  result = scipy.stats.permutation_test(
      (differences, np.zeros_like(differences)),
      lambda a, b, axis: np.mean(a - b, axis=axis),
      permutation_type='samples',
      vectorized=True,
      n_resamples=n_resamples,
      alternative='two-sided',
      rng=np.random.default_rng(seed),
  )
  return float(result.pvalue)


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
  """The Student-t interval of the mean of independent replicates (training seeds, attack batches)."""
  values = np.asarray(values, np.float64)
  if values.size < 2:
    return float('nan'), float('nan')
  half = scipy.stats.t.ppf(0.5 + confidence / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
  return float(values.mean() - half), float(values.mean() + half)


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
  """The Wilson score interval of a binomial proportion (95% for the default z); (nan, nan) for no trials."""
  if trials <= 0:
    return float('nan'), float('nan')
  p = successes / trials
  denominator = 1.0 + z * z / trials
  center = (p + z * z / (2 * trials)) / denominator
  half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
  return max(0.0, center - half), min(1.0, center + half)


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Euclidean distances [len(a), len(b)] in float64."""
  return np.sqrt(squared_distances(a, b))


def _kth_neighbour_radii(features: np.ndarray, k: int) -> np.ndarray:
  """Distance of each point to its k-th nearest other point (itself, at distance 0, is the 0-th)."""
  if len(features) <= k:
    return np.full(len(features), np.nan)
  return np.partition(_pairwise_distances(features, features), k, axis=1)[:, k]


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
  """Precision, recall, density and coverage of `fake` against `real` features (Naeem et al. 2020).

  With r(x) the distance from x to its k-th nearest neighbour in its own set and B(x, r) the open ball:
    precision = share of fakes inside some real ball B(r_i, r(r_i));
    recall    = share of reals inside some fake ball (NaN with <= k fakes: no radius);
    density   = mean over fakes of the number of real balls containing it, / k;
    coverage  = share of reals whose nearest fake lies inside their own ball.
  PPA's metrics/prcd.py differs: precision and recall test only the nearest point's ball, and density
  divides by the number of reals instead of fakes.
  """
  if len(real) <= k:
    raise ValueError(f'PRDC with k={k} needs more than {k} real samples, got {len(real)}')
  real_radii, fake_radii = _kth_neighbour_radii(real, k), _kth_neighbour_radii(fake, k)
  distance = _pairwise_distances(real, fake)  # [reals, fakes]
  inside_real = distance < real_radii[:, None]
  recall = float(np.mean(np.any(distance < fake_radii[None, :], axis=1))) if len(fake) > k else float('nan')
  return {
      'precision': float(np.mean(np.any(inside_real, axis=0))),
      'recall': recall,
      'density': float(np.mean(np.sum(inside_real, axis=0)) / k),
      'coverage': float(np.mean(distance.min(axis=1) < real_radii)),
  }


def per_class_prdc(
    real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray, k: int = 3
) -> dict[str, float]:
  """prdc within each attacked class, averaged over the classes (PPA's protocol), keys prefixed 'prdc_'."""
  real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
  per_class = [prdc(real[real_labels == c], fake[fake_labels == c], k) for c in np.unique(fake_labels)]
  out = {}
  for name in ('precision', 'recall', 'density', 'coverage'):
    values = np.array([p[name] for p in per_class])
    out[f'prdc_{name}'] = float(np.nanmean(values)) if np.any(~np.isnan(values)) else float('nan')
  return out
