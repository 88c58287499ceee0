"""Readers for MegaFace Challenge 1: the FaceScrub probe and distractor lists, feature files.

Lists (JSON, paths relative to an image root the caller gives):
- probes, e.g. `facescrub_features_list.json`: `{"id": [name, ...], "path": [path, ...]}`,
  one identity name per image;
- distractors, e.g. `megaface_features_list.json_1000000_1`: `{"path": [path, ...]}`.
Feature files (the devkit's OpenCV matrix format, one per image): four little-endian int32
(rows, cols, bytes per row, OpenCV type; 5 = CV_32F), then rows x cols float32 row-major. A
feature vector is a (dim, 1) matrix. `aprn_jax.evaluation.identification.
identify_with_distractors` takes the probes' embeddings with `ProbeList.labels` and the
distractors' embeddings.
"""
import dataclasses
import json
import os

import numpy as np

from input_pipeline import files

CV_32F = 5
_HEADER = np.dtype("<i4")
_HEADER_BYTES = 4 * _HEADER.itemsize
_FLOAT = np.dtype("<f4")


@dataclasses.dataclass(frozen=True)
class ProbeList:
  """FaceScrub probes: absolute image paths, int64 labels (index into `names`), the names."""
  paths: list[str]
  labels: np.ndarray
  names: list[str]


def _read_json(path, keys):
  """The lists under `keys` in the JSON object of `path`, all of one length, of strings."""
  path = os.fspath(path)
  if not files.isfile(path):
    raise FileNotFoundError(f"list file not found: {path}")
  try:
    with files.open(path, encoding="utf-8") as f:
      contents = json.load(f)
  except (ValueError, UnicodeDecodeError) as error:
    raise ValueError(f"{path}: not a JSON file: {error}") from None
  if not isinstance(contents, dict):
    raise ValueError(f"{path}: expected a JSON object with keys {list(keys)}, got "
                     f"{type(contents).__name__}")
  lists = []
  for key in keys:
    values = contents.get(key)
    if not isinstance(values, list):
      raise ValueError(f"{path}: expected a list under {key!r}, got "
                       f"{type(values).__name__}")
    for i, value in enumerate(values):
      if not isinstance(value, str) or not value:
        raise ValueError(f"{path}: {key}[{i}] is {value!r}, not a non-empty string")
    lists.append(values)
  if len({len(values) for values in lists}) > 1:
    raise ValueError(f"{path}: lists {list(keys)} differ in length: "
                     f"{[len(values) for values in lists]}")
  return lists


def _image_paths(list_file, relative_paths, image_root, check_images):
  """Absolute paths under image_root; with check_images, a missing file raises."""
  image_root = files.abspath(image_root)
  paths = [files.normpath(os.path.join(image_root, p)) for p in relative_paths]
  if check_images:
    for i, path in enumerate(paths):
      if not files.isfile(path):
        raise FileNotFoundError(f"{list_file}: path[{i}]: image not found: {path}")
  return paths


def read_probe_list(list_file, image_root, check_images=True):
  """The FaceScrub probe list; labels number the names in sorted order."""
  ids, relative_paths = _read_json(list_file, ("id", "path"))
  names, labels = np.unique(np.array(ids, dtype=object), return_inverse=True)
  return ProbeList(
      paths=_image_paths(list_file, relative_paths, image_root, check_images),
      labels=labels.astype(np.int64).reshape(-1),
      names=[str(name) for name in names])


def read_distractor_list(list_file, image_root, check_images=True):
  """Absolute image paths of a MegaFace distractor list."""
  (relative_paths,) = _read_json(list_file, ("path",))
  return _image_paths(list_file, relative_paths, image_root, check_images)


def read_feature_file(path):
  """The float32 (rows, cols) matrix of a feature file; header and size must agree."""
  path = os.fspath(path)
  if not files.isfile(path):
    raise FileNotFoundError(f"feature file not found: {path}")
  with files.open(path, "rb") as f:
    data = f.read()
  if len(data) < _HEADER_BYTES:
    raise ValueError(f"{path}: {len(data)} bytes, shorter than the {_HEADER_BYTES}-byte "
                     f"header")
  rows, cols, stride, cv_type = np.frombuffer(data, _HEADER, 4).tolist()
  if cv_type != CV_32F:
    raise ValueError(f"{path}: matrix type {cv_type}, expected {CV_32F} (CV_32F)")
  if rows < 0 or cols < 0 or stride != cols * _FLOAT.itemsize:
    raise ValueError(f"{path}: header rows={rows}, cols={cols}, row bytes={stride} is not a "
                     f"dense float32 matrix")
  expected = _HEADER_BYTES + rows * stride
  if len(data) != expected:
    raise ValueError(f"{path}: header says {rows} x {cols} float32 ({expected} bytes with "
                     f"the header), file has {len(data)} bytes")
  return np.frombuffer(data, _FLOAT, rows * cols, _HEADER_BYTES).reshape(rows, cols).copy()


def write_feature_file(path, matrix):
  """Writes a float32 matrix (a 1-D vector becomes (dim, 1), as MegaFace stores features)."""
  matrix = np.asarray(matrix, _FLOAT)
  if matrix.ndim == 1:
    matrix = matrix[:, None]
  if matrix.ndim != 2:
    raise ValueError(f"matrix: expected 1 or 2 dimensions, got shape {matrix.shape}")
  rows, cols = matrix.shape
  files.makedirs(os.path.dirname(files.abspath(path)), exist_ok=True)
  with files.open(path, "wb") as f:
    f.write(np.array([rows, cols, cols * _FLOAT.itemsize, CV_32F], _HEADER).tobytes())
    f.write(np.ascontiguousarray(matrix).tobytes())


def read_features(paths):
  """float32 (N, D): the feature vector of each file (a (D, 1) or (1, D) matrix), stacked."""
  paths = list(paths)
  vectors = []
  for path in paths:
    matrix = read_feature_file(path)
    if min(matrix.shape) != 1:
      raise ValueError(f"{path}: a {matrix.shape} matrix, not a feature vector")
    vectors.append(matrix.ravel())
    if vectors[0].shape != vectors[-1].shape:
      raise ValueError(f"{path}: {len(vectors[-1])} numbers, but {paths[0]} has "
                       f"{len(vectors[0])}")
  if not vectors:
    raise ValueError("read_features: no feature files")
  return np.stack(vectors)
