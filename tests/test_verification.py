"""Verification numerics against loop references written from the protocol and hand cases."""
import numpy as np
import pytest
from sklearn import metrics, model_selection

from aprn_jax.evaluation import verification


def reference_kfold(distances, issame, fold_ids, thresholds):
  """insightface's protocol, literally: per fold, best threshold on the others, first on ties."""
  accuracies, chosen = [], []
  for fold in np.unique(fold_ids):
    train, test = fold_ids != fold, fold_ids == fold
    best_accuracy, best_threshold = -1.0, None
    for threshold in thresholds:
      accuracy = np.mean((distances[train] < threshold) == issame[train])
      if accuracy > best_accuracy:
        best_accuracy, best_threshold = accuracy, threshold
    accuracies.append(np.mean((distances[test] < best_threshold) == issame[test]))
    chosen.append(best_threshold)
  return np.array(accuracies), np.array(chosen)


def loop_distances(a, b):
  return np.array([sum((float(x) - float(y))**2 for x, y in zip(u, v)) for u, v in zip(a, b)])


def random_pairs(rng, num_pairs, dim, noise):
  """Unit embeddings; same pairs are noisy copies, different pairs independent."""
  def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  first = unit(rng.standard_normal((num_pairs, dim)))
  issame = rng.random(num_pairs) < 0.5
  second = np.where(issame[:, None], first + noise * rng.standard_normal((num_pairs, dim)),
                    rng.standard_normal((num_pairs, dim)))
  return first, unit(second), issame


def test_contiguous_folds_match_sklearn_kfold():
  for num_pairs in (7000, 6003, 10):
    folds = verification.contiguous_folds(num_pairs)
    for fold, (_, test) in enumerate(model_selection.KFold(10).split(np.arange(num_pairs))):
      np.testing.assert_array_equal(np.flatnonzero(folds == fold), test)
  with pytest.raises(ValueError, match="num_folds"):
    verification.contiguous_folds(5, 10)


def test_hand_computed_two_folds_with_a_tie():
  # Fold 1 (0.7 same, 1.0 different) picks t = 1.0: 1.0 < 1.0 is False, so "different".
  # Fold 0 (0.2 same, 1.2 different) is perfect at 0.5 and 1.0 and picks the first, 0.5.
  result = verification.evaluate_distances(
      [0.2, 1.2, 0.7, 1.0], [True, False, True, False], [0, 0, 1, 1],
      thresholds=[0.5, 1.0, 1.5])
  np.testing.assert_array_equal(result.fold_thresholds, [1.0, 0.5])
  np.testing.assert_array_equal(result.fold_accuracies, [1.0, 0.5])
  assert result.accuracy == 0.75
  assert result.accuracy_std == 0.25
  assert result.accuracy_sem == pytest.approx(0.25)


def test_random_embeddings_match_reference():
  rng = np.random.default_rng(0)
  first, second, issame = random_pairs(rng, 1000, 16, noise=0.9)
  folds = verification.contiguous_folds(len(issame))
  result = verification.evaluate(first, second, issame, folds)
  distances = loop_distances(first, second)
  accuracies, thresholds = reference_kfold(distances, issame, folds, verification.THRESHOLDS)
  assert 0.6 < result.accuracy < 0.99
  np.testing.assert_array_equal(result.fold_accuracies, accuracies)
  np.testing.assert_array_equal(result.fold_thresholds, thresholds)
  assert result.accuracy == pytest.approx(accuracies.mean())
  assert result.accuracy_std == pytest.approx(np.sqrt(np.mean((accuracies - accuracies.mean())**2)))
  assert result.accuracy_sem == pytest.approx(accuracies.std(ddof=1) / np.sqrt(10))


def test_distances_exactly_on_thresholds_match_reference():
  rng = np.random.default_rng(1)
  thresholds = verification.THRESHOLDS
  issame = rng.random(700) < 0.5
  # Every distance is one of the threshold values; same pairs sit lower on the grid.
  grid_index = np.where(issame, rng.integers(50, 150, 700), rng.integers(100, 250, 700))
  distances = thresholds[grid_index]
  fold_ids = rng.integers(0, 7, 700)  # protocol folds need not be contiguous
  result = verification.evaluate_distances(distances, issame, fold_ids)
  accuracies, chosen = reference_kfold(distances, issame, fold_ids, thresholds)
  np.testing.assert_array_equal(result.fold_accuracies, accuracies)
  np.testing.assert_array_equal(result.fold_thresholds, chosen)


def test_hand_built_embeddings_on_threshold_two():
  # Distances 0, 2 (orthogonal: exactly THRESHOLDS[200]) and 4 (opposite).
  x, y = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
  first = np.stack([x, x, x, x, x, x, y, y] * 5)
  second = np.stack([x, y, -x, y, x, y, -y, x] * 5)
  issame = np.array([1, 1, 0, 1, 1, 0, 0, 1] * 5, bool)
  folds = verification.contiguous_folds(len(issame), 5)
  result = verification.evaluate(first, second, issame, folds)
  distances = loop_distances(first, second)
  assert set(distances) == {0.0, 2.0, 4.0}
  # Three of the four pairs at distance 2 are same: the first threshold above 2 wins.
  np.testing.assert_array_equal(result.fold_thresholds, verification.THRESHOLDS[201])
  assert result.accuracy == 7 / 8
  accuracies, chosen = reference_kfold(distances, issame, folds, verification.THRESHOLDS)
  np.testing.assert_array_equal(result.fold_accuracies, accuracies)
  np.testing.assert_array_equal(result.fold_thresholds, chosen)


def test_roc_numbers_hand_computed():
  # Genuine 0.9, 0.8, 0.4; impostor 0.7, 0.3, 0.2. Curve (0,0) (0,1/3) (0,2/3) (1/3,2/3)
  # (1/3,1) (2/3,1) (1,1). 8 of 9 genuine-impostor pairs are ordered right.
  scores = [0.9, 0.7, 0.8, 0.3, 0.4, 0.2]
  genuine = [True, False, True, False, True, False]
  far, tar, thresholds = verification.roc_curve(scores, genuine)
  np.testing.assert_allclose(far, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
  np.testing.assert_allclose(tar, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
  np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.7, 0.4, 0.3, 0.2])
  assert verification.roc_auc(far, tar) == pytest.approx(8 / 9)
  assert verification.equal_error_rate(far, tar) == pytest.approx(1 / 3)
  assert verification.tar_at_far(far, tar, 0.0) == pytest.approx(2 / 3)
  assert verification.tar_at_far(far, tar, 0.3) == pytest.approx(2 / 3)
  assert verification.tar_at_far(far, tar, 1 / 3) == pytest.approx(1.0)


def test_roc_ties_are_not_split():
  # Genuine 0.5, 0.5; impostor 0.5, 0.1: the three 0.5s are accepted together.
  far, tar, _ = verification.roc_curve([0.5, 0.5, 0.5, 0.1], [True, True, False, False])
  np.testing.assert_allclose(far, [0, 0.5, 1])
  np.testing.assert_allclose(tar, [0, 1, 1])
  assert verification.roc_auc(far, tar) == pytest.approx(0.75)  # 2 wins + 2 half ties of 4
  assert verification.tar_at_far(far, tar, 0.1) == 0.0
  # On the segment (0,0)-(0.5,1): FAR = 0.5 s = FRR = 1 - s at s = 2/3.
  assert verification.equal_error_rate(far, tar) == pytest.approx(1 / 3)


def test_roc_numbers_match_brute_force():
  rng = np.random.default_rng(2)
  genuine = rng.random(400) < 0.3
  scores = np.round(rng.standard_normal(400) + genuine, 1)  # rounding makes many ties
  far, tar, _ = verification.roc_curve(scores, genuine)
  assert verification.roc_auc(far, tar) == pytest.approx(metrics.roc_auc_score(genuine, scores))
  for target in (0.0, 0.01, 0.05, 0.3):
    best = 0.0
    for threshold in np.unique(scores):
      accepted = scores >= threshold
      if accepted[~genuine].mean() <= target:
        best = max(best, accepted[genuine].mean())
    assert verification.tar_at_far(far, tar, target) == pytest.approx(best)


def test_evaluate_reports_roc_numbers_of_negative_distances():
  rng = np.random.default_rng(3)
  first, second, issame = random_pairs(rng, 500, 8, noise=0.7)
  result = verification.evaluate(first, second, issame, verification.contiguous_folds(500),
                                 fars=(1e-3, 1e-1))
  distances = loop_distances(first, second)
  assert result.auc == pytest.approx(metrics.roc_auc_score(issame, -distances))
  assert set(result.tar_at_far) == {1e-3, 1e-1}
  assert result.as_dict()["tar_at_far"]["0.1"] == result.tar_at_far[1e-1]


def test_bad_inputs_raise():
  x = np.ones((4, 2), np.float32)
  with pytest.raises(ValueError, match="L2-normalised"):
    verification.evaluate(x, x, [True] * 4, [0, 0, 1, 1])
  with pytest.raises(ValueError, match="at least 2 folds"):
    verification.evaluate_distances([0.1, 0.2], [True, False], [0, 0])
  with pytest.raises(ValueError, match="issame"):
    verification.evaluate_distances([0.1, 0.2], [2, 0], [0, 1])
  with pytest.raises(ValueError, match="impostor"):
    verification.roc_curve([0.1, 0.2], [True, True])


def test_best_threshold_accuracy_over_all_pairs():
  """What a set too small for folds, or of genuine pairs only, still gives."""
  distances = np.array([0.2, 0.5, 0.8, 1.0, 2.5])
  accuracy, threshold = verification.best_threshold_accuracy(
      distances, [True, True, False, True, False])
  assert accuracy == 0.8 and threshold == pytest.approx(0.51)  # the smallest of the best
  assert verification.best_threshold_accuracy(distances, [True] * 5) == (1.0, pytest.approx(2.51))
  with pytest.raises(ValueError, match="non-empty"):
    verification.best_threshold_accuracy([], [])
