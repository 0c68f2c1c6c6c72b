"""Metrics on inputs with known answers."""

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from mi_jax.metrics import scores


def test_attack_accuracy_top1_top5():
  logits = np.array(
      [[9, 1, 2, 3, 4, 5, 0], [1, 9, 2, 3, 4, 5, 0], [1, 2, 3, 4, 5, 6, 9.0]]  # top1 = 0  # top1 = 1; class 6 is last
  )  # class 0 is 7th: outside the top 5
  got = scores.attack_accuracy(logits, np.array([0, 6, 0]))
  assert got == {'top1': pytest.approx(1 / 3), 'top5': pytest.approx(1 / 3)}
  assert scores.attack_accuracy(logits, np.array([0, 2, 5])) == {
      'top1': pytest.approx(1 / 3),
      'top5': pytest.approx(1.0),
  }


def test_knn_distance_same_class_nearest_squared():
  private = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0], [100.0, 100.0]])
  private_labels = np.array([0, 0, 1, 1])
  attack = np.array([[1.0, 0.0], [9.0, 1.0], [0.0, 0.0]])
  attack_labels = np.array([0, 0, 1])
  # Class 0: nearest squared distances 1 and 1+1=2; class 1: the point (0, 3) -> 9, not class 0's origin.
  assert scores.knn_distance(attack, attack_labels, private, private_labels) == pytest.approx((1 + 2 + 9) / 3)
  with pytest.raises(ValueError, match='class 2'):
    scores.knn_distance(attack, np.array([0, 0, 2]), private, private_labels)


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(0)
  sigma = np.cov(rng.standard_normal((50, 4)), rowvar=False)
  assert scores.frechet_distance(np.ones(4), sigma, np.ones(4), sigma) == pytest.approx(0, abs=1e-8)
  # 1-D: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s.
  assert scores.frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(4 + (2 - 3) ** 2)
  # Diagonal covariances: sum over dimensions of the 1-D formula.
  v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
  mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 2.0])
  want = 5 + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  assert scores.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want)
  mu, cov = scores.gaussian_statistics(rng.standard_normal((1000, 3)) * [1, 2, 3] + [5, 0, 0])
  np.testing.assert_allclose(mu, [5, 0, 0], atol=0.3)
  np.testing.assert_allclose(np.diag(cov), [1, 4, 9], rtol=0.15)


def test_delta_ratio_reproduces_the_paper_table():
  # ResNet-34 on FaceScrub (the paper's Table 1): No Def. 94.69 / 90.78.
  assert scores.delta_ratio(94.69, 90.78, 91.38, 71.86) == pytest.approx(5.72, abs=0.005)  # RoLSS
  assert scores.delta_ratio(94.69, 90.78, 94.40, 81.65) == pytest.approx(31.48, abs=0.005)  # TTS
  assert scores.delta_ratio(94.69, 90.78, 91.66, 81.98) == pytest.approx(2.90, abs=0.005)  # BiDO
  # Undefined without an accuracy cost: the same accuracy, or a higher one (whatever the attack did).
  assert math.isnan(scores.delta_ratio(90.0, 80.0, 90.0, 70.0))
  assert math.isnan(scores.delta_ratio(90.0, 80.0, 91.0, 70.0)) and math.isnan(
      scores.delta_ratio(90.0, 80.0, 91.0, 85.0)
  )
  assert scores.accuracy_cost(90.0, 89.0) and not scores.accuracy_cost(90.0, 90.0)


def test_wilson_interval_known_values():
  # Published 95% Wilson intervals (e.g. Newcombe 1998, Table I; Brown, Cai & DasGupta 2001).
  np.testing.assert_allclose(scores.wilson_interval(5, 10), (0.2366, 0.7634), atol=1e-4)
  np.testing.assert_allclose(scores.wilson_interval(0, 10), (0.0, 0.2775), atol=1e-4)
  np.testing.assert_allclose(scores.wilson_interval(10, 10), (0.7225, 1.0), atol=1e-4)
  np.testing.assert_allclose(scores.wilson_interval(81, 263), (0.2553, 0.3662), atol=1e-4)
  assert all(math.isnan(v) for v in scores.wilson_interval(0, 0))


def test_paired_permutation_p_against_enumeration_and_known_values():
  # Five positive pairs: of the 32 sign patterns only all-plus and all-minus are as extreme, p = 2/32.
  assert scores.paired_permutation_p([1, 1, 1, 1, 1]) == pytest.approx(0.0625)
  assert scores.paired_permutation_p([0.0, 0.0]) == 1.0 and math.isnan(scores.paired_permutation_p([]))
  # Exact: the share of the 2^n sign flips whose |mean| reaches the observed one, counted here directly.
  differences = np.array([0.5, -0.25, 0.75, 0.25, 0.5, -0.5, 1.0])
  signs = np.array(list(itertools.product([-1, 1], repeat=len(differences))))
  flipped = np.abs((signs * differences).mean(axis=1))
  want = np.mean(flipped >= abs(differences.mean()) - 1e-12)
  assert scores.paired_permutation_p(differences) == pytest.approx(want)
  # Monte Carlo beyond 2^n > n_resamples: close to the exact value of a large sample with a normal approximation.
  big = np.random.default_rng(0).normal(0.3, 1.0, size=60)
  z = big.mean() / (big.std(ddof=0) / math.sqrt(big.size))
  assert scores.paired_permutation_p(big, n_resamples=20_000) == pytest.approx(2 * scipy.stats.norm.sf(z), abs=0.01)


def test_t_interval_known_value():
  # Mean 0.6, s = 0.1, n = 3: t(0.975, 2) = 4.302653, half-width 4.302653 * 0.1 / sqrt(3) = 0.248414.
  np.testing.assert_allclose(scores.t_interval([0.5, 0.6, 0.7]), (0.351586, 0.848414), atol=1e-6)
  assert all(math.isnan(v) for v in scores.t_interval([0.5]))


def test_prdc_matches_the_reference_package():
  prdc_reference = pytest.importorskip('prdc', reason='prdc is not installed (the test extra)')
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(60, 8)), rng.normal(0.3, 1.2, size=(25, 8))
  want = prdc_reference.compute_prdc(real, fake, nearest_k=3)
  got = scores.prdc(real, fake, k=3)
  assert got == pytest.approx({k: float(v) for k, v in want.items()})


def test_prdc_known_answers_and_per_class_mean():
  # Reals on a line at 0, 1, 2, 3, 4: with k = 1 each real's radius is 1 (its nearest neighbour); the fakes
  # 0.5 and 10 have radius 9.5 (each other). Balls are open.
  real = np.arange(5.0)[:, None]
  got = scores.prdc(real, np.array([[0.5], [10.0]]), k=1)
  assert got['precision'] == 0.5  # 0.5 is inside the balls of reals 0 and 1; 10 inside none
  assert got['recall'] == 1.0  # every real is within 9.5 of the fake 0.5
  assert got['density'] == 1.0  # (2 + 0) balls / 2 fakes / k
  assert got['coverage'] == 0.4  # only reals 0 and 1 have their nearest fake within radius 1
  # Per class: the mean of the classes' values; a class with too few fakes for a fake radius has no recall.
  real, labels = np.arange(6.0)[:, None], np.array([0, 0, 0, 1, 1, 1])
  fake, fake_labels = np.array([[0.1], [3.2], [9.0]]), np.array([0, 1, 1])
  per_class = scores.per_class_prdc(real, labels, fake, fake_labels, k=1)
  zero, one = scores.prdc(real[:3], fake[:1], k=1), scores.prdc(real[3:], fake[1:], k=1)
  for name in ('precision', 'density', 'coverage'):
    assert per_class[f'prdc_{name}'] == pytest.approx((zero[name] + one[name]) / 2)
  assert math.isnan(zero['recall']) and per_class['prdc_recall'] == one['recall']
  with pytest.raises(ValueError, match='needs more than 3 real samples'):
    scores.prdc(real[:3], real, k=3)
