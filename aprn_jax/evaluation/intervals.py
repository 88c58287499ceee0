"""95% confidence intervals of benchmark figures.

Two kinds, chosen by what varies between repetitions of the protocol:
- `t_interval`: the mean of k replicate figures (the k fold accuracies of LFW/CFP/.bin
  verification) +- t(0.975, k - 1) * std(ddof=1) / sqrt(k), Student's t interval.
- Percentile bootstrap over identities (`BOOTSTRAP_RESAMPLES` resamples from a fixed seed, so
  a figure's interval is the same every time it is computed): identities are drawn with
  replacement and each carries all of its trials (a probe's hits, a pair, a comparison), since
  the trials of one person are not independent of each other. `ratio_bootstrap` resamples a
  rate sum(hits) / sum(trials) (rank-1, per-yaw rank-1); `tar_at_far_bootstrap` resamples
  pairs scored by similarity and recomputes TAR at each target FAR, thresholds included, on
  every resample (`verification.tar_at_far`'s definition, pairs weighted by how often their
  identity was drawn).
- `wilson`: Wilson's score interval of a proportion of independent trials.

Each returns (low, high); `half_width` is what tables print after "+-".
"""
import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def half_width(interval):
  low, high = interval
  return (high - low) / 2


def t_interval(values, confidence=CONFIDENCE):
  """(low, high) of the mean of replicate figures, by Student's t with k - 1 degrees."""
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or len(values) < 2 or not np.all(np.isfinite(values)):
    raise ValueError(f"t_interval: need a finite 1-D array of 2 or more values, got "
                     f"shape {values.shape}")
  mean = values.mean()
  half = (stats.t.ppf(0.5 + confidence / 2, len(values) - 1)
          * values.std(ddof=1) / np.sqrt(len(values)))
  return float(mean - half), float(mean + half)


def wilson(successes, trials, confidence=CONFIDENCE):
  """(low, high): Wilson's score interval of successes / trials."""
  if trials <= 0 or not 0 <= successes <= trials:
    raise ValueError(f"wilson: need 0 <= successes <= trials and trials > 0, got "
                     f"{successes} of {trials}")
  z = stats.norm.ppf(0.5 + confidence / 2)
  p = successes / trials
  centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
  half = (z / (1 + z * z / trials)) * np.sqrt(p * (1 - p) / trials
                                              + z * z / (4 * trials * trials))
  return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def resample_counts(num_clusters, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED):
  """(resamples, num_clusters) int: how often each cluster is drawn in each resample.

  Resample b draws num_clusters cluster indices uniformly with replacement,
  `numpy.random.default_rng(seed).integers(0, num_clusters, (resamples, num_clusters))[b]`.
  """
  if num_clusters < 1:
    raise ValueError("resample_counts: need at least one identity")
  draws = np.random.default_rng(seed).integers(0, num_clusters, (resamples, num_clusters))
  offsets = np.arange(resamples)[:, None] * num_clusters
  return np.bincount((draws + offsets).ravel(),
                     minlength=resamples * num_clusters).reshape(resamples, num_clusters)


def _percentiles(values, confidence):
  tail = 100 * (1 - confidence) / 2
  low, high = np.percentile(values, [tail, 100 - tail], axis=0)
  return low, high


def _cluster_index(clusters):
  clusters = np.asarray(clusters)
  if clusters.ndim != 1:
    raise ValueError(f"clusters: expected a 1-D array, got shape {clusters.shape}")
  return np.unique(clusters, return_inverse=True)[1].reshape(-1)


def ratio_bootstrap(hits, clusters, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED,
                    confidence=CONFIDENCE):
  """(low, high) of mean(hits) with the trials of each cluster (identity) resampled together.

  hits: (N,) per-trial outcomes (1/0, or any number); clusters: (N,) the identity of each
  trial. A resample's rate is sum(hits) / count over the drawn identities' trials.
  """
  hits = np.asarray(hits, np.float64)
  index = _cluster_index(clusters)
  if hits.shape != index.shape or not len(hits):
    raise ValueError(f"ratio_bootstrap: hits {hits.shape} and clusters {index.shape} must be "
                     f"the same non-empty 1-D shape")
  num = index.max() + 1
  per_hits = np.bincount(index, weights=hits, minlength=num)
  per_trials = np.bincount(index, minlength=num).astype(np.float64)
  counts = resample_counts(num, resamples, seed)
  rates = (counts @ per_hits) / (counts @ per_trials)
  low, high = _percentiles(rates, confidence)
  return float(low), float(high)


def _resampled_tar_at_far(scores, genuine, index, counts, target_fars):
  """(B, F) TAR at each target FAR when the pairs of cluster c count counts[b, c] times.

  Only the best-scored pairs matter: TAR at FAR <= f is read off ROC points whose weighted
  false accepts are at most f times the impostors, so the cumulative sums stop at a prefix
  past which every resample's FAR exceeds the largest target (exact, not an approximation).
  """
  scores = np.asarray(scores, np.float64)
  genuine = np.asarray(genuine, bool)
  counts = np.asarray(counts, np.float64)
  num_clusters = counts.shape[1]
  num_genuine = counts @ np.bincount(index, weights=genuine, minlength=num_clusters)
  num_impostor = counts @ np.bincount(index, weights=~genuine, minlength=num_clusters)
  if np.any(num_genuine == 0) or np.any(num_impostor == 0):
    raise ValueError("a resample has no genuine or no impostor pair")
  order = np.argsort(-scores, kind="stable")
  sorted_scores, genuine, index = scores[order], genuine[order], index[order]
  # The ROC points are after the last pair of each group of equal scores.
  ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
  largest = max(target_fars)
  impostors_so_far = np.cumsum(~genuine)
  prefix = int(np.searchsorted(impostors_so_far, 1.5 * largest * impostors_so_far[-1] + 16)) + 1
  while True:
    prefix = min(prefix, len(scores))
    weights = counts[:, index[:prefix]]
    false_accepts = np.cumsum(weights * ~genuine[:prefix], axis=1)
    if prefix == len(scores) or np.all(false_accepts[:, -1] > largest * num_impostor):
      break
    prefix *= 2
  true_accepts = np.cumsum(weights * genuine[:prefix], axis=1)
  points = ends[ends < prefix]
  far = false_accepts[:, points] / num_impostor[:, None]
  tar = true_accepts[:, points] / num_genuine[:, None]
  out = np.empty((len(counts), len(target_fars)))
  for j, target in enumerate(target_fars):
    # FAR is non-decreasing along a row, so TAR's largest value with FAR <= target is at the
    # last such point, or 0 (the point (0, 0)) when there is none.
    last = (far <= target).sum(axis=1) - 1
    out[:, j] = np.where(last >= 0, tar[np.arange(len(tar)), np.maximum(last, 0)], 0.0)
  return out


def weighted_tar_at_far(scores, genuine, weights, target_fars):
  """TAR at each target FAR of pairs with integer weights (a pair drawn w times counts w
  times): the largest TAR among the ROC points with FAR <= target, as `verification`.

  scores (N,), genuine (N,) bool, weights (B, N) -> (B, len(target_fars)).
  """
  weights = np.atleast_2d(weights)
  return _resampled_tar_at_far(scores, genuine, np.arange(weights.shape[1]), weights,
                               target_fars)


def tar_at_far_bootstrap(scores, genuine, clusters, target_fars, resamples=BOOTSTRAP_RESAMPLES,
                         seed=BOOTSTRAP_SEED, confidence=CONFIDENCE, chunk=250):
  """{target FAR: (low, high)} of TAR at FAR with the pairs of each cluster resampled together.

  scores: (N,) similarity per pair; genuine: (N,) bool; clusters: (N,) the identity a pair
  belongs to (for pairs of two people, that of its first image).
  """
  index = _cluster_index(clusters)
  if np.shape(scores) != index.shape or np.shape(genuine) != index.shape:
    raise ValueError("tar_at_far_bootstrap: scores, genuine and clusters differ in shape")
  counts = resample_counts(index.max() + 1, resamples, seed)
  # Sorted once here (stably, best first), so each block's own stable sort finds the order
  # made and costs one pass: millions of comparisons (IJB-C) are not sorted once per block.
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  scores, genuine, index = np.asarray(scores)[order], np.asarray(genuine)[order], index[order]
  tars = np.concatenate([_resampled_tar_at_far(scores, genuine, index, counts[b:b + chunk],
                                               target_fars)
                         for b in range(0, resamples, chunk)])
  low, high = _percentiles(tars, confidence)
  return {target: (float(lo), float(hi)) for target, lo, hi in zip(target_fars, low, high)}


def split_mean_tar_bootstrap(splits, target_fars, resamples=BOOTSTRAP_RESAMPLES,
                             seed=BOOTSTRAP_SEED, confidence=CONFIDENCE, chunk=250):
  """{target FAR: (low, high)} of the mean over splits of TAR at FAR (IJB-A), identities
  resampled once for all splits (the splits share people).

  splits: [(scores (C,), genuine (C,), clusters (C,))], clusters in one id space (a
  comparison belongs to the subject of its first template).
  """
  splits = [(np.asarray(s, np.float64), np.asarray(g, bool), np.asarray(c)) for s, g, c in splits]
  if not splits:
    raise ValueError("split_mean_tar_bootstrap: no splits")
  ids, index = np.unique(np.concatenate([c for _, _, c in splits]), return_inverse=True)
  index = index.reshape(-1)
  bounds = np.cumsum([0] + [len(c) for _, _, c in splits])
  counts = resample_counts(len(ids), resamples, seed)
  means = []
  for b in range(0, resamples, chunk):
    block = counts[b:b + chunk]
    means.append(np.mean([
        _resampled_tar_at_far(scores, genuine, index[start:stop], block, target_fars)
        for (scores, genuine, _), start, stop in zip(splits, bounds[:-1], bounds[1:])], axis=0))
  low, high = _percentiles(np.concatenate(means), confidence)
  return {target: (float(lo), float(hi)) for target, lo, hi in zip(target_fars, low, high)}
