"""Reader for IJB-B and IJB-C 1:1 verification in insightface's layout.

Under the root: `loose_crop/` (the images) and `meta/` with, for target `ijbb` or `ijbc`,
- `<target>_face_tid_mid.txt`: `image template_id media_id` per line;
- `<target>_name_5pts_score.txt`: `image x1 y1 ... x5 y5 faceness` per line, the same images
  in the same order (the five points in the image's pixels, pixel centres at integers);
- `<target>_template_pair_label.txt`: `template_id template_id label`, label 1 when the two
  templates show the same person, 0 when not.
Fields are separated by whitespace. The files name no subjects. The pair list is long
(IJB-C: 15.7M comparisons), so it is parsed by numpy; a line it cannot parse is found again
line by line for the error.
"""
import dataclasses
import itertools
import os
import warnings

import numpy as np

from input_pipeline import files
from input_pipeline.readers import images

TARGETS = ("ijbb", "ijbc")
NUM_POINTS = 5


@dataclasses.dataclass(frozen=True)
class IJBCProtocol:
  """One target's 1:1 protocol.

  paths: absolute image path per tid_mid line; template_ids, media_ids: int64 (N,);
  landmarks: float32 (N, 5, 2); faceness: float32 (N,) detector scores;
  tid1, tid2: int64 (C,) compared templates in file order; genuine: bool (C,) label 1.
  """
  paths: list[str]
  template_ids: np.ndarray
  media_ids: np.ndarray
  landmarks: np.ndarray
  faceness: np.ndarray
  tid1: np.ndarray
  tid2: np.ndarray
  genuine: np.ndarray


def meta_file(root, target, kind):
  """The path of `<root>/meta/<target>_<kind>.txt`."""
  return os.path.join(files.abspath(root), "meta", f"{target}_{kind}.txt")


def _lines(path):
  """Yields the non-blank lines of a file as Rows, one at a time."""
  with files.open(path, encoding="utf-8") as lines:
    for line_number, line in enumerate(lines, 1):
      if line.split():
        yield images.Row(path, line_number, line.split())


def _row(path, index):
  """The index-th (0-based) non-blank line of a file (numpy's row `index`)."""
  return next(itertools.islice(_lines(path), index, None))


def _read_pairs(path):
  """int64 (C, 3) rows `tid1 tid2 label` of the pair list."""
  if not files.isfile(path):
    raise FileNotFoundError(f"protocol file not found: {path}")
  try:
    with warnings.catch_warnings():  # an empty file warns; it is refused below
      warnings.simplefilter("ignore", UserWarning)
      with files.open(path, encoding="utf-8") as lines:
        table = np.loadtxt(lines, dtype=np.int64, ndmin=2, comments=None)
  except ValueError:
    table = None
  if table is None or (table.size and table.shape[1] != 3):
    for row in _lines(path):  # the first bad line's error
      if len(row.fields) != 3:
        raise row.error(f"expected 3 fields (template, template, label), got "
                        f"{len(row.fields)}")
      for i, name in enumerate(("first template", "second template", "label")):
        row.integer(i, name)
    raise ValueError(f"{path}: cannot be read as lines of 3 integers")
  if not table.size:
    raise ValueError(f"{path}: no comparisons")
  bad = np.flatnonzero((table[:, 2] != 0) & (table[:, 2] != 1))
  if len(bad):
    row = _row(path, bad[0])
    raise row.error(f"label {row.fields[2]!r} is not 0 or 1")
  return table


def read_ijbc(root, target="ijbc"):
  """IJBCProtocol of `target` (`ijbb` or `ijbc`) under `root`; every listed image must exist."""
  if target not in TARGETS:
    raise ValueError(f"IJB target {target!r}: expected one of {TARGETS}")
  image_root = os.path.join(files.abspath(root), "loose_crop")
  media_file = meta_file(root, target, "face_tid_mid")
  points_file = meta_file(root, target, "name_5pts_score")
  pairs_file = meta_file(root, target, "template_pair_label")

  media_rows = images.read_rows(media_file, num_fields=3)
  if not media_rows:
    raise ValueError(f"{media_file}: no images")
  paths = [images.image_path(row, image_root, row.fields[0]) for row in media_rows]
  template_ids = np.array([row.integer(1, "template id") for row in media_rows], np.int64)
  media_ids = np.array([row.integer(2, "media id") for row in media_rows], np.int64)

  num_numbers = 2 * NUM_POINTS + 1
  point_rows = images.read_rows(points_file, num_fields=1 + num_numbers)
  for media_row, point_row in zip(media_rows, point_rows):
    if point_row.fields[0] != media_row.fields[0]:
      raise point_row.error(f"image {point_row.fields[0]!r}, but "
                            f"{media_file}:{media_row.line_number} names "
                            f"{media_row.fields[0]!r}: the two lists must name the same "
                            f"images in the same order")
  if len(point_rows) != len(media_rows):
    longer, count = ((point_rows, len(media_rows)) if len(point_rows) > len(media_rows)
                     else (media_rows, len(point_rows)))
    raise longer[count].error(
        f"{media_file} lists {len(media_rows)} images, {points_file} {len(point_rows)}: "
        f"this line has no counterpart")
  numbers = np.array([[row.number(i, "coordinate" if i < num_numbers else "faceness score")
                       for i in range(1, num_numbers + 1)] for row in point_rows], np.float32)

  pairs = _read_pairs(pairs_file)
  templates = np.unique(template_ids)
  for column in (0, 1):
    unknown = np.flatnonzero(~np.isin(pairs[:, column], templates))
    if len(unknown):
      row = _row(pairs_file, unknown[0])
      raise row.error(f"template {row.fields[column]} has no images in {media_file}")
  return IJBCProtocol(
      paths=paths, template_ids=template_ids, media_ids=media_ids,
      landmarks=numbers[:, :-1].reshape(-1, NUM_POINTS, 2), faceness=numbers[:, -1],
      tid1=pairs[:, 0], tid2=pairs[:, 1], genuine=pairs[:, 2] == 1)
