"""Tests for input_pipeline.preprocess against numpy references written from the spec."""
import io
import itertools

import flax.jax_utils
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from input_pipeline import landmarks as landmarks_lib
from input_pipeline import preprocess

HEIGHT, WIDTH = 40, 48
NUM_EXAMPLES = 40


def _examples(num_examples=NUM_EXAMPLES, num_points=51, seed=0):
  """Random images; label = the example's index, so tests can tell examples apart."""
  rng = np.random.default_rng(seed)
  return {
      "image": rng.integers(0, 256, (num_examples, HEIGHT, WIDTH, 3), dtype=np.uint8),
      "label": np.arange(num_examples, dtype=np.int64),
      "landmarks": rng.uniform(0, HEIGHT, (num_examples, num_points, 2)).astype(np.float32),
      "visibility": rng.random((num_examples, num_points)) < 0.8,
      "yaw": rng.uniform(-90, 90, num_examples).astype(np.float32),
  }


def _dataset_fn(examples):
  return lambda: tf.data.Dataset.from_tensor_slices(examples)


def _take(iterator, count):
  return list(itertools.islice(iterator, count))


def _assert_same_batches(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for batch_a, batch_b in zip(batches_a, batches_b):
    assert batch_a.keys() == batch_b.keys()
    for key in batch_a:
      np.testing.assert_array_equal(batch_a[key], batch_b[key], err_msg=key)


def _train(examples, **overrides):
  options = dict(num_examples=len(examples["image"]), global_batch_size=8, crop_size=32,
                 image_size=24, seed=7, local_device_count=4, process_index=0,
                 process_count=1)
  options.update(overrides)
  return preprocess.train_batches(_dataset_fn(examples), **options)


def _apply(transform, examples):
  """Runs a per-example transform through tf.data map, as the pipeline does."""
  dataset = tf.data.Dataset.from_tensor_slices(examples).map(transform)
  return list(dataset.as_numpy_iterator())


# Geometry of a single example.


def test_crop_and_flip_match_numpy_exactly():
  examples = _examples(num_examples=1, num_points=68)
  examples["pitch"] = np.float32([10.0])
  examples["roll"] = np.float32([-5.0])
  crop, offset_y, offset_x = 32, 3, 11
  example = {key: tf.constant(value[0]) for key, value in examples.items()}
  for flip in (False, True):
    out = preprocess._crop_resize_flip(example, offset_y, offset_x, tf.constant(flip),
                                       crop_size=crop, image_size=crop)
    image = examples["image"][0, offset_y:offset_y + crop, offset_x:offset_x + crop]
    points = examples["landmarks"][0] - np.float32([offset_x, offset_y])
    visibility = examples["visibility"][0]
    if flip:
      # Mirror: column j <- column crop-1-j; point i <- partner of i with x -> crop - x.
      partner = landmarks_lib.flip_permutation(68)
      image = image[:, ::-1]
      points = points[partner] * np.float32([-1, 1]) + np.float32([crop, 0])
      visibility = visibility[partner]
    np.testing.assert_allclose(out["image"], image / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_allclose(out["landmarks"], points / (crop / 2) - 1.0, atol=1e-5)
    np.testing.assert_array_equal(out["visibility"], visibility)
    sign = -1.0 if flip else 1.0
    assert float(out["yaw"]) == pytest.approx(sign * examples["yaw"][0])
    assert float(out["roll"]) == pytest.approx(sign * -5.0)
    assert float(out["pitch"]) == pytest.approx(10.0)


def test_flip_swaps_the_eyes_by_hand():
  # iBUG-68: 36 is the outer corner of the subject's right eye, 45 of the left eye.
  points = np.full((68, 2), 10.0, np.float32)
  points[36], points[45] = [4.0, 6.0], [13.0, 7.0]
  example = {"image": tf.zeros((16, 16, 3), tf.uint8), "landmarks": tf.constant(points)}
  out = preprocess._crop_resize_flip(example, 0, 0, tf.constant(True),
                                     crop_size=16, image_size=16)
  pixels = landmarks_lib.denormalize(out["landmarks"].numpy(), 16, 16)
  np.testing.assert_allclose(pixels[36], [16 - 13.0, 7.0])
  np.testing.assert_allclose(pixels[45], [16 - 4.0, 6.0])


def test_eval_transform_centre_crop_and_resize_scale_landmarks():
  examples = _examples(num_examples=2)
  outs = _apply(lambda ex: preprocess.eval_transform(ex, crop_size=32, image_size=64),
                examples)
  offset = np.float32([(WIDTH - 32) // 2, (HEIGHT - 32) // 2])
  for index, out in enumerate(outs):
    expected = (examples["landmarks"][index] - offset) * 2.0  # 64 / 32
    np.testing.assert_allclose(out["landmarks"], expected / 32.0 - 1.0, atol=1e-5)
    assert out["image"].shape == (64, 64, 3)
    # Bilinear upsampling by 2 with pixel centres at +0.5: output pixels 2i and 2i+1 sample
    # the input at i - 1/4 and i + 1/4, so the mean of each 2x2 output block is the input
    # filtered by [1/8, 3/4, 1/8] along each axis.
    crop = examples["image"][index, 4:36, 8:40] / 127.5 - 1.0
    rows = crop[:-2] / 8 + crop[1:-1] * 0.75 + crop[2:] / 8
    expected_blocks = rows[:, :-2] / 8 + rows[:, 1:-1] * 0.75 + rows[:, 2:] / 8
    blocks = out["image"].reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(blocks[1:-1, 1:-1], expected_blocks, atol=1e-4)


def test_markers_stay_on_their_landmarks_through_random_crop_resize_flip():
  # Example k is black with a white 2x2 marker centred on its landmark k (integer pixel
  # corners, so the marker's centre is exactly the landmark); all other points elsewhere.
  num_points, crop, size = 51, 32, 24
  rng = np.random.default_rng(3)
  # Offsets are at most 16 (x) and 8 (y): markers at x in [17, 32], y in [9, 32] stay inside.
  points = np.stack([rng.integers(17, 33, num_points), rng.integers(9, 33, num_points)], -1)
  points = points.astype(np.float32)
  images = np.zeros((num_points, HEIGHT, WIDTH, 3), np.uint8)
  for k, (x, y) in enumerate(points.astype(int)):
    images[k, y - 1:y + 1, x - 1:x + 1] = 255
  examples = {"image": images, "landmarks": np.broadcast_to(points, (num_points,) + points.shape)}
  partner = landmarks_lib.flip_permutation(num_points)
  flips_seen = set()
  for key_word in range(6):
    key = tf.constant([5, key_word], tf.int64)
    outs = _apply(lambda ex: preprocess.train_transform(  # pylint: disable=cell-var-from-loop
        ex, key, crop_size=crop, image_size=size), examples)
    landmark_pixels = landmarks_lib.denormalize(outs[0]["landmarks"], size, size)
    centroids = []
    for out in outs:
      weight = out["image"][..., 0] + 1.0
      ys, xs = np.mgrid[0:size, 0:size] + 0.5
      centroids.append([(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()])
    centroids = np.array(centroids)
    unflipped = np.abs(centroids - landmark_pixels).max()
    flipped = np.abs(centroids - landmark_pixels[partner]).max()
    flips_seen.add(bool(flipped < unflipped))
    assert min(unflipped, flipped) < 0.5
  assert flips_seen == {False, True}


def test_random_crop_offsets_cover_every_position():
  points = np.float32([[20.0, 20.0]] * 51)
  example = {"image": tf.zeros((HEIGHT, WIDTH, 3), tf.uint8), "landmarks": tf.constant(points)}
  offsets = set()
  for key_word in range(300):
    out = preprocess.train_transform(example, tf.constant([1, key_word], tf.int64),
                                     crop_size=38, flip=False)
    pixels = landmarks_lib.denormalize(out["landmarks"].numpy(), 38, 38)
    offsets.add(tuple(np.round(points[0] - pixels[0]).astype(int)))
  assert offsets == {(x, y) for x in range(WIDTH - 38 + 1) for y in range(HEIGHT - 38 + 1)}


# Batching: determinism, resume, sharding.


def test_train_batches_shapes_dtypes_and_ranges():
  batch = next(_train(_examples()))
  assert batch["image"].shape == (4, 2, 24, 24, 3) and batch["image"].dtype == np.float32
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  assert batch["label"].shape == (4, 2) and batch["label"].dtype == np.int32
  assert batch["landmarks"].shape == (4, 2, 51, 2) and batch["landmarks"].dtype == np.float32
  assert batch["visibility"].shape == (4, 2, 51) and batch["visibility"].dtype == bool
  assert batch["yaw"].shape == (4, 2)


def test_epochs_are_seeded_permutations():
  examples = _examples(num_examples=36)  # 4 batches of 8 per epoch, 4 examples dropped
  batches = _take(_train(examples), 8)
  epochs = [np.concatenate([b["label"].ravel() for b in batches[i:i + 4]]) for i in (0, 4)]
  for labels in epochs:
    assert len(set(labels)) == 32 and set(labels) <= set(range(36))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.sort(epochs[0]))


def test_augmentation_differs_by_example_and_epoch():
  # Equal landmarks and yaw everywhere: a batch's landmarks give each crop's offset (no
  # resize) and the yaw's sign gives its mirror.
  examples = _examples(num_examples=16)
  examples["landmarks"][:] = examples["landmarks"][0]
  examples["yaw"][:] = 30.0
  partner = landmarks_lib.flip_permutation(51)
  draws = []  # (offset x, offset y, mirrored) by position in the run
  for batch in _take(_train(examples, crop_size=32, image_size=32), 4):  # 2 epochs
    for points, yaw in zip(batch["landmarks"].reshape(-1, 51, 2), batch["yaw"].ravel()):
      pixels = landmarks_lib.denormalize(points, 32, 32)
      if yaw < 0:
        pixels = pixels[partner] * np.float32([-1, 1]) + np.float32([32, 0])
      offset = np.round(examples["landmarks"][0] - pixels).astype(int)
      assert (offset == offset[0]).all()
      draws.append((*offset[0], bool(yaw < 0)))
  first_epoch, second_epoch = draws[:16], draws[16:]
  assert len({draw[:2] for draw in first_epoch}) > 8
  assert {draw[2] for draw in first_epoch} == {False, True}
  assert sum(a != b for a, b in zip(first_epoch, second_epoch)) > 12


def test_same_seed_same_batches_and_other_seed_differs():
  examples = _examples()
  _assert_same_batches(_take(_train(examples), 3), _take(_train(examples), 3))
  other = next(_train(examples, seed=8))
  assert not np.array_equal(other["label"], next(_train(examples))["label"])


@pytest.mark.parametrize("start_step", [3, 5, 12])
def test_resume_matches_uninterrupted_run(start_step):
  # 5 steps per epoch: 3 is mid-epoch, 5 an epoch boundary, 12 mid-way through epoch 2.
  examples = _examples()
  uninterrupted = _take(_train(examples), start_step + 4)[start_step:]
  _assert_same_batches(_take(_train(examples, start_step=start_step), 4), uninterrupted)


def test_processes_read_disjoint_slices_that_make_the_global_batch():
  examples = _examples()
  single = _take(_train(examples, local_device_count=4), 3)
  per_process = [_take(_train(examples, process_index=p, process_count=2,
                              local_device_count=2), 3) for p in range(2)]
  for step in range(3):
    labels = [per_process[p][step]["label"].ravel() for p in range(2)]
    assert not set(labels[0]) & set(labels[1])
    for key in single[step]:
      joined = np.concatenate([per_process[p][step][key] for p in range(2)])
      np.testing.assert_array_equal(joined, single[step][key], err_msg=key)


def test_encoded_images_give_the_same_batches():
  examples = _examples(num_examples=16)
  encoded = dict(examples)
  encoded["image"] = []
  for image in examples["image"]:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    encoded["image"].append(buffer.getvalue())
  _assert_same_batches(_take(_train(encoded, num_examples=16), 3),
                       _take(_train(examples, num_examples=16), 3))


def test_batches_go_to_devices():
  batches = flax.jax_utils.prefetch_to_device(_train(_examples()), 2)
  batch = next(batches)
  assert batch["image"].shape == (4, 2, 24, 24, 3)
  assert len(batch["image"].sharding.device_set) == 4


def test_eval_batches_see_every_example_once_with_padding():
  examples = _examples(num_examples=21)
  options = dict(num_examples=21, global_batch_size=8, crop_size=32, process_count=2,
                 local_device_count=2)
  per_process = [list(preprocess.eval_batches(_dataset_fn(examples), process_index=p,
                                              **options)) for p in range(2)]
  assert [len(batches) for batches in per_process] == [3, 3]
  indices, labels = [], []
  for batches in per_process:
    for batch in batches:
      assert batch["image"].shape == (2, 2, 32, 32, 3)
      mask = batch["mask"].ravel()
      index = batch["index"].ravel()
      np.testing.assert_array_equal(index[~mask], -1)
      np.testing.assert_array_equal(batch["image"].reshape(4, -1)[~mask], 0.0)
      for position, image in zip(index[mask], batch["image"].reshape(4, 32, 32, 3)[mask]):
        centre = examples["image"][position, 4:36, 8:40] / 127.5 - 1.0
        np.testing.assert_allclose(image, centre, atol=1e-6)
      indices.extend(index[mask])
      labels.extend(batch["label"].ravel()[mask])
  assert sorted(indices) == list(range(21))
  np.testing.assert_array_equal(labels, indices)


def test_eval_batches_need_only_images():
  images = np.zeros((3, 32, 32, 3), np.uint8)
  batches = list(preprocess.eval_batches(
      lambda: tf.data.Dataset.from_tensor_slices({"image": images}), num_examples=3,
      global_batch_size=4, crop_size=32, process_count=1, process_index=0,
      local_device_count=4))
  assert len(batches) == 1 and sorted(batches[0]) == ["image", "index", "mask"]
  np.testing.assert_array_equal(batches[0]["mask"].ravel(), [True, True, True, False])


# Clear errors.


def test_batch_not_divisible_by_devices_and_processes():
  with pytest.raises(ValueError, match="global_batch_size 10 .* 2 \\* 4"):
    _train(_examples(), global_batch_size=10, process_count=2)


def test_crop_larger_than_image():
  with pytest.raises(ValueError, match="crop_size 41 is larger than the images \\(40x48\\)"):
    _train(_examples(), crop_size=41)


def test_crop_larger_than_encoded_image_fails_when_read():
  buffer = io.BytesIO()
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(buffer, format="PNG")
  examples = _examples(num_examples=8)
  examples["image"] = [buffer.getvalue()] * 8
  with pytest.raises(tf.errors.InvalidArgumentError, match="crop_size 32 is larger"):
    next(_train(examples, num_examples=8))


def test_landmarks_of_the_wrong_count():
  with pytest.raises(ValueError, match="'landmarks' has shape \\(50, 2\\).*51 or 68"):
    _train(_examples(num_points=50))
  with pytest.raises(ValueError, match="'landmarks' has shape \\(68, 2\\).*M = 51"):
    _train(_examples(num_points=68), num_landmarks=51)


def test_missing_fields_and_wrong_num_examples():
  examples = _examples()
  del examples["label"]
  with pytest.raises(ValueError, match="lack \\['label'\\]"):
    _train(examples)
  with pytest.raises(ValueError, match="num_examples is 30 but .* 40 examples"):
    _train(_examples(), num_examples=30)


@pytest.mark.parametrize("stored, crop, size", [(112, 112, 64), (100, 96, 112), (72, 64, 64),
                                                (50, 49, 32), (41, 40, 40)])
def test_eval_images_equal_eval_transform_image_by_image(stored, crop, size):
  """Evaluation's batched numpy crop and resize against training's per-image TF transform:
  the same values without a resize, float rounding of the sums with one."""
  images = np.random.default_rng(stored).integers(0, 256, (5, stored, stored, 3), np.uint8)
  images[0] = 200  # a flat image stays flat: the resize weights of each pixel sum to 1
  batched = preprocess.eval_images(images, crop_size=crop, image_size=size)
  one_by_one = np.stack([preprocess.eval_transform({"image": tf.constant(image)},
                                                   crop_size=crop, image_size=size)["image"]
                         for image in images])
  assert batched.shape == (5, size, size, 3) and batched.dtype == np.float32
  if crop == size:
    np.testing.assert_array_equal(batched, one_by_one)
  else:
    np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=2e-6)
  np.testing.assert_allclose(batched[0], 200 / 127.5 - 1, atol=2e-6)
  with pytest.raises(ValueError, match="crop_size 60 is larger"):
    preprocess.eval_images(images[:, :50, :50], crop_size=60, image_size=size)


@pytest.mark.parametrize("crop, size", [(112, 64), (96, 112), (64, 64), (49, 32)])
def test_resize_taps_are_the_band_of_the_resize_matrix(crop, size):
  indices, weights = preprocess.resize_taps(crop, size)
  dense = np.zeros((size, crop), np.float32)
  np.add.at(dense, (np.arange(size)[:, None], indices), weights)
  np.testing.assert_array_equal(dense, preprocess.resize_matrix(crop, size))
