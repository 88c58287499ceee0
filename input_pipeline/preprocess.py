"""Landmark-aware preprocessing and deterministic, resumable batching with tf.data.

Per example (TF ops, usable inside `tf.data.Dataset.map`):
- train: a random `crop_size` square crop of the stored image (the paper: 96 of 100, 224 of
  230), a resize of the crop to `image_size`, and a random horizontal mirror (p = 0.5);
- eval: the centred crop and the resize, no mirror.
Landmarks move with the pixels (crop: shift; resize: scale by image_size / crop_size; mirror:
x -> image_size - x and left/right points swapped by the scheme's permutation), then are
normalised to [-1, 1] over the network input (`landmarks.normalize`); points that fall outside
the crop keep their coordinates outside [-1, 1]. A mirror also permutes `visibility` and
negates `yaw` and `roll`. Intensities go from uint8 to float32 in [-1, 1] (x / 127.5 - 1).

Examples are dicts: `image` (H, W, 3) uint8 RGB, or an encoded image string (e.g. from TFDS
with `decoders={"image": tfds.decode.SkipDecoding()}`), which is then decoded only for the
examples this process keeps; `label` int; `landmarks` float32 (M, 2) in pixels of the stored
image (M = 51 or 68); optionally `visibility` bool (M,) and `yaw`, `pitch`, `roll` (degrees).
Other keys are dropped.

Batching (`train_batches`, `eval_batches`) takes `dataset_fn`: a callable with no arguments
that returns a fresh, unshuffled tf.data.Dataset of `num_examples` examples in the same order
every time, e.g. `lambda: builder.as_dataset(split="train", shuffle_files=False)`. Batches are
numpy dicts shaped for `jax.pmap`: (local_device_count, per_device_batch, ...).

Determinism: epoch e is the data set shuffled by a tf.data shuffle buffer with a seed derived
from (seed, e), cut to whole global batches; the example at position i of that order is
augmented with the stateless key derived from (seed, e, i). So global batch s is a pure
function of (seed, s): resuming at `start_step` skips whole epochs arithmetically and, within
the epoch, drops the first examples before they are decoded or augmented, and yields exactly
the batches an uninterrupted run would. The buffer holds min(shuffle_buffer_size,
num_examples) examples; TFDS writes examples in a shuffled order, so a buffer much smaller
than the data set still mixes identities. Each epoch is its own tf.data pipeline (the buffer
refills at epoch boundaries: `aprn_jax.data` keeps small data sets decoded in memory, so that
takes a fraction of a second). Pipelines run without tf.data's autotuning (`fixed_parallelism`).

Multi-process: every process reads the whole shuffled order and keeps, from each global batch,
its contiguous slice [process_index * B, (process_index + 1) * B) with B = global batch /
process count, before decoding. The processes' batches are thus disjoint and together are
the global batch, identical for any process count (each process reads, but does not decode,
the others' records).

Device prefetch: wrap an iterator with `flax.jax_utils.prefetch_to_device(batches, 2)`.
"""
import functools
import math
from typing import Callable, Iterator

import jax
import numpy as np

import tensorflow as tf

from input_pipeline import landmarks as landmarks_lib

POSE_ANGLES = ("yaw", "pitch", "roll")
MIRRORED_ANGLES = ("yaw", "roll")  # negated by a horizontal mirror

DatasetFn = Callable[[], tf.data.Dataset]


PREFETCH_BATCHES = 2


def fixed_parallelism(dataset):
  """`dataset` without tf.data's autotuning (AUTOTUNE maps then use every core).

  Destroying an autotuned iterator waits for its optimisation thread, whose sleep grows to a
  minute; the wait holds Python's lock, so every finished epoch (or evaluation pass) froze the
  process for up to 57 s on the 2-core development machine (measured with py-spy).
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.with_options(options)


def hide_gpus_from_tensorflow():
  """Keeps TensorFlow (used for tf.data only) off the GPUs, so JAX gets all their memory."""
  if tf.config.list_physical_devices("GPU"):
    tf.config.set_visible_devices([], "GPU")


hide_gpus_from_tensorflow()


def _decoded(example):
  """The example with its image as a uint8 (H, W, 3) tensor, decoding encoded strings."""
  image = example["image"]
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  return {**example, "image": image}


def _crop_resize_image(image, offset_y, offset_x, flip, *, crop_size, image_size):
  """uint8 [..., H, W, 3] -> float32 [..., S, S, 3] in [-1, 1]: the square at (offset_y,
  offset_x), mirrored where `flip`, resized to S = image_size; one image or a batch alike."""
  shape = tf.shape(image)
  check = tf.debugging.assert_less_equal(
      crop_size, tf.minimum(shape[-3], shape[-2]),
      message=f"crop_size {crop_size} is larger than an image of the data set")
  # The check must run before the crop's shape is asserted, or that error may come first.
  with tf.control_dependencies([check]):
    image = tf.identity(image)[..., offset_y:offset_y + crop_size,
                               offset_x:offset_x + crop_size, :]
  image = tf.ensure_shape(image, image.shape[:-3].concatenate([crop_size, crop_size, 3]))
  image = tf.cond(flip, lambda: tf.reverse(image, axis=[-2]), lambda: image)
  image = tf.cast(image, tf.float32)
  if image_size != crop_size:
    image = tf.image.resize(image, [image_size, image_size], antialias=True)
  # Bilinear weights are convex: clipping only removes the resize's rounding error.
  return tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)


def _crop_resize_flip(example, offset_y, offset_x, flip, *, crop_size, image_size):
  """Crops the square at (offset_y, offset_x), mirrors it where `flip`, resizes it."""
  out = {"image": _crop_resize_image(example["image"], offset_y, offset_x, flip,
                                     crop_size=crop_size, image_size=image_size)}
  if "label" in example:
    out["label"] = tf.cast(example["label"], tf.int32)
  if "landmarks" in example:
    offset = tf.cast(tf.stack([offset_x, offset_y]), tf.float32)
    points = tf.cast(example["landmarks"], tf.float32) - offset
    perm = landmarks_lib.flip_permutation(points.shape[0])
    mirrored = tf.gather(points, perm) * [-1.0, 1.0] + [float(crop_size), 0.0]
    points = tf.where(flip, mirrored, points) * (image_size / crop_size)
    out["landmarks"] = landmarks_lib.normalize(points, image_size, image_size)
  if "visibility" in example:
    visibility = tf.cast(example["visibility"], tf.bool)
    perm = landmarks_lib.flip_permutation(visibility.shape[0])
    out["visibility"] = tf.where(flip, tf.gather(visibility, perm), visibility)
  for angle in POSE_ANGLES:
    if angle in example:
      value = tf.cast(example[angle], tf.float32)
      out[angle] = tf.where(flip, -value, value) if angle in MIRRORED_ANGLES else value
  return out


def train_transform(example, key, *, crop_size, image_size=None, flip=True):
  """Random crop, resize and (if `flip`) random mirror, drawn from the stateless `key`.

  `key`: int64 tensor of shape [2], a tf.random.stateless_* seed; the same key gives the same
  crop and mirror. `image_size` defaults to `crop_size` (no resize).
  """
  example = _decoded(example)
  image_size = image_size or crop_size
  shape = tf.shape(example["image"])
  uniform = tf.random.stateless_uniform([3], seed=key)
  max_offset = tf.cast(shape[:2] - crop_size, tf.float32)
  offsets = tf.minimum(tf.cast(tf.floor(uniform[:2] * (max_offset + 1.0)), tf.int32),
                       shape[:2] - crop_size)
  do_flip = tf.logical_and(flip, uniform[2] < 0.5)
  return _crop_resize_flip(example, offsets[0], offsets[1], do_flip,
                           crop_size=crop_size, image_size=image_size)


def eval_transform(example, *, crop_size, image_size=None):
  """The centred `crop_size` square, resized to `image_size` (default: no resize)."""
  example = _decoded(example)
  shape = tf.shape(example["image"])
  offsets = (shape[:2] - crop_size) // 2
  return _crop_resize_flip(example, offsets[0], offsets[1], tf.constant(False),
                           crop_size=crop_size, image_size=image_size or crop_size)


@functools.lru_cache(maxsize=16)
def resize_matrix(crop_size, image_size):
  """(image_size, crop_size) float32: the weights tf.image.resize (antialiased bilinear)
  gives each input row in each output row, read off by resizing the unit columns."""
  unit = tf.reshape(tf.eye(crop_size), [crop_size, crop_size, 1, 1])
  return tf.image.resize(unit, [image_size, 1], antialias=True).numpy()[:, :, 0, 0].T.copy()


def resize_taps(crop_size, image_size):
  """`resize_matrix` as its nonzero band: (indices, weights), both (image_size, K), with
  output row s = sum_k weights[s, k] * input row indices[s, k]; K is the most inputs any
  output row reads (4 for 112 -> 64), padded with weight 0. A K-term sum costs a fraction of
  the dense product."""
  matrix = resize_matrix(crop_size, image_size)
  rows = [np.flatnonzero(row) for row in matrix]
  taps = max(len(row) for row in rows)
  indices = np.zeros((image_size, taps), np.int32)
  weights = np.zeros((image_size, taps), np.float32)
  for s, row in enumerate(rows):
    indices[s, :len(row)], weights[s, :len(row)] = row, matrix[s, row]
  return indices, weights


def eval_images(images, *, crop_size, image_size=None):
  """`eval_transform`'s network inputs of a uint8 batch (N, H, W, 3), in numpy.

  The resize is separable and linear, so it is two matrix products with the very weights of
  tf.image.resize (`resize_matrix`): equal to `eval_transform` up to float rounding of the
  sums (the same values when there is no resize), at a fraction of its cost; evaluating files
  needs that, as TF's resize of a 112 crop to 64 costs about as much as the network.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"images: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
  image_size = image_size or crop_size
  height, width = images.shape[1:3]
  if crop_size > min(height, width):
    raise ValueError(f"crop_size {crop_size} is larger than an image of the data set")
  top, left = (height - crop_size) // 2, (width - crop_size) // 2
  crop = images[:, top:top + crop_size, left:left + crop_size]
  if image_size == crop_size:
    out = crop.astype(np.float32)
  else:  # each side's resize as one large matrix product over the whole batch
    weights = resize_matrix(crop_size, image_size)
    n, size = len(crop), image_size
    rows = np.ascontiguousarray(crop.transpose(0, 1, 3, 2), np.float32)  # (N, H, C, W)
    rows = (rows.reshape(-1, crop_size) @ weights.T).reshape(n, crop_size, 3, size)
    columns = np.ascontiguousarray(rows.transpose(1, 0, 2, 3)).reshape(crop_size, -1)
    out = (weights @ columns).reshape(size, n, 3, size)  # (S, N, C, S)
    out = np.ascontiguousarray(out.transpose(1, 0, 3, 2))
  np.divide(out, np.float32(127.5), out=out)
  np.subtract(out, np.float32(1.0), out=out)
  return np.clip(out, -1.0, 1.0, out=out)


def _check_dataset(dataset, *, num_examples, crop_size, num_landmarks, required):
  """Clear errors for data sets that do not fit the options, before anything is read."""
  spec = dataset.element_spec
  if not isinstance(spec, dict):
    raise ValueError(f"dataset_fn must return a dataset of dicts, got elements {spec}")
  missing = [key for key in required if key not in spec]
  if missing:
    raise ValueError(f"dataset elements lack {missing}; they have {sorted(spec)}")
  image = spec["image"]
  if image.dtype != tf.string:
    if image.dtype != tf.uint8 or image.shape.rank != 3 or image.shape[-1] != 3:
      raise ValueError(f"dataset element 'image' must be uint8 (H, W, 3) or an encoded "
                       f"string, got {image.dtype.name} {image.shape}")
    height, width = image.shape[:2]
    if height is not None and width is not None and crop_size > min(height, width):
      raise ValueError(f"crop_size {crop_size} is larger than the images ({height}x{width})")
  if "landmarks" in spec:
    shape = spec["landmarks"].shape
    counts = ([num_landmarks] if num_landmarks else
              sorted(landmarks_lib.NUM_POINTS.values()))
    if shape.rank != 2 or shape[1] != 2 or shape[0] not in counts:
      raise ValueError(f"dataset element 'landmarks' has shape {shape}; expected (M, 2) "
                       f"with M = {' or '.join(map(str, counts))}")
    if "visibility" in spec and spec["visibility"].shape != shape[:1]:
      raise ValueError(f"dataset element 'visibility' has shape {spec['visibility'].shape};"
                       f" expected ({shape[0]},) like 'landmarks'")
  cardinality = int(dataset.cardinality())
  if cardinality == tf.data.INFINITE_CARDINALITY:
    raise ValueError("dataset_fn returned an infinite dataset; it must be one pass")
  if cardinality >= 0 and cardinality != num_examples:
    raise ValueError(f"num_examples is {num_examples} but dataset_fn's dataset has "
                     f"{cardinality} examples")


def _sharding(global_batch_size, process_index, process_count, local_device_count):
  """(process_index, per-process batch, local devices) with defaults from JAX, checked."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_device_count = local_device_count or jax.local_device_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if global_batch_size <= 0 or global_batch_size % (process_count * local_device_count):
    raise ValueError(
        f"global_batch_size {global_batch_size} is not a positive multiple of process_count"
        f" * local_device_count = {process_count} * {local_device_count}")
  return process_index, global_batch_size // process_count, local_device_count


def _check_sizes(crop_size, image_size):
  if crop_size <= 0:
    raise ValueError(f"crop_size must be positive, got {crop_size}")
  if image_size is not None and image_size <= 0:
    raise ValueError(f"image_size must be positive, got {image_size}")


def _process_slice_filter(global_batch_size, process_batch, process_index):
  """A `filter` predicate on (position, example): is it in this process's batch slice?"""
  def in_slice(position, unused_example):
    return (position % global_batch_size) // process_batch == process_index
  return in_slice


def _split_devices(batch, local_device_count):
  """(B, ...) -> (local_device_count, B / local_device_count, ...) for every array."""
  return {key: tf.reshape(value, [local_device_count, -1] + value.shape[1:].as_list())
          for key, value in batch.items()}


def _seed_words(seed):
  """`seed` (an int, or a tuple of ints such as (seed, phase, purpose)) as a tuple of ints."""
  words = (seed,) if isinstance(seed, (int, np.integer)) else tuple(seed)
  if not words or any(not isinstance(w, (int, np.integer)) or w < 0 for w in words):
    raise ValueError(f"seed must be an int >= 0 or a non-empty tuple of them, got {seed!r}")
  return tuple(int(w) for w in words)


def _epoch_seeds(seed, epoch):
  """The epoch's shuffle seed and augmentation key prefix: two 63-bit ints of (*seed, epoch)."""
  entropy = [*_seed_words(seed), epoch]
  words = np.random.SeedSequence(entropy).generate_state(2, np.uint64) >> np.uint64(1)
  return int(words[0]), int(words[1])


def train_batches(dataset_fn: DatasetFn, *, num_examples: int, global_batch_size: int,
                  crop_size: int, seed, image_size: int | None = None,
                  start_step: int = 0, flip: bool = True, shuffle_buffer_size: int = 10_000,
                  num_landmarks: int | None = None, process_index: int | None = None,
                  process_count: int | None = None,
                  local_device_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches from global step `start_step` on (see the module docstring).

  Each epoch uses num_examples // global_batch_size global batches (the last partial batch
  is dropped). `seed`: an int or a tuple of ints (`aprn_jax.seeds.data_seed`). Yields
  numpy dicts: image float32 (D, b, S, S, 3) in [-1, 1], label int32 (D, b), landmarks float32 (D, b, M, 2) in [-1, 1], plus visibility / yaw / pitch / roll
  when the data has them; D = local_device_count, b = global batch / processes / D,
  S = image_size. `process_index`, `process_count` and `local_device_count` default to
  JAX's.
  """
  _check_sizes(crop_size, image_size)
  process_index, process_batch, local_device_count = _sharding(
      global_batch_size, process_index, process_count, local_device_count)
  if num_examples < global_batch_size:
    raise ValueError(f"num_examples {num_examples} is smaller than global_batch_size "
                     f"{global_batch_size}: an epoch would have no batch")
  _seed_words(seed)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  _check_dataset(dataset_fn(), num_examples=num_examples, crop_size=crop_size,
                 num_landmarks=num_landmarks, required=("image", "label", "landmarks"))
  steps_per_epoch = num_examples // global_batch_size
  in_slice = _process_slice_filter(global_batch_size, process_batch, process_index)

  def epoch_batches(epoch, first_step):
    shuffle_seed, augment_seed = _epoch_seeds(seed, epoch)

    def augment(position, example):
      key = tf.stack([tf.constant(augment_seed, tf.int64), position])
      return train_transform(example, key, crop_size=crop_size, image_size=image_size,
                             flip=flip)

    dataset = dataset_fn().shuffle(min(shuffle_buffer_size, num_examples), seed=shuffle_seed,
                                   reshuffle_each_iteration=False)
    dataset = dataset.take(steps_per_epoch * global_batch_size).enumerate()
    dataset = dataset.skip(first_step * global_batch_size).filter(in_slice)
    dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(process_batch, drop_remainder=True)
    dataset = dataset.map(lambda batch: _split_devices(batch, local_device_count))
    return fixed_parallelism(dataset.prefetch(PREFETCH_BATCHES))

  def batches():
    epoch, first_step = divmod(start_step, steps_per_epoch)
    while True:
      count = 0
      for count, batch in enumerate(epoch_batches(epoch, first_step).as_numpy_iterator(), 1):
        yield batch
      if count != steps_per_epoch - first_step:
        raise ValueError(f"dataset_fn yielded fewer than num_examples = {num_examples} "
                         f"examples in epoch {epoch}")
      epoch, first_step = epoch + 1, 0

  return batches()


def eval_batches(dataset_fn: DatasetFn, *, num_examples: int, global_batch_size: int,
                 crop_size: int, image_size: int | None = None,
                 num_landmarks: int | None = None, process_index: int | None = None,
                 process_count: int | None = None,
                 local_device_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass in data set order, every example exactly once; the last batch is padded.

  Every process yields ceil(num_examples / global_batch_size) batches (sliced like
  `train_batches`), each a numpy dict shaped (D, b, ...) with the eval transform's arrays
  (image; label, landmarks, ... when present), `index` int32 (the example's position in the
  data set, -1 for padding) and `mask` bool (False for padding, whose arrays are zeros).
  """
  _check_sizes(crop_size, image_size)
  process_index, process_batch, local_device_count = _sharding(
      global_batch_size, process_index, process_count, local_device_count)
  _check_dataset(dataset_fn(), num_examples=num_examples, crop_size=crop_size,
                 num_landmarks=num_landmarks, required=("image",))
  num_batches = math.ceil(num_examples / global_batch_size)

  def transform(position, example):
    out = eval_transform(example, crop_size=crop_size, image_size=image_size)
    return {**out, "index": tf.cast(position, tf.int32), "mask": tf.constant(True)}

  dataset = dataset_fn().take(num_examples).enumerate().filter(
      _process_slice_filter(global_batch_size, process_batch, process_index))
  dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  padding = {key: tf.zeros(spec.shape, spec.dtype)
             for key, spec in dataset.element_spec.items()}
  padding["index"] = tf.constant(-1, tf.int32)
  dataset = dataset.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  dataset = dataset.take(num_batches * process_batch).batch(process_batch)
  dataset = dataset.map(lambda batch: _split_devices(batch, local_device_count))
  return fixed_parallelism(dataset.prefetch(PREFETCH_BATCHES)).as_numpy_iterator()
