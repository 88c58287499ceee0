"""Reader for the IJB-A 1:1 verification protocol (template comparisons, 10 splits).

Layout under the protocol root: `split{N}/verify_metadata_{N}.csv` and
`split{N}/verify_comparisons_{N}.csv`, N = 1..10.
- verify_metadata: a header row, then one row per face sighting. Columns are found by header
  name (case-insensitive): TEMPLATE_ID, SUBJECT_ID, FILE (relative to the image root the
  caller gives), MEDIA_ID (integers but FILE); FACE_X, FACE_Y, FACE_WIDTH, FACE_HEIGHT are
  read as the face box when all four are present. Other columns are ignored.
- verify_comparisons: no header, lines `tid1,tid2`; a comparison is genuine when the two
  templates' subjects are the same.
The per-row template and media ids and the comparisons are what
`aprn_jax.evaluation.templates.verify_split` takes.
"""
import dataclasses
import os

import numpy as np

from input_pipeline import files
from input_pipeline.readers import images

NUM_SPLITS = 10
_REQUIRED = ("TEMPLATE_ID", "SUBJECT_ID", "FILE", "MEDIA_ID")
_BOX = ("FACE_X", "FACE_Y", "FACE_WIDTH", "FACE_HEIGHT")


@dataclasses.dataclass(frozen=True)
class TemplateSplit:
  """One IJB-A split.

  paths: absolute image path of each metadata row (an image may appear in several rows).
  template_ids, media_ids, subject_ids: int64 (R,) per metadata row.
  boxes: float32 (R, 4) face box (x, y, width, height) in image pixels, or None without
    the FACE_* columns.
  templates: int64 (T,) sorted template ids; template_subjects: int64 (T,) their subjects.
  tid1, tid2: int64 (C,) compared templates, in file order; genuine: bool (C,).
  """
  paths: list[str]
  template_ids: np.ndarray
  media_ids: np.ndarray
  subject_ids: np.ndarray
  boxes: np.ndarray | None
  templates: np.ndarray
  template_subjects: np.ndarray
  tid1: np.ndarray
  tid2: np.ndarray
  genuine: np.ndarray


def _columns(header):
  """{upper-case column name: index} of the header row; a missing required column raises."""
  columns = {}
  for i, field in enumerate(header.fields):
    columns.setdefault(field.lstrip("\ufeff").strip().upper(), i)
  missing = [name for name in _REQUIRED if name not in columns]
  if missing:
    raise header.error(f"missing column(s) {', '.join(missing)} in header "
                       f"{','.join(header.fields)!r}")
  return columns


def read_split(protocol_root, split, image_root):
  """Split `split` (1-based) of the IJB-A protocol under `protocol_root`."""
  folder = os.path.join(files.abspath(protocol_root), f"split{split}")
  image_root = files.abspath(image_root)
  metadata_file = os.path.join(folder, f"verify_metadata_{split}.csv")
  comparisons_file = os.path.join(folder, f"verify_comparisons_{split}.csv")

  rows = images.read_rows(metadata_file, separator=",")
  if not rows:
    raise ValueError(f"{metadata_file}: empty; expected a header row and metadata rows")
  columns = _columns(rows[0])
  has_box = all(name in columns for name in _BOX)
  used = [columns[name] for name in _REQUIRED + (_BOX if has_box else ())]
  paths, template_ids, media_ids, subject_ids, boxes = [], [], [], [], []
  template_subject = {}
  for row in rows[1:]:
    if len(row.fields) <= max(used):
      raise row.error(f"expected {len(rows[0].fields)} fields like the header, got "
                      f"{len(row.fields)}")
    template = row.integer(columns["TEMPLATE_ID"], "TEMPLATE_ID")
    subject = row.integer(columns["SUBJECT_ID"], "SUBJECT_ID")
    if template_subject.setdefault(template, subject) != subject:
      raise row.error(f"template {template} has subject {subject} here but "
                      f"{template_subject[template]} on an earlier row")
    template_ids.append(template)
    subject_ids.append(subject)
    media_ids.append(row.integer(columns["MEDIA_ID"], "MEDIA_ID"))
    paths.append(images.image_path(row, image_root, row.fields[columns["FILE"]]))
    if has_box:
      boxes.append([row.number(columns[name], name) for name in _BOX])
  if not paths:
    raise ValueError(f"{metadata_file}: no metadata rows after the header")

  tid1, tid2 = [], []
  for row in images.read_rows(comparisons_file, num_fields=2, separator=","):
    pair = [row.integer(0, "tid1"), row.integer(1, "tid2")]
    for tid in pair:
      if tid not in template_subject:
        raise row.error(f"template {tid} is not in {metadata_file}")
    tid1.append(pair[0])
    tid2.append(pair[1])
  templates = np.array(sorted(template_subject), np.int64)
  return TemplateSplit(
      paths=paths,
      template_ids=np.array(template_ids, np.int64),
      media_ids=np.array(media_ids, np.int64),
      subject_ids=np.array(subject_ids, np.int64),
      boxes=np.array(boxes, np.float32) if has_box else None,
      templates=templates,
      template_subjects=np.array([template_subject[t] for t in templates], np.int64),
      tid1=np.array(tid1, np.int64),
      tid2=np.array(tid2, np.int64),
      genuine=np.array([template_subject[a] == template_subject[b]
                        for a, b in zip(tid1, tid2)], bool))


def read_ijba(protocol_root, image_root, splits=range(1, NUM_SPLITS + 1)):
  """[TemplateSplit] of the given splits (default all 10)."""
  return [read_split(protocol_root, split, image_root) for split in splits]
