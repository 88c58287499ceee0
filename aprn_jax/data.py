"""The training data of a run: a TFDS builder prepared offline, its counts, the frontal mean
face in the network's landmark frame, and the folder of its evaluation protocol files.

`config.data.name`: `synthetic_faces` (built in; `config.data.builder_config` picks its size),
or the user's faces from `config.data.manual_dir`: `face_folder` or `insightface_rec`
(`input_pipeline.real`), stored at `config.data.stored_size`, with `config.data.skip_bad`.
A real build's folder name carries a digest of manual_dir, so builds of different folders
share one data_dir; a folder whose contents changed needs its build folder deleted.
Training saves the data's description (`DataInfo`) in the workdir, so evaluating the user's
faces needs neither manual_dir nor the build; the synthetic faces are opened (built if gone)
for evaluation too, as their build writes the benchmark files of config.eval.split.

The crop is checked against the stored faces (`check_crop`): a config.data.crop_size that
keeps less than 3/4 of the stored side is warned about, one that leaves most of the mean
face's landmarks outside the network input (configs/tiny.py's 32 on faces stored at 112) is an
error; both say which option to change.
"""
import dataclasses
import os
from typing import Callable

import jax
import numpy as np
import tensorflow_datasets as tfds

from aprn_jax import distributed
from input_pipeline import files, preprocess


@dataclasses.dataclass
class DataInfo:
  """What a trained model and its evaluation need of the training data, without the data.

  Training saves it beside the checkpoints (<workdir>/data.json, `run.record_data`), so eval
  and analyse of the user's own faces run once their images are gone.
  """
  num_examples: int
  num_classes: int
  num_landmarks: int
  stored_size: int              # side of the stored (square) images
  mean_face: np.ndarray         # (M, 2) float32, normalised [-1, 1] over the network input
  protocol_root: str            # the data set's own benchmark files (the defaults of empty
                                # config.eval.paths entries) of config.eval.split's
                                # identities; "" for real data (config.eval.paths names them)

  def to_json(self):
    value = {f.name: getattr(self, f.name) for f in dataclasses.fields(DataInfo)}
    value["mean_face"] = np.asarray(self.mean_face).tolist()  # float32 -> JSON: exact
    return value

  @staticmethod
  def from_json(value):
    return DataInfo(**{**value, "mean_face": np.asarray(value["mean_face"], np.float32)})


@dataclasses.dataclass
class TrainData(DataInfo):
  dataset_fn: Callable          # () -> unshuffled tf.data.Dataset of training examples


def data_dir(config, workdir):
  """config.data.data_dir, or <workdir>/../data so runs side by side share one build; as
  TFDS takes it (`files.local_path`: file:// as its local path, a scheme TFDS cannot open
  refused here)."""
  return files.local_path(config.data.data_dir or os.path.join(
      os.path.dirname(files.abspath(workdir)), "data"))


def to_network_frame(points, stored_size, crop_size, image_size):
  """Pixel landmarks of the stored image -> the evaluation crop's normalised frame."""
  example = {"image": np.zeros((stored_size, stored_size, 3), np.uint8),
             "landmarks": np.asarray(points, np.float32)}
  out = preprocess.eval_transform(example, crop_size=crop_size, image_size=image_size)
  return np.asarray(out["landmarks"], np.float32)


DATA_SETS = ("synthetic_faces", "face_folder", "insightface_rec")
# Training sets whose decoded images fit in this many bytes are held in memory after their
# first epoch (the built-in synthetic faces: 93 MB for `default`, 1.4 GB for `large`).
IN_MEMORY_BYTES = 2 * 2**30


def load(config, workdir):
  """Builds (once) and opens the configured data set."""
  if config.data.name not in DATA_SETS:
    raise ValueError(f"config.data.name={config.data.name!r} is not a data set of this "
                     f"project; choose one of {DATA_SETS}")
  load_data = _load_synthetic if config.data.name == "synthetic_faces" else _load_real
  # Process 0 builds, the others open the finished build (a job of several processes).
  return distributed.lead_first("build the data set", lambda: load_data(config, workdir))


# A crop keeping less of the stored side than this share is warned about (the paper keeps
# 96 of 100 and 224 of 230); more than this share of the mean face's landmarks outside the
# network input stops the run (the face is mostly cut away).
MIN_CROP_SHARE = 0.75
MAX_OUTSIDE_SHARE = 0.5


def check_crop(config, stored_size, mean_face, where):
  """Warns when config.data.crop_size keeps less than MIN_CROP_SHARE of the stored side;
  raises when most points of `mean_face` (the network frame, [-1, 1] inside) lie outside.

  Returns the share of landmarks outside.
  """
  crop = config.data.crop_size
  outside = float(np.mean(np.any(np.abs(np.asarray(mean_face)) > 1.0, axis=1)))
  fit_crop = int(np.ceil(0.9 * stored_size))
  fit_stored = int(np.ceil(crop / 0.9))
  fix = (f"crop nearer the stored side, e.g. --config.data.crop_size={fit_crop} (the network "
         f"input stays config.data.image_size={config.data.image_size}), or store the faces "
         f"smaller, e.g. --config.data.stored_size={fit_stored} for your own faces")
  if outside > MAX_OUTSIDE_SHARE:
    raise ValueError(
        f"config.data.crop_size={crop} of the {stored_size}x{stored_size} images of {where} "
        f"leaves {outside:.0%} of the mean face's landmarks outside the network input; {fix}")
  if crop < MIN_CROP_SHARE * stored_size:
    print(f"warning: config.data.crop_size={crop} keeps {crop / stored_size:.0%} of the side "
          f"of the {stored_size}x{stored_size} images of {where} ({outside:.0%} of the mean "
          f"face's landmarks outside the network input); {fix}", flush=True)
  return outside


def train_dataset_fn(builder, process_count):
  """() -> the builder's training examples, unshuffled, for `preprocess.train_batches`.

  One process: decoded, and held in memory after the first epoch when they fit in
  IN_MEMORY_BYTES (later epochs fill their shuffle buffer from memory). Several processes:
  the images stay encoded until `preprocess` has kept this process's share of each global
  batch, so each process decodes only its own records (held encoded in memory when the
  decoded images would fit).
  """
  info = builder.info
  num_examples = info.splits["train"].num_examples
  decoders = None if process_count == 1 else {"image": tfds.decode.SkipDecoding()}

  def read():
    return builder.as_dataset(split="train", shuffle_files=False, decoders=decoders)

  if num_examples * info.features["image"].shape[0] ** 2 * 3 <= IN_MEMORY_BYTES:
    cached = read().cache()
    return lambda: cached
  return read


def _train_data(config, builder, protocol_root, num_classes=None):
  """num_classes: the training identities (default: the label feature's class count)."""
  from input_pipeline import mean_face as mean_face_lib  # the data set's own modules
  info = builder.info
  stored_size = info.features["image"].shape[0]
  if config.data.crop_size > stored_size:
    raise ValueError(f"config.data.crop_size={config.data.crop_size} is larger than the "
                     f"{stored_size}x{stored_size} images of {builder.data_dir}")
  mean_face = to_network_frame(mean_face_lib.read(builder.data_dir), stored_size,
                               config.data.crop_size, config.data.image_size)
  check_crop(config, stored_size, mean_face, builder.data_dir)
  num_examples = info.splits["train"].num_examples
  return TrainData(
      dataset_fn=train_dataset_fn(builder, jax.process_count()),
      num_examples=num_examples,
      num_classes=num_classes or info.features["label"].num_classes,
      num_landmarks=info.features["landmarks"].shape[0], stored_size=stored_size,
      mean_face=mean_face, protocol_root=protocol_root)


def _load_synthetic(config, workdir):
  from input_pipeline.synthetic import builder as synthetic_builder
  from input_pipeline.synthetic import export
  builder = synthetic_builder.SyntheticFaces(config=config.data.builder_config,
                                             data_dir=data_dir(config, workdir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  split = config.eval.get("split", "test")
  if split not in synthetic_builder.PROTOCOL_SPLITS:
    raise ValueError(f"config.eval.split={split!r}; choose one of "
                     f"{synthetic_builder.PROTOCOL_SPLITS} (tune on validation, report on test)")
  return _train_data(config, builder, export.ensure(builder, split),
                     num_classes=builder.builder_config.num_train_identities)


def _load_real(config, workdir):
  """face_folder / insightface_rec from config.data.manual_dir; no protocol files ("")."""
  from input_pipeline.real import builders
  manual_dir = config.data.get("manual_dir", "")
  if not manual_dir or not files.isdir(manual_dir):
    raise ValueError(f"config.data.name={config.data.name!r} reads your own data: set "
                     f"config.data.manual_dir to its folder (got {manual_dir!r}; layouts: "
                     f"input_pipeline/real/__init__.py)")
  manual_dir = files.abspath(files.local_path(manual_dir))
  builder_config = builders.make_config(
      image_size=config.data.get("stored_size", builders.DEFAULT_IMAGE_SIZE),
      skip_bad=config.data.get("skip_bad", False),
      mean_face_max_yaw=config.data.mean_face_max_yaw,
      tag=builders.source_tag(manual_dir))
  builder = builders.BUILDERS[config.data.name](config=builder_config,
                                                data_dir=data_dir(config, workdir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, manual_dir=manual_dir))
  return _train_data(config, builder, protocol_root="")
