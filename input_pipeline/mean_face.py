"""The frontal-view mean face l_mean: the target the adversarial loss pulls D's output to.

l_mean is the mean landmark configuration (M, 2) of a data set's near-frontal images
(|yaw| < max_yaw, 10 degrees by default), in the pixel coordinates of its stored images. Data
sets with pose labels (the synthetic faces) select frontal images by their yaw; data sets
without (real photos with detected landmarks) by `estimate_yaw`.

Yaw estimate from 2-D landmarks (iBUG-51 or 68 points): the eye midpoint E (mean of the two
eye centres) and the mouth centre C (mean of the lip points) define the face's vertical axis,
which does not move sideways with yaw; the nose tip N, which sits in front of the eyes, does.
Under (weak-perspective) projection its sideways offset from E is P sin(yaw), P being the
tip's protrusion in front of the eyes, while |E - C| = H is the eye-to-mouth height, so

    yaw = arcsin(clip(NOSE_RATIO * ((N - E) . h) / |E - C|, -1, 1)),

with h the unit vector perpendicular to E - C pointing to the image's right (in-plane roll
cancels) and NOSE_RATIO = H / P = 2.8, an average adult face (the synthetic faces give 2.7 +-
0.4). Positive yaw: the nose moves to the image's right, the convention of the synthetic data.
It is rough (about +-10 degrees at 45) but separates frontal from turned faces, which is all
the mean face needs.
"""
import os

import numpy as np

from input_pipeline import files
from input_pipeline import landmarks as landmarks_lib

DEFAULT_MAX_YAW = 10.0
FILE_NAME = "mean_face.npy"
NOSE_RATIO = 2.8

# iBUG-51 indices (`landmarks.IBUG51_PARTS`).
_RIGHT_EYE = list(landmarks_lib.IBUG51_PARTS["right_eye"])
_LEFT_EYE = list(landmarks_lib.IBUG51_PARTS["left_eye"])
_LIPS = (list(landmarks_lib.IBUG51_PARTS["outer_lips"])
         + list(landmarks_lib.IBUG51_PARTS["inner_lips"]))
_NOSE_TIP = landmarks_lib.IBUG51_PARTS["nose_bridge"][-1]


def _as_51(points):
  points = np.asarray(points, np.float64)
  if points.ndim != 3 or points.shape[-1] != 2:
    raise ValueError(f"landmarks must have shape (N, M, 2), got {points.shape}")
  if landmarks_lib.scheme_for(points.shape[1]) == "ibug68":
    return landmarks_lib.ibug68_to_51(points)
  return points


def estimate_yaw(points):
  """Yaw in degrees (N,) of faces from their (N, 51 or 68, 2) landmarks (module docstring)."""
  points = _as_51(points)
  eyes = (points[:, _RIGHT_EYE].mean(1) + points[:, _LEFT_EYE].mean(1)) / 2
  up = eyes - points[:, _LIPS].mean(1)
  height = np.linalg.norm(up, axis=-1)
  right = np.stack([-up[:, 1], up[:, 0]], -1) / height[:, None]
  offset = np.einsum("ni,ni->n", points[:, _NOSE_TIP] - eyes, right)
  return np.rad2deg(np.arcsin(np.clip(NOSE_RATIO * offset / height, -1.0, 1.0)))


def compute(points, yaw=None, max_yaw=DEFAULT_MAX_YAW):
  """l_mean (M, 2) float32: the mean of the landmarks of images with |yaw| < max_yaw.

  points: (N, M, 2) pixel landmarks; yaw: (N,) degrees, or None to estimate it from the
  landmarks.
  """
  points = np.asarray(points, np.float64)
  if points.ndim != 3 or points.shape[-1] != 2:
    raise ValueError(f"landmarks must have shape (N, M, 2), got {points.shape}")
  yaw = estimate_yaw(points) if yaw is None else np.asarray(yaw, np.float64)
  if yaw.shape != points.shape[:1]:
    raise ValueError(f"yaw must have shape ({len(points)},), got {yaw.shape}")
  frontal = np.abs(yaw) < max_yaw
  if not frontal.any():
    raise ValueError(f"no image has |yaw| < {max_yaw} degrees (of {len(points)}), so there is "
                     f"no frontal mean face; raise max_yaw")
  return points[frontal].mean(0).astype(np.float32)


def write(directory, mean):
  """Stores l_mean as `mean_face.npy` in `directory`; returns the file's path."""
  mean = np.asarray(mean, np.float32)
  if mean.ndim != 2 or mean.shape[1] != 2:
    raise ValueError(f"the mean face must have shape (M, 2), got {mean.shape}")
  files.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, FILE_NAME)
  with files.open(path, "wb") as f:
    np.save(f, mean)
  return path


def read(directory):
  """l_mean (M, 2) float32 stored by `write` in `directory` (e.g. a TFDS builder's data_dir)."""
  path = os.path.join(os.fspath(directory), FILE_NAME)
  if not files.isfile(path):
    raise FileNotFoundError(f"no mean face at {path}: build the data set first (the synthetic "
                            f"builder writes it) or call mean_face.write")
  with files.open(path, "rb") as f:
    mean = np.load(f)
  if mean.ndim != 2 or mean.shape[1] != 2 or mean.dtype != np.float32:
    raise ValueError(f"{path}: expected a float32 (M, 2) array, got {mean.dtype} {mean.shape}")
  return mean
