"""Pose SVM, centroid distance and the t-SNE picture on constructed embeddings."""
import numpy as np
import pytest
from PIL import Image

from aprn_jax.analysis import embedding_analyses


def constructed_embeddings(pose_encoded, seed=0):
  """50 identities x 14 images (10 frontal, 4 profile, as CFP); pose on axis 0 if encoded."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(50), 14)
  is_profile = np.tile(np.r_[np.zeros(10, bool), np.ones(4, bool)], 50)
  values = rng.standard_normal((50, 16))[labels] + 0.3 * rng.standard_normal((700, 16))
  if pose_encoded:
    values[:, 0] = np.where(is_profile, 3.0, -3.0) + 0.3 * rng.standard_normal(700)
  return values / np.linalg.norm(values, axis=1, keepdims=True), labels, is_profile


def test_sample_train_test_is_deterministic_and_disjoint():
  train, test = embedding_analyses.sample_train_test(7000)
  assert len(train) == 5000 and len(test) == 2000
  assert not set(train) & set(test)
  again = embedding_analyses.sample_train_test(7000)
  np.testing.assert_array_equal(train, again[0])
  np.testing.assert_array_equal(test, again[1])
  other = embedding_analyses.sample_train_test(7000, seed=1)
  assert not np.array_equal(train, other[0])
  with pytest.raises(ValueError, match="cannot draw 5000 train"):
    embedding_analyses.sample_train_test(6000)


def test_pose_svm_separates_encoded_pose_only():
  train, test = embedding_analyses.sample_train_test(700, 500, 200)
  values, _, is_profile = constructed_embeddings(pose_encoded=True)
  encoded = embedding_analyses.pose_svm(values, is_profile, train, test)
  assert encoded["val_accuracy"] >= 0.99 and encoded["train_accuracy"] >= 0.99
  # Pose labels unrelated to the embeddings: balanced classes, held-out accuracy ~ chance.
  values, _, _ = constructed_embeddings(pose_encoded=False)
  random_pose = np.random.default_rng(5).permutation(np.arange(700) % 2 == 0)
  chance = embedding_analyses.pose_svm(values, random_pose, train, test)
  assert 0.4 <= chance["val_accuracy"] <= 0.6


def test_centroid_distance_hand_computed():
  # Identity 0: (1, 0) and (0, 1): centroid along (1, 1), each at 1 - cos 45 deg.
  # Identity 1: one image (scaled; normalised first), distance 0.
  a = 1 - np.sqrt(0.5)
  mean, std = embedding_analyses.centroid_distance([[1, 0], [0, 1], [3, 0]], [0, 0, 1])
  assert mean == pytest.approx(2 * a / 3)
  assert std == pytest.approx(np.std([a, a, 0.0]))


def test_tsne_png(tmp_path):
  values, labels, is_profile = constructed_embeddings(pose_encoded=True)
  path = tmp_path / "tsne.png"
  indices, points = embedding_analyses.tsne_png(values, labels, is_profile, path,
                                                num_identities=6, image_size=400)
  assert len(np.unique(labels[indices])) == 6 and len(indices) == 6 * 14
  assert points.shape == (84, 2)
  with Image.open(path) as image:
    assert image.format == "PNG" and image.size == (400, 400)
    colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=100000)}
  assert len(colours) > 6  # white, black text and the identity colours
  _, again = embedding_analyses.tsne_png(values, labels, is_profile, tmp_path / "again.png",
                                         num_identities=6, image_size=400)
  np.testing.assert_array_equal(points, again)
  with pytest.raises(ValueError, match="num_identities"):
    embedding_analyses.tsne_png(values, labels, is_profile, path, num_identities=51)
