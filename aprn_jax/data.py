"""The training data of a run: a TFDS builder prepared offline, its counts, the frontal mean
face in the network's landmark frame, and the folder of its evaluation protocol files.
"""
import dataclasses
import os
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import preprocess


@dataclasses.dataclass
class TrainData:
  dataset_fn: Callable          # () -> unshuffled tf.data.Dataset of training examples
  num_examples: int
  num_classes: int
  num_landmarks: int
  stored_size: int              # side of the stored (square) images
  mean_face: np.ndarray         # (M, 2) float32, normalised [-1, 1] over the network input
  protocol_root: str            # holds cfp/ and multipie/ in the benchmarks' layouts


def data_dir(config, workdir):
  """config.data.data_dir, or <workdir>/../data so runs side by side share one build."""
  return config.data.data_dir or os.path.join(os.path.dirname(os.path.abspath(workdir)), "data")


def to_network_frame(points, stored_size, crop_size, image_size):
  """Pixel landmarks of the stored image -> the evaluation crop's normalised frame."""
  example = {"image": np.zeros((stored_size, stored_size, 3), np.uint8),
             "landmarks": np.asarray(points, np.float32)}
  out = preprocess.eval_transform(example, crop_size=crop_size, image_size=image_size)
  return np.asarray(out["landmarks"], np.float32)


def load(config, workdir):
  """Builds (once) and opens the configured data set."""
  if config.data.name != "synthetic_faces":
    raise ValueError(f"config.data.name={config.data.name!r} is not a data set of this "
                     f"project; choose one of ('synthetic_faces',)")
  from input_pipeline import mean_face as mean_face_lib  # the data set's own modules
  from input_pipeline.synthetic import builder as synthetic_builder
  from input_pipeline.synthetic import protocols
  directory = data_dir(config, workdir)
  builder = synthetic_builder.SyntheticFaces(config=config.data.builder_config,
                                             data_dir=directory)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  info = builder.info
  stored_size = info.features["image"].shape[0]
  num_landmarks = info.features["landmarks"].shape[0]
  mean_face = to_network_frame(mean_face_lib.read(builder.data_dir), stored_size,
                               config.data.crop_size, config.data.image_size)
  protocol_root = protocols.ensure(builder)
  return TrainData(
      dataset_fn=lambda: builder.as_dataset(split="train", shuffle_files=False),
      num_examples=info.splits["train"].num_examples,
      num_classes=info.features["label"].num_classes,
      num_landmarks=num_landmarks, stored_size=stored_size, mean_face=mean_face,
      protocol_root=protocol_root)
