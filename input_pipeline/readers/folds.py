"""insightface's verification folds: contiguous blocks of pairs in file order, as sklearn's
KFold(n_splits, shuffle=False) makes them (the .bin packs, `readers.insightface_bin`, carry no
folds of their own; `aprn_jax.evaluation.verification` scores any protocol's folds)."""
import numpy as np


def contiguous_folds(num_pairs, num_folds=10):
  """Fold id per pair for contiguous folds, as sklearn KFold(n_splits, shuffle=False).

  The first num_pairs % num_folds folds hold one pair more than the others.
  """
  if num_folds < 2 or num_pairs < num_folds:
    raise ValueError(
        f"contiguous_folds: need 2 <= num_folds <= num_pairs, got num_folds={num_folds}, "
        f"num_pairs={num_pairs}")
  sizes = np.full(num_folds, num_pairs // num_folds)
  sizes[:num_pairs % num_folds] += 1
  return np.repeat(np.arange(num_folds), sizes)
