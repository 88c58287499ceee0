"""Pieces the benchmark families share: pair verification figures and input checks."""
import numpy as np

from aprn_jax.evaluation import intervals, verification
from input_pipeline.readers import images as images_lib

VERIFICATION_FIELDS = ("accuracy", "accuracy_std", "accuracy_sem", "auc", "eer", "tar_at_far",
                       "roc")
VERIFICATION_TABLE_KEYS = ("accuracy", "auc", "eer", "tar_at_far")


def pair_results(emb, pairs, clusters):
  """Verification figures of `pairs` with their intervals; clusters: (P,) the person each
  pair belongs to, resampled together by the TAR bootstrap."""
  distances = verification.squared_distances(emb[pairs.index_a], emb[pairs.index_b])
  result = verification.evaluate_distances(distances, pairs.is_same, pairs.fold)
  out = {k: v for k, v in result.as_dict().items() if k in VERIFICATION_FIELDS}
  out["accuracy_ci"] = list(intervals.t_interval(result.fold_accuracies))
  tar_ci = intervals.tar_at_far_bootstrap(-distances, pairs.is_same, clusters,
                                          list(result.tar_at_far))
  out["tar_at_far_ci"] = {f"{far:g}": list(ci) for far, ci in tar_ci.items()}
  return out


def person_of_first_image(pairs, person_of_path):
  return np.array([person_of_path(pairs.paths[i]) for i in pairs.index_a])


def first_image(image_paths):
  """Decodes the first image of a list: the image root and format are right."""
  if len(image_paths):
    images_lib.decode_image(images_lib.read_file_bytes(image_paths[0]), 8,
                            f"image file {image_paths[0]}")
