"""Five-point face alignment to the ArcFace template, as IJB-B/C evaluation crops its images.

The five points (left eye, right eye, nose tip, left and right mouth corners) of an image are
mapped onto `ARCFACE_TEMPLATE` (its coordinates for a 112x112 crop, scaled by size / 112 for
other sizes) by the least-squares similarity transform (Umeyama's, rotations only: a
reflection would mirror the face), and the image is resampled through it: bilinear, black
outside the image (as insightface's IJB code does with OpenCV). Coordinates are pixel coordinates with pixel centres at integers (the
convention of the IJB-B/C landmark files); matrices are 2x3, `[A | t]`, mapping a point p of
the source to A p + t in the output.
"""
import concurrent.futures

import numpy as np
from PIL import Image

from input_pipeline import files

ARCFACE_SIZE = 112
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]])
# From pixel centres at integers to PIL's convention (pixel centres at half-integers), and back.
_TO_PIL = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
_FROM_PIL = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])


def template(size):
  """(5, 2) float64: the ArcFace five points for a `size` x `size` crop."""
  return ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)


def similarity_transform(source, target):
  """2x3 float64: the similarity transform (scale, rotation, shift) mapping the (K, 2) points
  `source` closest to `target` in the least-squares sense (Umeyama 1991, no reflection)."""
  source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
  if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2:
    raise ValueError(f"similarity_transform: expected two (K, 2) arrays, got {source.shape} "
                     f"and {target.shape}")
  source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
  centred_source, centred_target = source - source_mean, target - target_mean
  covariance = centred_target.T @ centred_source / len(source)
  u, singular, vt = np.linalg.svd(covariance)
  signs = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
  rotation = u @ np.diag(signs) @ vt
  variance = (centred_source ** 2).sum(axis=1).mean()
  if variance == 0:
    raise ValueError("similarity_transform: the source points all coincide")
  scale = (singular * signs).sum() / variance
  return np.hstack([scale * rotation, (target_mean - scale * rotation @ source_mean)[:, None]])


def apply(matrix, points):
  """(K, 2) points moved by a 2x3 matrix."""
  points = np.asarray(points, np.float64)
  return points @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def warp(image, matrix, size):
  """uint8 (size, size, 3): `image` (H, W, 3) uint8 moved by `matrix` (source pixels to
  output pixels), sampled bilinearly and rounded; 0 more than half a pixel outside the
  source (within that half pixel, its edge pixels).

  Each channel is resampled as a float image: Pillow's 8-bit resampling truncates, which
  would darken every warped image by half a level on average.
  """
  inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))
  coefficients = tuple((_TO_PIL @ inverse @ _FROM_PIL)[:2].ravel())  # output -> source
  image = np.asarray(image, np.float32)
  channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).transform(
      (size, size), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR))
      for c in range(image.shape[-1])]
  return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def align(image, points, size):
  """uint8 (size, size, 3): `image` with its (5, 2) points moved onto `template(size)`."""
  return warp(image, similarity_transform(points, template(size)), size)


def _load_aligned(path, points, size):
  if not files.isfile(path):
    raise FileNotFoundError(f"image file not found: {path}")
  try:
    with files.open(path, "rb") as f, Image.open(f) as file:
      image = np.asarray(file.convert("RGB"))
  except (OSError, SyntaxError, ValueError) as error:
    raise ValueError(f"cannot decode image file {path}: {error}") from None
  return align(image, points, size)


def load_aligned(paths, points, size, num_threads=8):
  """uint8 (N, size, size, 3): the image files aligned by their (N, 5, 2) points."""
  if not len(paths):
    return np.zeros((0, size, size, 3), np.uint8)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    return np.stack(list(pool.map(lambda item: _load_aligned(*item, size),
                                  zip(paths, points))))
