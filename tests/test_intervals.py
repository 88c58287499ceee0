"""Confidence intervals against independent computations: scipy's t and Wilson intervals, and
the bootstraps recomputed by brute force (each resample expanded into its list of trials and
scored with the plain, unweighted figure functions)."""
import numpy as np
import pytest
from scipy import stats

from aprn_jax.evaluation import intervals, verification


def test_t_interval_equals_scipy():
  values = np.array([0.91, 0.87, 0.95, 0.9, 0.88, 0.93, 0.86, 0.92, 0.89, 0.94])
  expected = stats.t.interval(0.95, len(values) - 1, loc=values.mean(),
                              scale=stats.sem(values))
  np.testing.assert_allclose(intervals.t_interval(values), expected, rtol=1e-12)
  with pytest.raises(ValueError, match="2 or more"):
    intervals.t_interval([0.5])


@pytest.mark.parametrize("successes,trials", [(0, 10), (3, 10), (181, 200), (50, 50)])
def test_wilson_equals_scipy(successes, trials):
  expected = stats.binomtest(successes, trials).proportion_ci(0.95, method="wilson")
  np.testing.assert_allclose(intervals.wilson(successes, trials),
                             (expected.low, expected.high), atol=1e-12)


def test_resample_counts_are_the_documented_draws():
  counts = intervals.resample_counts(7, resamples=5, seed=3)
  draws = np.random.default_rng(3).integers(0, 7, (5, 7))
  for b in range(5):
    np.testing.assert_array_equal(counts[b], np.bincount(draws[b], minlength=7))


def _brute_force_percentiles(statistic, clusters, resamples, seed):
  """Each resample: the trials of the drawn clusters concatenated, scored by `statistic`."""
  ids = np.unique(clusters)
  members = [np.flatnonzero(clusters == c) for c in ids]
  draws = np.random.default_rng(seed).integers(0, len(ids), (resamples, len(ids)))
  values = [statistic(np.concatenate([members[i] for i in row])) for row in draws]
  return np.percentile(values, [2.5, 97.5], axis=0)


def test_ratio_bootstrap_equals_brute_force():
  rng = np.random.default_rng(0)
  clusters = rng.integers(0, 30, 400)
  hits = rng.random(400) < 0.3 + 0.4 * (clusters % 3 == 0)
  got = intervals.ratio_bootstrap(hits, clusters, resamples=300, seed=5)
  expected = _brute_force_percentiles(lambda rows: hits[rows].mean(), clusters, 300, 5)
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  assert got[0] < hits.mean() < got[1]


def test_ratio_bootstrap_of_independent_trials_agrees_with_scipy_bootstrap():
  """One trial per cluster is the plain bootstrap of a mean: scipy's percentile bootstrap
  gives the same interval up to Monte Carlo error."""
  hits = (np.random.default_rng(1).random(500) < 0.7).astype(float)
  ours = intervals.ratio_bootstrap(hits, np.arange(500), resamples=4000, seed=2)
  theirs = stats.bootstrap((hits,), np.mean, n_resamples=4000, method="percentile",
                           rng=np.random.default_rng(3)).confidence_interval
  np.testing.assert_allclose(ours, (theirs.low, theirs.high), atol=0.01)
  wilson = intervals.wilson(int(hits.sum()), len(hits))
  np.testing.assert_allclose(ours, wilson, atol=0.01)


def _plain_tar_at_far(scores, genuine, fars):
  far, tar, _ = verification.roc_curve(scores, genuine)
  return [verification.tar_at_far(far, tar, f) for f in fars]


def test_weighted_tar_at_far_equals_unweighted_on_repeated_pairs():
  rng = np.random.default_rng(4)
  scores = np.round(rng.normal(size=300), 1)  # ties
  genuine = rng.random(300) < 0.3
  scores[genuine] += 1.0
  weights = rng.integers(0, 4, 300)
  weights[genuine.argmax()] = weights[(~genuine).argmax()] = 1
  rows = np.repeat(np.arange(300), weights)
  fars = (1e-3, 1e-2, 0.1, 0.5)
  np.testing.assert_allclose(
      intervals.weighted_tar_at_far(scores, genuine, weights[None], fars)[0],
      _plain_tar_at_far(scores[rows], genuine[rows], fars))


def test_tar_at_far_bootstrap_equals_brute_force():
  rng = np.random.default_rng(6)
  clusters = rng.integers(0, 25, 600)
  genuine = rng.random(600) < 0.4
  scores = rng.normal(size=600) + 1.5 * genuine + 0.3 * (clusters % 4)
  fars = (0.01, 0.1)
  got = intervals.tar_at_far_bootstrap(scores, genuine, clusters, fars, resamples=200, seed=7,
                                       chunk=33)
  expected = _brute_force_percentiles(
      lambda rows: _plain_tar_at_far(scores[rows], genuine[rows], fars), clusters, 200, 7)
  for j, far in enumerate(fars):
    np.testing.assert_allclose(got[far], expected[:, j], rtol=1e-12)


def test_split_mean_tar_bootstrap_equals_brute_force():
  """People resampled once for all splits; each split's TAR recomputed, then averaged."""
  rng = np.random.default_rng(8)
  splits = []
  for _ in range(3):
    clusters = rng.choice(20, 200)
    genuine = rng.random(200) < 0.3
    splits.append((rng.normal(size=200) + 2 * genuine, genuine, clusters))
  fars = (0.05, 0.2)
  got = intervals.split_mean_tar_bootstrap(splits, fars, resamples=150, seed=9, chunk=40)
  draws = np.random.default_rng(9).integers(0, 20, (150, 20))
  values = []
  for row in draws:
    per_split = []
    for scores, genuine, clusters in splits:
      rows = np.concatenate([np.flatnonzero(clusters == c) for c in row])
      per_split.append(_plain_tar_at_far(scores[rows], genuine[rows], fars))
    values.append(np.mean(per_split, axis=0))
  expected = np.percentile(values, [2.5, 97.5], axis=0)
  for j, far in enumerate(fars):
    np.testing.assert_allclose(got[far], expected[:, j], rtol=1e-12)
