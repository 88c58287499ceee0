"""Reader for CFP (Celebrities in Frontal-Profile, Sengupta et al. 2016) as distributed.

Layout under the root folder:
- `Protocol/Pair_list_F.txt`, `Protocol/Pair_list_P.txt`: lines `<1-based index> <path>`,
  the path relative to `Protocol/` (e.g. `../Data/Images/001/frontal/01.jpg`);
- `Protocol/Split/{FF,FP}/01..10/{same,diff}.txt`: lines `a,b` (1-based); for FF both
  index the frontal list, for FP `a` indexes the frontal and `b` the profile list;
- optionally `landmarks.csv` (format in `readers.images`).
"""
import dataclasses
import os

import numpy as np

from input_pipeline import files
from input_pipeline.readers import images

PROTOCOLS = ("FF", "FP")
NUM_FOLDS = 10


@dataclasses.dataclass(frozen=True)
class VerificationPairs:
  """Pairs of a verification protocol, as indices into `paths`.

  paths: absolute image paths, each once (CFP: the frontal images used, by list index, then
    the profile images used).
  index_a, index_b: int32 (P,) indices into `paths`.
  is_same: bool (P,), True for same-identity pairs.
  fold: int32 (P,), 0-based (CFP: folder `01` is fold 0); pairs are ordered by fold, then
    same before different, then file order.
  landmarks: float32 (len(paths), M, 2) pixel landmarks of the image files from
    `landmarks.csv`, NaN for images it lacks; None without the file.
  """
  paths: list[str]
  index_a: np.ndarray
  index_b: np.ndarray
  is_same: np.ndarray
  fold: np.ndarray
  landmarks: np.ndarray | None


def _read_pair_list(path):
  """{1-based index: (absolute image path)} of a Pair_list file, checking every image exists."""
  folder = os.path.dirname(path)
  entries = {}
  for row in images.read_rows(path, num_fields=2):
    index = row.integer(0, "index")
    if index < 1:
      raise row.error(f"index {index} is not >= 1")
    if index in entries:
      raise row.error(f"index {index} appears twice")
    entries[index] = images.image_path(row, folder, row.fields[1])
  return entries


def read_cfp(root, protocol):
  """The CFP-FF or CFP-FP pairs (`protocol` 'FF' or 'FP') of the CFP tree at `root`."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
  root = files.abspath(root)
  protocol_dir = os.path.join(root, "Protocol")
  frontal_file = os.path.join(protocol_dir, "Pair_list_F.txt")
  profile_file = os.path.join(protocol_dir, "Pair_list_P.txt")
  lists = {"F": (frontal_file, _read_pair_list(frontal_file))}
  second_list = "F" if protocol == "FF" else "P"
  if second_list == "P":
    lists["P"] = (profile_file, _read_pair_list(profile_file))

  pairs = []  # ((list, index), (list, index), is_same, fold)
  for fold in range(NUM_FOLDS):
    for name, is_same in (("same", True), ("diff", False)):
      split_file = os.path.join(protocol_dir, "Split", protocol, f"{fold + 1:02d}",
                                f"{name}.txt")
      for row in images.read_rows(split_file, num_fields=2, separator=","):
        keys = []
        for field, list_name in ((0, "F"), (1, second_list)):
          index = row.integer(field, "index")
          list_file, entries = lists[list_name]
          if index not in entries:
            raise row.error(f"index {index} is not in {list_file}")
          keys.append((list_name, index))
        pairs.append((keys[0], keys[1], is_same, fold))

  used = sorted({key for a, b, _, _ in pairs for key in (a, b)})  # "F" sorts before "P"
  position = {key: i for i, key in enumerate(used)}
  paths = [lists[list_name][1][index] for list_name, index in used]
  landmarks_file = os.path.join(root, "landmarks.csv")
  return VerificationPairs(
      paths=paths,
      index_a=np.array([position[a] for a, _, _, _ in pairs], np.int32),
      index_b=np.array([position[b] for _, b, _, _ in pairs], np.int32),
      is_same=np.array([same for _, _, same, _ in pairs], bool),
      fold=np.array([fold for _, _, _, fold in pairs], np.int32),
      landmarks=(images.read_landmarks_csv(landmarks_file, paths)
                 if files.isfile(landmarks_file) else None))
