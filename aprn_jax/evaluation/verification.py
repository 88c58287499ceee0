"""Pair verification (LFW, CFP-FF/FP, insightface .bin packs): k-fold accuracy and ROC numbers.

Accuracy follows insightface: the distance of a pair is the squared L2 distance between its
L2-normalised embeddings (0 to 4; equal to 2 - 2 cos); a pair is predicted "same" when
distance < threshold. For each fold, the threshold (from 0 to 3.99 in steps of 0.01) with the
best accuracy on the other folds is chosen (the smallest one on ties) and applied to that fold.
Reported: accuracy mean over folds, its standard deviation (ddof=0, as insightface) and the
standard error of the mean (std with ddof=1 over sqrt(folds), as the paper reports for CFP).

ROC numbers use all pairs at once, scored by similarity = -distance. An operating point
accepts the pairs whose score is >= a threshold; pairs with equal scores are therefore always
accepted or rejected together (no interpolation inside a tie). The ROC curve is the list of
(FAR, TAR) points over all distinct scores, starting at (0, 0):
- AUC: trapezoidal area under that curve (= P(genuine > impostor) + P(equal) / 2).
- EER: where the straight line between two consecutive points crosses FAR = 1 - TAR.
- TAR@FAR f: the largest TAR among the points with FAR <= f (0 if none, as at (0, 0)).
- roc: TAR@FAR at 10 FARs per decade (`ROC_FARS`), the curve the run's report draws.
"""
import dataclasses

import numpy as np

from aprn_jax.evaluation import embeddings as embeddings_lib
from input_pipeline.readers import folds

THRESHOLDS = np.arange(0.0, 4.0, 0.01)
DEFAULT_FARS = (1e-3,)
# insightface's contiguous folds live with the pair readers (input_pipeline/readers/folds.py).
contiguous_folds = folds.contiguous_folds


def squared_distances(embeddings1, embeddings2):
  """Squared L2 distance (float64) of each pair of L2-normalised embeddings."""
  embeddings1, embeddings2 = np.asarray(embeddings1), np.asarray(embeddings2)
  embeddings_lib.check_unit_norm("embeddings1", embeddings1)
  embeddings_lib.check_unit_norm("embeddings2", embeddings2)
  if embeddings1.shape != embeddings2.shape:
    raise ValueError(
        f"embeddings1 {embeddings1.shape} and embeddings2 {embeddings2.shape} differ in shape")
  diff = embeddings1.astype(np.float64) - embeddings2.astype(np.float64)
  return np.einsum("ij,ij->i", diff, diff)


def _check_labels(name, labels, num):
  labels = np.asarray(labels)
  if labels.shape != (num,):
    raise ValueError(f"{name}: expected shape ({num},), got {labels.shape}")
  if labels.dtype != bool:
    if not np.all((labels == 0) | (labels == 1)):
      raise ValueError(f"{name}: expected booleans (or 0/1)")
    labels = labels.astype(bool)
  return labels


def roc_curve(scores, genuine):
  """(far, tar, thresholds) over all distinct scores, highest threshold first.

  Point i accepts the pairs with score >= thresholds[i]; point 0 (threshold +inf) accepts
  none. Both rates are non-decreasing.
  """
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 1 or not np.all(np.isfinite(scores)):
    raise ValueError(f"scores: expected a finite 1-D array, got shape {scores.shape}")
  genuine = _check_labels("genuine", genuine, len(scores))
  num_genuine = int(genuine.sum())
  num_impostor = len(genuine) - num_genuine
  if num_genuine == 0 or num_impostor == 0:
    raise ValueError(
        f"roc_curve: need genuine and impostor pairs, got {num_genuine} genuine and "
        f"{num_impostor} impostor")
  order = np.argsort(-scores, kind="stable")
  sorted_scores = scores[order]
  sorted_genuine = genuine[order]
  group_ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
  true_accepts = np.cumsum(sorted_genuine)[group_ends]
  false_accepts = (group_ends + 1) - true_accepts
  far = np.r_[0.0, false_accepts / num_impostor]
  tar = np.r_[0.0, true_accepts / num_genuine]
  thresholds = np.r_[np.inf, sorted_scores[group_ends]]
  return far, tar, thresholds


def roc_auc(far, tar):
  return float(np.trapezoid(tar, far))


def equal_error_rate(far, tar):
  """FAR (= FRR) where the ROC curve, linear between its points, crosses FAR = 1 - TAR."""
  gap = (1.0 - tar) - far  # 1 at the first point, -1 at the last, non-increasing.
  k = int(np.argmax(gap <= 0))
  weight = gap[k - 1] / (gap[k - 1] - gap[k])
  return float(far[k - 1] + weight * (far[k] - far[k - 1]))


def tar_at_far(far, tar, target_far):
  """Largest TAR among the ROC points with FAR <= target_far."""
  return float(tar[np.searchsorted(far, target_far, side="right") - 1])


# The FARs at which results keep a ROC curve (the report's plots): 10 per decade, 1e-6 to 1.
ROC_FARS = tuple(float(f"{10 ** (k / 10):.3g}") for k in range(-60, 1))


def sampled_roc(far, tar, fars=ROC_FARS):
  """{"far": [...], "tar": [...]}: `tar_at_far` at each of `fars` from the curve's smallest
  nonzero FAR on (below it the pairs cannot measure a rate)."""
  smallest = far[far > 0].min()
  kept = [f for f in fars if f >= smallest * (1 - 1e-9)]
  return {"far": kept, "tar": [tar_at_far(far, tar, f) for f in kept]}


@dataclasses.dataclass(frozen=True)
class VerificationResult:
  """k-fold accuracy (insightface protocol) and ROC numbers over all pairs."""
  accuracy: float
  accuracy_std: float
  accuracy_sem: float
  fold_accuracies: np.ndarray
  fold_thresholds: np.ndarray
  auc: float
  eer: float
  tar_at_far: dict
  roc: dict = None  # `sampled_roc` of the curve over all pairs

  def as_dict(self):
    """JSON-friendly copy (arrays as lists)."""
    return {
        "accuracy": self.accuracy,
        "accuracy_std": self.accuracy_std,
        "accuracy_sem": self.accuracy_sem,
        "fold_accuracies": self.fold_accuracies.tolist(),
        "fold_thresholds": self.fold_thresholds.tolist(),
        "auc": self.auc,
        "eer": self.eer,
        "tar_at_far": {f"{far:g}": tar for far, tar in self.tar_at_far.items()},
        "roc": self.roc,
    }


def _correct_counts(distances, issame, fold_index, num_folds, thresholds):
  """correct[f, t]: pairs of fold f classified right with threshold t.

  A pair is predicted same at threshold t_j iff distance < t_j, i.e. iff fewer than j + 1
  thresholds are <= distance; so a histogram of that count, cumulated, counts the pairs
  predicted same at every threshold in one pass (no loop over thresholds).
  """
  num_thresholds = len(thresholds)
  below = np.searchsorted(thresholds, distances, side="right")  # thresholds <= distance
  cell = (fold_index * 2 + issame) * (num_thresholds + 1) + below
  hist = np.bincount(cell, minlength=num_folds * 2 * (num_thresholds + 1))
  predicted_same = np.cumsum(hist.reshape(num_folds, 2, num_thresholds + 1), axis=2)
  predicted_same = predicted_same[:, :, :num_thresholds]
  num_different = np.bincount(fold_index[~issame], minlength=num_folds)
  true_rejects = num_different[:, None] - predicted_same[:, 0]
  return predicted_same[:, 1] + true_rejects


def evaluate_distances(distances, issame, fold_ids, thresholds=THRESHOLDS, fars=DEFAULT_FARS):
  """Verification numbers from pair distances (squared L2 of normalised embeddings).

  Args:
    distances: (N,) distance per pair; from cosine similarities use 2 - 2 * cos.
    issame: (N,) bools, True for same-identity pairs.
    fold_ids: (N,) fold label per pair (the protocol's folds, or `contiguous_folds`).
    thresholds: strictly increasing candidate thresholds.
    fars: target FARs for TAR@FAR.
  """
  distances = np.asarray(distances, np.float64)
  if distances.ndim != 1 or not np.all(np.isfinite(distances)):
    raise ValueError(f"distances: expected a finite 1-D array, got shape {distances.shape}")
  issame = _check_labels("issame", issame, len(distances))
  fold_ids = np.asarray(fold_ids)
  if fold_ids.shape != distances.shape:
    raise ValueError(f"fold_ids: expected shape {distances.shape}, got {fold_ids.shape}")
  thresholds = np.asarray(thresholds, np.float64)
  if thresholds.ndim != 1 or len(thresholds) == 0 or np.any(np.diff(thresholds) <= 0):
    raise ValueError("thresholds: expected a non-empty, strictly increasing 1-D array")
  folds, fold_index = np.unique(fold_ids, return_inverse=True)
  if len(folds) < 2:
    raise ValueError(f"fold_ids: need at least 2 folds, got {len(folds)}")

  correct = _correct_counts(distances, issame, fold_index, len(folds), thresholds)
  fold_sizes = np.bincount(fold_index, minlength=len(folds))
  # Counts on the other folds share one denominator, so argmax on counts = on accuracy.
  best = np.argmax(correct.sum(axis=0, keepdims=True) - correct, axis=1)
  fold_accuracies = correct[np.arange(len(folds)), best] / fold_sizes
  far, tar, _ = roc_curve(-distances, issame)
  return VerificationResult(
      accuracy=float(fold_accuracies.mean()),
      accuracy_std=float(fold_accuracies.std()),
      accuracy_sem=float(fold_accuracies.std(ddof=1) / np.sqrt(len(folds))),
      fold_accuracies=fold_accuracies,
      fold_thresholds=thresholds[best],
      auc=roc_auc(far, tar),
      eer=equal_error_rate(far, tar),
      tar_at_far={target: tar_at_far(far, tar, target) for target in fars},
      roc=sampled_roc(far, tar),
  )


def best_threshold_accuracy(distances, issame, thresholds=THRESHOLDS):
  """(accuracy, threshold) at the threshold with the best accuracy over all `pairs` at once.

  What a set too small for k folds, or of one kind of pair only, still gives; the threshold
  is chosen on the pairs it scores, so the accuracy is optimistic (no held-out fold).
  """
  distances = np.asarray(distances, np.float64)
  if distances.ndim != 1 or not len(distances) or not np.all(np.isfinite(distances)):
    raise ValueError(f"distances: expected a finite, non-empty 1-D array, got shape "
                     f"{distances.shape}")
  issame = _check_labels("issame", issame, len(distances))
  thresholds = np.asarray(thresholds, np.float64)
  correct = _correct_counts(distances, issame, np.zeros(len(distances), np.int64), 1,
                            thresholds)[0]
  best = int(np.argmax(correct))
  return float(correct[best] / len(distances)), float(thresholds[best])


def evaluate(embeddings1, embeddings2, issame, fold_ids, fars=DEFAULT_FARS):
  """`evaluate_distances` of pairs of L2-normalised embeddings, (N, D) each."""
  return evaluate_distances(
      squared_distances(embeddings1, embeddings2), issame, fold_ids, fars=fars)
