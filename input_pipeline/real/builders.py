"""TFDS builders `face_folder` and `insightface_rec`: the user's own faces, read offline.

    builder = FaceFolder(config=make_config(image_size=112), data_dir="/data/tfds")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False, manual_dir="/data/casia"))

Nothing is downloaded: both read the folder given as `manual_dir` (`input_pipeline.real`
describes the layouts and `tables` the landmark side tables).

Features, those of `synthetic_faces` that `preprocess` uses: `image` (S, S, 3) uint8, S =
config.image_size; `label` int64; `landmarks` (51, 2) float32 pixels of the stored image
(iBUG-51, `input_pipeline.landmarks`); `visibility` (51,) bool, all True (no occlusion
labels); `yaw` float32 degrees estimated from the landmarks (`mean_face.estimate_yaw`);
`file_name`: the image's key (face_folder: `identity/name.jpg`; insightface_rec: the record
index). No pitch and roll.

Images: an S x S JPEG or PNG in RGB or grey is stored as its own bytes; any other image is
cut to its centred square, resized to S x S (bilinear, antialiased) and stored as PNG, its
landmarks moved with it. Labels: face_folder numbers the identity folders in sorted order
(0, 1, ...; the names are the ClassLabel's names, saved as `label.labels.txt` beside the
data); insightface_rec keeps the stored labels (num_classes = the largest + 1, names "0",
"1", ...).

Refused, with a ValueError naming the file: an image that Pillow cannot decode, or whose
landmarks are missing, of another count, not finite, or outside the image (any of the 51 kept
points outside [0, width] x [0, height] of the file's image); an identity folder with no
image; a record that cannot be read or whose label is not a whole number >= 0. With
`skip_bad=True` these are skipped instead, counted, and listed in `skipped.txt` beside the
data (written on every build, empty when nothing was skipped; the printed path is the final
data folder's). Broken .idx lines (ill-formed, or pointing past the end of train.rec, checked
for every line when the .rec is opened) and ill-formed landmark tables are always errors.

Beside the data, as for the synthetic set: `mean_face.npy`, the mean landmarks of the images
whose estimated |yaw| < mean_face_max_yaw (`mean_face.read(builder.data_dir)`).
"""
import abc
import concurrent.futures
import dataclasses
import hashlib
import io
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import console, files
from input_pipeline import landmarks as landmarks_lib
from input_pipeline import local_build, mean_face
from input_pipeline import recordio
from input_pipeline.real import tables

NUM_LANDMARKS = landmarks_lib.NUM_POINTS["ibug51"]
SKIPPED_FILE = "skipped.txt"
DEFAULT_IMAGE_SIZE = 112
_KEPT_FORMATS = ("JPEG", "PNG")  # S x S images of these formats and modes keep their bytes
_KEPT_MODES = ("RGB", "L")
_CHUNK = 256
_MAX_LABEL = 2**24
_PROGRESS_EVERY_S = 5.0


def _image_extensions():
  Image.init()
  return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                   if fmt in Image.OPEN)


IMAGE_EXTENSIONS = _image_extensions()


@dataclasses.dataclass(eq=False)
class RealFacesConfig(tfds.core.BuilderConfig):
  """A build of the user's faces: stored side, bad-image policy, mean face threshold.

  workers: decoding threads (does not change the data).
  """
  image_size: int = DEFAULT_IMAGE_SIZE
  skip_bad: bool = False
  mean_face_max_yaw: float = mean_face.DEFAULT_MAX_YAW
  workers: int = 4

  def __post_init__(self):
    if self.image_size < 16:
      raise ValueError(f"image_size={self.image_size} must be >= 16")
    if not self.mean_face_max_yaw > 0:
      raise ValueError(f"mean_face_max_yaw={self.mean_face_max_yaw} must be > 0")
    if self.workers < 1:
      raise ValueError(f"workers={self.workers} must be >= 1")


def make_config(image_size=DEFAULT_IMAGE_SIZE, skip_bad=False,
                mean_face_max_yaw=mean_face.DEFAULT_MAX_YAW, tag="", workers=4):
  """A config named after what changes the data, e.g. `112px_skip_bad_<tag>`.

  `tag` tells builds of different folders apart in one data_dir (`source_tag`).
  """
  name = f"{image_size}px" + ("_skip_bad" if skip_bad else "")
  if mean_face_max_yaw != mean_face.DEFAULT_MAX_YAW:
    name += f"_yaw{mean_face_max_yaw:g}"
  if tag:
    name += f"_{tag}"
  return RealFacesConfig(
      name=name, description=f"{image_size}x{image_size}" + (", bad images skipped"
                                                             if skip_bad else ""),
      image_size=image_size, skip_bad=skip_bad, mean_face_max_yaw=mean_face_max_yaw,
      workers=workers)


def source_tag(manual_dir):
  """A short digest of the folder's absolute path, for `make_config(tag=...)`."""
  return hashlib.sha1(files.abspath(manual_dir).encode()).hexdigest()[:10]


BUILDER_CONFIGS = (make_config(),)


@dataclasses.dataclass
class _Plan:
  """What a build will read: label names, items (key, label, source) and the landmarks."""
  names: list
  items: list
  table: tables.Table
  skipped: list          # problems found while planning (skip_bad)
  summary: str
  reader: object = None  # insightface_rec: the open recordio.Reader


def _ordered_map(fn, items, workers):
  """map(fn, items) on `workers` threads, in order, a chunk at a time."""
  if workers <= 1:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for start in range(0, len(items), _CHUNK):
      yield from pool.map(fn, items[start:start + _CHUNK])


def _decode(data, where):
  """A loaded PIL image of encoded bytes; a ValueError naming `where` if it is broken."""
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
  except Exception as error:  # pylint: disable=broad-except  # any decoder failure of a file
    raise ValueError(f"{where}: cannot decode the image: {error}") from None


def _check_in_frame(points, width, height, where, table_path):
  outside = ((points < 0) | (points > np.float32([width, height]))).any(axis=1)
  if outside.any():
    i = int(np.flatnonzero(outside)[0])
    raise ValueError(f"{where}: landmark {i} at ({points[i, 0]:.1f}, {points[i, 1]:.1f}) of "
                     f"{table_path} is outside the {width}x{height} image")


def make_example(data, where, points, size, table_path="the landmark table"):
  """The stored image bytes, landmarks, visibility and yaw of one encoded image.

  `points`: (51, 2) pixels of the encoded image; `where` and `table_path` name the image and
  the landmark table in errors.
  """
  image = _decode(data, where)
  width, height = image.size
  _check_in_frame(points, width, height, where, table_path)
  if ((width, height) == (size, size) and image.format in _KEPT_FORMATS
      and image.mode in _KEPT_MODES):
    encoded, stored = data, points
  else:
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR,
                                          box=(left, top, left + side, top + side))
    buffer = io.BytesIO()
    resized.save(buffer, format="PNG")
    encoded = buffer.getvalue()
    stored = (points - np.float32([left, top])) * np.float32(size / side)
  with np.errstate(all="ignore"):
    yaw = mean_face.estimate_yaw(stored[None])[0]
  if not np.isfinite(yaw):
    raise ValueError(f"{where}: degenerate landmarks in {table_path} (the eyes and the mouth "
                     f"coincide), no yaw")
  return {"image": encoded, "landmarks": stored.astype(np.float32),
          "visibility": np.ones(NUM_LANDMARKS, bool), "yaw": np.float32(yaw)}


def _say(message):
  print(message, file=sys.stderr, flush=True)


class RealFacesBuilder(local_build.LocalBuild, tfds.core.GeneratorBasedBuilder):
  """The shared build of both real-face builders: plan, decode and check, report."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = list(BUILDER_CONFIGS)
  DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name

  @abc.abstractmethod
  def _plan(self, manual_dir):
    """The _Plan of manual_dir; raises ValueErrors (or records skips) for what is broken."""

  @abc.abstractmethod
  def _read(self, plan, source):
    """(encoded image bytes, its description in errors) of one item's source."""

  def _info(self):
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description=self.__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "label": tfds.features.ClassLabel(),  # names set from the data
            "landmarks": tfds.features.Tensor(shape=(NUM_LANDMARKS, 2), dtype=np.float32),
            "visibility": tfds.features.Tensor(shape=(NUM_LANDMARKS,), dtype=np.bool_),
            "yaw": tfds.features.Scalar(dtype=np.float32),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def _manual_folder(self, dl_manager):
    try:
      folder = os.fspath(dl_manager.manual_dir)
    except AssertionError as error:
      raise ValueError(f"{self.name}: {error}") from None
    if not files.isdir(folder):
      raise ValueError(f"{self.name}: manual_dir {folder} is not a folder")
    return folder

  def _split_generators(self, dl_manager):
    plan = self._plan(self._manual_folder(dl_manager))
    self.info.features["label"].names = plan.names
    return {"train": self._generate_examples(plan)}

  def _example(self, plan, item):
    """(example, None), or (None, problem) for a bad image under skip_bad."""
    key, label, source = item
    try:
      points = plan.table.lookup(key)
      data, where = self._read(plan, source)
      example = make_example(data, where, points, self.builder_config.image_size,
                             plan.table.path)
    except ValueError as error:
      if not self.builder_config.skip_bad:
        raise
      return None, str(error)
    example.update(label=label, file_name=str(key))
    return example, None

  def _generate_examples(self, plan):
    config = self.builder_config
    what = f"{self.name}/{config.name}"
    _say(f"{what}: {plan.summary}")
    progress = console.Progress(what, len(plan.items), "images", every_s=_PROGRESS_EVERY_S)
    skipped = list(plan.skipped)
    frontal_sum, frontal_count = np.zeros((NUM_LANDMARKS, 2), np.float64), 0
    per_label = np.zeros(len(plan.names), np.int64)
    try:
      examples = _ordered_map(lambda item: self._example(plan, item), plan.items,
                              config.workers)
      for (key, label, _), (example, problem) in zip(plan.items, examples):
        progress.advance()
        if problem is not None:
          skipped.append(problem)
          continue
        per_label[label] += 1
        if abs(example["yaw"]) < config.mean_face_max_yaw:
          frontal_sum += example["landmarks"]
          frontal_count += 1
        yield key, example
    except BaseException:
      progress.stop()
      raise
    finally:
      if plan.reader is not None:
        plan.reader.close()
    progress.close()
    self._finish(what, plan, skipped, per_label, frontal_sum, frontal_count, progress)

  def _finish(self, what, plan, skipped, per_label, frontal_sum, frontal_count, progress):
    """Writes skipped.txt and the mean face; reports the counts."""
    config = self.builder_config
    files.makedirs(self.data_dir, exist_ok=True)
    with files.open(os.path.join(self.data_dir, SKIPPED_FILE), "w", encoding="utf-8") as f:
      f.writelines(f"{problem}\n" for problem in skipped)
    kept = int(per_label.sum())
    if not kept:
      raise ValueError(f"{what}: no usable image; {len(skipped)} skipped, the first: "
                       f"{skipped[0] if skipped else None}")
    if not frontal_count:
      raise ValueError(f"{what}: no image has an estimated |yaw| < {config.mean_face_max_yaw} "
                       f"degrees, so there is no frontal mean face; raise mean_face_max_yaw")
    mean_face.write(self.data_dir, (frontal_sum / frontal_count).astype(np.float32))
    # While TFDS prepares, data_dir is a temporary sibling of the final folder,
    # `<parent>/incomplete.XXXXXX_<version>/` (its trailing slash hid it from dirname).
    final = os.path.join(os.path.dirname(files.normpath(self.data_dir)), str(self.version))
    empty = int((per_label == 0).sum())
    _say(f"{what}: wrote {kept} images of {len(plan.names) - empty} identities in "
         f"{progress.elapsed():.1f} s; skipped {len(skipped)}"
         + (f" (listed in {os.path.join(final, SKIPPED_FILE)})" if skipped else "")
         + (f"; {empty} of {len(plan.names)} labels have no image" if empty else "")
         + f"; mean face from {frontal_count} near-frontal images")


class FaceFolder(RealFacesBuilder):
  """Face images in one folder per identity: `<manual_dir>/<identity>/<image>`."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put one folder per identity in manual_dir, holding that person's images (any format "
      "Pillow reads), and a landmark table beside them: landmarks.csv "
      "(`identity/image.jpg,x1,y1,...`), or landmarks.npy with landmarks_keys.txt "
      "(input_pipeline/real/tables.py).")

  def _plan(self, manual_dir):
    skip_bad = self.builder_config.skip_bad
    table = tables.read(manual_dir, tables.path_key)
    identities = sorted(entry.name for entry in files.scandir(manual_dir)
                        if entry.is_dir() and not entry.name.startswith("."))
    if not identities:
      raise ValueError(f"{manual_dir}: no identity folders (expected "
                       f"<manual_dir>/<identity>/<image>)")
    names, items, skipped, ignored = [], [], [], 0
    for identity in identities:
      folder = os.path.join(manual_dir, identity)
      found = sorted(entry.name for entry in files.scandir(folder)
                     if entry.is_file() and not entry.name.startswith("."))
      images = [name for name in found if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]
      ignored += len(found) - len(images)
      if not images:
        problem = f"{folder}: identity folder with no image files"
        if not skip_bad:
          raise ValueError(f"{problem} (remove it, or build with skip_bad)")
        skipped.append(problem)
        continue
      label = len(names)
      names.append(identity)
      items += [(f"{identity}/{name}", label, os.path.join(folder, name)) for name in images]
    unmatched = len(table) - len({key for key, _, _ in items} & table.keys())
    summary = (f"{len(items)} images of {len(names)} identities in {manual_dir}, landmarks "
               f"from {table.path}" + (f"; {ignored} non-image files ignored" if ignored else "")
               + (f"; {unmatched} table entries match no image" if unmatched else "")
               + (f"; {len(skipped)} empty identity folders skipped" if skipped else ""))
    return _Plan(names, items, table, skipped, summary)

  def _read(self, plan, source):
    try:
      with files.open(source, "rb") as f:
        return f.read(), source
    except OSError as error:
      raise ValueError(f"{source}: cannot read the image file: {error}") from None


class InsightfaceRec(RealFacesBuilder):
  """insightface's packed faces: `<manual_dir>/train.rec` and `train.idx` (RecordIO)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put insightface's train.rec and train.idx in manual_dir, and a landmark table beside "
      "them: landmarks.csv (`<record index>,x1,y1,...`), or landmarks.npy with "
      "landmarks_keys.txt (input_pipeline/real/tables.py).")

  def _label(self, reader, key):
    """(label, None), or (None, problem) under skip_bad."""
    try:
      label = reader.read_header(key).first_label
      if not (np.isfinite(label) and 0 <= label < _MAX_LABEL and label == int(label)):
        raise ValueError(f"{reader.where(key)}: label {label} is not a whole number in "
                         f"[0, 2**24) (float32 labels are exact there)")
      return int(label), None
    except ValueError as error:
      if not self.builder_config.skip_bad:
        raise
      return None, str(error)

  def _plan(self, manual_dir):
    rec_path = os.path.join(manual_dir, "train.rec")
    idx_path = os.path.join(manual_dir, "train.idx")
    for path in (rec_path, idx_path):
      if not files.isfile(path):
        raise ValueError(f"{path} not found: insightface_rec reads <manual_dir>/train.rec "
                         f"and train.idx")
    table = tables.read(manual_dir, tables.index_key)
    reader = recordio.Reader(rec_path, idx_path)
    try:
      keys = recordio.image_keys(reader)
      labels = _ordered_map(lambda key: self._label(reader, key), keys,
                            self.builder_config.workers)
      items, skipped = [], []
      for key, (label, problem) in zip(keys, labels):
        if problem is None:
          items.append((key, label, key))
        else:
          skipped.append(problem)
    except BaseException:
      reader.close()
      raise
    if not items:
      reader.close()
      raise ValueError(f"{rec_path}: no readable image record ({len(skipped)} skipped)")
    num_classes = max(label for _, label, _ in items) + 1
    unmatched = len(table) - len(set(keys) & table.keys())
    identities = len({label for _, label, _ in items})
    summary = (f"{len(items)} image records of {identities} identities "
               f"(labels 0..{num_classes - 1}) in {rec_path}"
               + (" (header record convention)" if keys != reader.keys() else "")
               + f", landmarks from {table.path}"
               + (f"; {unmatched} table entries match no image record" if unmatched else "")
               + (f"; {len(skipped)} unreadable records skipped" if skipped else ""))
    return _Plan([str(i) for i in range(num_classes)], items, table, skipped, summary,
                 reader=reader)

  def _read(self, plan, source):
    _, image = plan.reader.read_unpacked(source)
    return image, plan.reader.where(source)


BUILDERS = {"face_folder": FaceFolder, "insightface_rec": InsightfaceRec}
