"""Reader for the project's Multi-PIE-style identification lists (gallery and probes by yaw).

Layout under the root folder (paths relative to the root):
- `gallery.txt`: lines `<path> <subject_id>` (Multi-PIE setting: one frontal image per test
  subject);
- `probe.txt`: lines `<path> <subject_id> <yaw_deg>`; every probe subject must be in the
  gallery, so rank-1 accuracy is defined for every probe.
Rank-1 is reported per yaw bin: the probe's yaw rounded to the nearest multiple of
`yaw_bin_width` degrees, ties to the even multiple (Multi-PIE's 13 poses are 15
degrees apart).
"""
import dataclasses
import os

import numpy as np

from input_pipeline import files
from input_pipeline.readers import images


@dataclasses.dataclass(frozen=True)
class GalleryProbes:
  """An identification protocol: gallery and probe images with their subjects.

  gallery_paths, probe_paths: absolute image paths, in file order.
  gallery_subjects, probe_subjects: int64 subject ids.
  probe_yaw: float32 yaw of each probe in degrees, as written.
  probe_yaw_bin: int32 yaw bin of each probe in degrees (a multiple of the bin width).
  """
  gallery_paths: list[str]
  gallery_subjects: np.ndarray
  probe_paths: list[str]
  probe_subjects: np.ndarray
  probe_yaw: np.ndarray
  probe_yaw_bin: np.ndarray


def read_multipie(root, yaw_bin_width: int = 15):
  """The gallery and probe lists of the tree at `root`."""
  if yaw_bin_width <= 0:
    raise ValueError(f"yaw_bin_width must be positive, got {yaw_bin_width}")
  root = files.abspath(root)
  gallery_rows = images.read_rows(os.path.join(root, "gallery.txt"), num_fields=2)
  probe_rows = images.read_rows(os.path.join(root, "probe.txt"), num_fields=3)
  gallery_subjects = [row.integer(1, "subject_id") for row in gallery_rows]
  known = set(gallery_subjects)
  probe_subjects, probe_yaw = [], []
  for row in probe_rows:
    subject = row.integer(1, "subject_id")
    if subject not in known:
      raise row.error(f"subject {subject} has no gallery image in "
                      f"{os.path.join(root, 'gallery.txt')}")
    probe_subjects.append(subject)
    probe_yaw.append(row.number(2, "yaw_deg"))
  probe_yaw = np.array(probe_yaw, np.float32)
  return GalleryProbes(
      gallery_paths=[images.image_path(row, root, row.fields[0]) for row in gallery_rows],
      gallery_subjects=np.array(gallery_subjects, np.int64),
      probe_paths=[images.image_path(row, root, row.fields[0]) for row in probe_rows],
      probe_subjects=np.array(probe_subjects, np.int64),
      probe_yaw=probe_yaw,
      probe_yaw_bin=(np.round(probe_yaw / yaw_bin_width) * yaw_bin_width).astype(np.int32))
