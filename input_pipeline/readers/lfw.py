"""Reader for LFW's verification protocol (`pairs.txt`) over an LFW image tree.

`pairs.txt`: a header `<sets> <n>` (LFW: `10 300`), then per set n matched lines `name i j`
and n mismatched lines `name1 i name2 j`, i and j 1-based image numbers; image i of `name`
is `<image root>/name/name_%04d.jpg`. The sets are the folds. An optional `landmarks.csv` in
the image root (format in `readers.images`) gives landmarks.
"""
import os

import numpy as np

from input_pipeline import files
from input_pipeline.readers import cfp
from input_pipeline.readers import images


def image_relative_path(name, number):
  """The path of image `number` (1-based) of `name`, relative to the image root."""
  return f"{name}/{name}_{number:04d}.jpg"


def _header(rows, path):
  """(sets, pairs per kind per set) from the first row of pairs.txt."""
  if not rows:
    raise ValueError(f"{path}: empty; expected a header `<sets> <n>` and pair lines")
  header = rows[0]
  if len(header.fields) != 2:
    raise header.error(f"expected a header `<sets> <n>` (e.g. `10 300`), got "
                       f"{' '.join(header.fields)!r}")
  sets, per_set = header.integer(0, "number of sets"), header.integer(1, "pairs per set")
  if sets < 1 or per_set < 1:
    raise header.error(f"header numbers must be positive, got {sets} {per_set}")
  return sets, per_set


def read_lfw(pairs_file, image_root):
  """The pairs of `pairs_file` over the images under `image_root`, fold = set (0-based).

  Pairs are in file order; paths are absolute, each once, in order of first appearance.
  """
  pairs_file = os.fspath(pairs_file)
  image_root = files.abspath(image_root)
  rows = images.read_rows(pairs_file)
  sets, per_set = _header(rows, pairs_file)
  expected = 2 * sets * per_set
  if len(rows) - 1 != expected:
    raise rows[-1].error(f"the header promises {sets} sets of {per_set} matched and "
                         f"{per_set} mismatched pairs ({expected} lines), got "
                         f"{len(rows) - 1} pair lines")
  position = {}
  index_a, index_b, is_same, fold = [], [], [], []
  for k, row in enumerate(rows[1:]):
    matched = k % (2 * per_set) < per_set
    if matched:
      if len(row.fields) != 3:
        raise row.error(f"expected a matched pair `name i j`, got {len(row.fields)} fields")
      names = (row.fields[0], row.fields[0])
      numbers = (row.integer(1, "image number"), row.integer(2, "image number"))
    else:
      if len(row.fields) != 4:
        raise row.error(f"expected a mismatched pair `name1 i name2 j`, got "
                        f"{len(row.fields)} fields")
      names = (row.fields[0], row.fields[2])
      numbers = (row.integer(1, "image number"), row.integer(3, "image number"))
    ends = []
    for name, number in zip(names, numbers):
      if number < 1:
        raise row.error(f"image number {number} is not >= 1")
      path = images.image_path(row, image_root, image_relative_path(name, number))
      ends.append(position.setdefault(path, len(position)))
    index_a.append(ends[0])
    index_b.append(ends[1])
    is_same.append(matched)
    fold.append(k // (2 * per_set))
  paths = list(position)
  landmarks_file = os.path.join(image_root, "landmarks.csv")
  return cfp.VerificationPairs(
      paths=paths,
      index_a=np.array(index_a, np.int32),
      index_b=np.array(index_b, np.int32),
      is_same=np.array(is_same, bool),
      fold=np.array(fold, np.int32),
      landmarks=(images.read_landmarks_csv(landmarks_file, paths)
                 if files.isfile(landmarks_file) else None))
