"""Landmark side tables of the real-face builders: which file, which format, which key.

A manual_dir holds exactly one of:
- `landmarks.csv`: one line per image, `key,x1,y1,...,xM,yM`, no header (for a face folder,
  the landmarks.csv format of `input_pipeline.readers.images`);
- `landmarks.npy` + `landmarks_keys.txt`: a float (N, M, 2) array and N non-blank lines, the
  key of row i on line i + 1.

Keys: `face_folder`: the image's path relative to manual_dir, '/'-separated
(`identity/name.jpg`; a path with a comma needs the .npy table); `insightface_rec`: the
record's integer key in `train.idx` (its index).
Coordinates are pixels of the image as stored in the user's file (convention of
`input_pipeline.landmarks`); M = 51 or 68, the same on every line; 68 points are reduced to
the iBUG-51 scheme (jaw dropped).

A problem of one image's entry (another point count, a non-number, NaN or inf, an all-NaN
.npy row) does not stop the reading: `Table.lookup` raises it for that image only, so the
builder can refuse or skip just that image. Problems of the table as a whole (no entries, a
key that is not a valid key, a key twice, a .npy of the wrong shape) are raised at once.
Errors name the file and the 1-based line (`path:line: message`) or the .npy row.
"""
import os
import posixpath

import numpy as np

from input_pipeline import files
from input_pipeline import landmarks as landmarks_lib
from input_pipeline.readers import images as images_lib

CSV_NAME = "landmarks.csv"
NPY_NAME = "landmarks.npy"
KEYS_NAME = "landmarks_keys.txt"
_COUNTS = tuple(sorted(landmarks_lib.NUM_POINTS.values()))  # 51, 68


def path_key(text):
  """A face_folder key: the relative path, normalised and '/'-separated."""
  key = posixpath.normpath(text.strip().replace("\\", "/"))
  if not text.strip() or key.startswith(("/", "../")) or key == "..":
    raise ValueError(f"key {text!r} is not a path inside the data folder")
  return key


def index_key(text):
  """An insightface_rec key: the record's integer index."""
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"key {text!r} is not a record index (an integer)") from None


def _to_51(points):
  return landmarks_lib.ibug68_to_51(points) if len(points) == 68 else points


class Table:
  """Landmarks by key: (51, 2) float32 pixels, or the problem of that key's entry."""

  def __init__(self, path, points, problems):
    self.path = path
    self._points = points
    self._problems = problems

  def __len__(self):
    return len(self._points) + len(self._problems)

  def keys(self):
    """Every key of the table, with or without usable landmarks."""
    return set(self._points) | set(self._problems)

  def lookup(self, key):
    """The key's (51, 2) float32 landmarks; a ValueError naming the table if it has none."""
    if key in self._points:
      return self._points[key]
    if key in self._problems:
      raise ValueError(self._problems[key])
    raise ValueError(f"{self.path}: no landmarks for {key}")


def _row_points(row, expected):
  """(M, 2) float64 of a CSV row, or the row's error."""
  count = len(row.fields) - 1
  if expected is None and count not in [2 * n for n in _COUNTS]:
    raise row.error(f"expected a key and 2 * 51 or 2 * 68 numbers, got {count} numbers")
  if expected is not None and count != expected[0]:
    raise row.error(f"expected a key and {expected[0]} numbers like line {expected[1]}, got "
                    f"{count} numbers")
  try:
    values = np.array(row.fields[1:], np.float64)
  except ValueError:
    values = np.array([row.number(i, "coordinate") for i in range(1, count + 1)])
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    row.number(int(bad[0]) + 1, "coordinate")  # raises: "... is not finite"
  return values.reshape(-1, 2)


def _new_key(row, key_fn, points, problems):
  """The key of a table row, which must be valid and not seen before."""
  try:
    key = key_fn(row.fields[0])
  except ValueError as error:
    raise row.error(str(error)) from None
  if key in points or key in problems:
    raise row.error(f"second entry for {row.fields[0]}")
  return key


def _read_csv(path, key_fn):
  points, problems, expected = {}, {}, None
  with files.open(path, encoding="utf-8") as lines:
    for line_number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      row = images_lib.Row(path, line_number, [field.strip() for field in line.split(",")])
      key = _new_key(row, key_fn, points, problems)
      try:
        values = _row_points(row, expected)
      except ValueError as error:
        problems[key] = str(error)
        continue
      expected = expected or (values.size, line_number)
      points[key] = _to_51(values).astype(np.float32)
  return points, problems


def _read_npy(npy_path, keys_path, key_fn):
  try:
    with files.open(npy_path, "rb") as f:
      array = np.load(f, allow_pickle=False)
  except (OSError, ValueError) as error:
    raise ValueError(f"{npy_path}: not a readable .npy array: {error}") from None
  if (array.ndim != 3 or array.shape[1] not in _COUNTS or array.shape[2] != 2
      or array.dtype.kind not in "fiu"):
    raise ValueError(f"{npy_path}: expected a float (N, 51 or 68, 2) array, got "
                     f"{array.dtype} {array.shape}")
  if not files.isfile(keys_path):
    raise ValueError(f"{npy_path} needs its keys, one per line, in {keys_path} (not found)")
  with files.open(keys_path, encoding="utf-8") as lines:
    rows = [images_lib.Row(keys_path, n, [line.strip()])
            for n, line in enumerate(lines, 1) if line.strip()]
  if len(rows) != len(array):
    raise ValueError(f"{keys_path} has {len(rows)} keys but {npy_path} has {len(array)} rows")
  points, problems = {}, {}
  for i, (row, values) in enumerate(zip(rows, array.astype(np.float64))):
    key = _new_key(row, key_fn, points, problems)
    if np.isnan(values).all():
      problems[key] = f"{npy_path}: row {i} ({key}): no landmarks (all NaN)"
    elif not np.isfinite(values).all():
      problems[key] = f"{npy_path}: row {i} ({key}): non-finite coordinates"
    else:
      points[key] = _to_51(values).astype(np.float32)
  return points, problems


def read(manual_dir, key_fn):
  """The Table of manual_dir (module docstring); `key_fn` is `path_key` or `index_key`."""
  csv_path = os.path.join(manual_dir, CSV_NAME)
  npy_path = os.path.join(manual_dir, NPY_NAME)
  has_csv, has_npy = files.isfile(csv_path), files.isfile(npy_path)
  if has_csv and has_npy:
    raise ValueError(f"{manual_dir} holds both {CSV_NAME} and {NPY_NAME}; keep one landmark "
                     f"table")
  if has_csv:
    path, (points, problems) = csv_path, _read_csv(csv_path, key_fn)
  elif has_npy:
    keys_path = os.path.join(manual_dir, KEYS_NAME)
    path, (points, problems) = npy_path, _read_npy(npy_path, keys_path, key_fn)
  else:
    raise ValueError(f"no landmark table in {manual_dir}: expected {CSV_NAME}, or {NPY_NAME} "
                     f"with {KEYS_NAME} (formats: input_pipeline/real/tables.py)")
  if not points and not problems:
    raise ValueError(f"{path}: no landmarks")
  return Table(path, points, problems)
