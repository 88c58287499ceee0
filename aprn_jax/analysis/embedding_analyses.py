"""The paper's embedding-level pose analyses (Fig. 2 and the frontal-vs-profile SVM).

- `pose_svm`: how linearly separable frontal and profile embeddings are; a pose-invariant
  model should bring the held-out accuracy towards chance (paper, CFP: 94.95% baseline,
  85.20% APRN, from 5000 training and 2000 test images; `sample_train_test`).
- `centroid_distance`: how compact identities are.
- `tsne_png`: the Fig. 2 picture: identities by colour, frontal as dots, profile as circles.
"""
import colorsys
import os

import numpy as np
import threadpoolctl
from PIL import Image, ImageDraw
from sklearn import manifold, svm

from aprn_jax.analysis import figures
from aprn_jax.evaluation import embeddings as embeddings_lib


def _check_per_image(name, values, num_images):
  values = np.asarray(values)
  if values.shape != (num_images,):
    raise ValueError(f"{name}: expected shape ({num_images},), got {values.shape}")
  return values


def sample_train_test(num_images, num_train=5000, num_test=2000, seed=0):
  """Disjoint, sorted random train and test image indices; the same for the same seed."""
  if num_train < 1 or num_test < 1 or num_train + num_test > num_images:
    raise ValueError(
        f"sample_train_test: cannot draw {num_train} train + {num_test} test images "
        f"from {num_images}")
  permutation = np.random.default_rng(seed).permutation(num_images)
  return np.sort(permutation[:num_train]), np.sort(permutation[num_train:num_train + num_test])


def pose_svm(embeddings, is_profile, train_idx, test_idx, C=1.0):
  """{"train_accuracy", "val_accuracy"} of a linear SVM telling profile from frontal.

  Fits sklearn's LinearSVC (deterministic) on embeddings[train_idx] and scores it on both
  index sets.
  """
  embeddings = np.asarray(embeddings, np.float32)
  is_profile = _check_per_image("is_profile", is_profile, len(embeddings)).astype(bool)
  train_idx, test_idx = np.asarray(train_idx), np.asarray(test_idx)
  if len(np.unique(is_profile[train_idx])) != 2:
    raise ValueError("train_idx: the training images must include frontal and profile faces")
  classifier = svm.LinearSVC(C=C, random_state=0, max_iter=10000)
  classifier.fit(embeddings[train_idx], is_profile[train_idx])
  return {
      "train_accuracy": float(classifier.score(embeddings[train_idx], is_profile[train_idx])),
      "val_accuracy": float(classifier.score(embeddings[test_idx], is_profile[test_idx])),
  }


def centroid_distance(embeddings, labels):
  """(mean, std) over images of the cosine distance 1 - cos(embedding, identity centroid).

  Embeddings are L2-normalised first; an identity's centroid is the mean of its normalised
  embeddings, renormalised. Every image counts once (an identity with a single image adds a
  distance of 0); std has ddof=0.
  """
  embeddings = embeddings_lib.l2_normalize(embeddings).astype(np.float64)
  labels = _check_per_image("labels", labels, len(embeddings))
  identities, identity_index = np.unique(labels, return_inverse=True)
  centroids = np.zeros((len(identities), embeddings.shape[1]))
  np.add.at(centroids, identity_index, embeddings)
  centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
  distances = 1.0 - np.einsum("ij,ij->i", embeddings, centroids[identity_index])
  return float(distances.mean()), float(distances.std())


def _identity_colours(num_identities):
  """Evenly spaced hues, as RGB tuples."""
  return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / num_identities, 0.85, 0.85))
          for i in range(num_identities)]


def tsne_png(embeddings, labels, is_profile, path, num_identities=10, seed=0,
             image_size=800, perplexity=30.0):
  """Draws a t-SNE of `num_identities` random identities to a PNG; returns (indices, points).

  Identities are drawn with `seed`, which also seeds t-SNE, so the picture is reproducible.
  Each identity has its own colour; frontal images are filled dots, profile images open
  circles. Returns the indices of the drawn images and their 2-D t-SNE coordinates.
  """
  path = os.fspath(path)
  if os.path.splitext(path)[1].lower() != ".png":
    raise ValueError(f"{path}: the t-SNE picture must be a .png file")
  embeddings = embeddings_lib.l2_normalize(embeddings)
  labels = _check_per_image("labels", labels, len(embeddings))
  is_profile = _check_per_image("is_profile", is_profile, len(embeddings)).astype(bool)
  identities = np.unique(labels)
  if num_identities < 1 or num_identities > len(identities):
    raise ValueError(
        f"num_identities: must be in 1..{len(identities)} (identities present), "
        f"got {num_identities}")
  chosen = np.sort(np.random.default_rng(seed).choice(identities, num_identities,
                                                      replace=False))
  indices = np.flatnonzero(np.isin(labels, chosen))
  if len(indices) < 3:
    raise ValueError(f"tsne_png: need at least 3 images, the chosen identities have "
                     f"{len(indices)}")
  tsne = manifold.TSNE(n_components=2, perplexity=min(perplexity, len(indices) - 1.0),
                       init="pca", random_state=seed)
  # One thread: a figure's few hundred points gain nothing from threads, and t-SNE's many
  # small parallel steps stall when other processes share the cores.
  with threadpoolctl.threadpool_limits(limits=1):
    points = tsne.fit_transform(embeddings[indices].astype(np.float64))

  margin, radius = 40, max(3, image_size // 130)
  low, high = points.min(axis=0), points.max(axis=0)
  scale = (image_size - 2 * margin) / max(float(np.max(high - low)), 1e-12)
  pixels = image_size / 2 + (points - (low + high) / 2) * scale  # centred, aspect kept
  image = Image.new("RGB", (image_size, image_size), "white")
  draw = ImageDraw.Draw(image)
  colours = _identity_colours(num_identities)
  colour_index = np.searchsorted(chosen, labels[indices])
  for (x, y), c, profile in zip(pixels, colour_index, is_profile[indices]):
    box = (x - radius, y - radius, x + radius, y + radius)
    if profile:
      draw.ellipse(box, outline=colours[c], width=2)
    else:
      draw.ellipse(box, fill=colours[c])
  draw.text((10, 10), f"t-SNE, {num_identities} identities: dots frontal, circles profile",
            fill="black")
  figures.save_png(image, path)
  return indices, points
