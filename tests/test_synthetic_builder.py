"""The synthetic_faces TFDS builder (tiny config) and its protocol files."""
import filecmp
import os
import re
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import mean_face
from input_pipeline.readers import cfp, multipie
from input_pipeline.synthetic import builder as builder_lib
from input_pipeline.synthetic import faces, protocols

OFFLINE = tfds.download.DownloadConfig(try_download_gcs=False)
YAW_BINS = list(range(-90, 91, 15))


def build(data_dir, config="tiny"):
  builder = builder_lib.SyntheticFaces(config=config, data_dir=str(data_dir))
  start = time.monotonic()
  builder.download_and_prepare(download_config=OFFLINE)
  return builder, time.monotonic() - start


def read_split(builder, split):
  dataset = builder.as_dataset(split=split, shuffle_files=False)
  examples = list(tfds.as_numpy(dataset))
  return {ex["file_name"].decode(): ex for ex in examples}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  builder, seconds = build(tmp_path_factory.mktemp("tfds"))
  return builder, seconds, read_split(builder, "train"), read_split(builder, "test")


@pytest.fixture(scope="module")
def protocol_root(tiny):
  return protocols.ensure(tiny[0])


def test_builds_in_seconds_with_the_documented_features(tiny):
  builder, seconds, train, test = tiny
  assert seconds < 60
  config = builder.builder_config
  assert len(train) == config.num_train_identities * config.images_per_identity == 320
  assert len(test) == config.num_test_identities * config.num_test_images_per_identity == 560
  assert builder.info.features["label"].num_classes == config.num_train_identities
  for examples in (train, test):
    ex = next(iter(examples.values()))
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (36, 36, 3)
    assert ex["label"].dtype == np.int64
    assert ex["landmarks"].dtype == np.float32 and ex["landmarks"].shape == (51, 2)
    assert ex["visibility"].dtype == bool and ex["visibility"].shape == (51,)
    for angle in ("yaw", "pitch", "roll"):
      assert ex[angle].dtype == np.float32 and ex[angle].shape == ()


def test_labels_poses_and_visibility(tiny):
  builder, _, train, test = tiny
  config = builder.builder_config
  for examples, identities in ((train, config.num_train_identities),
                               (test, config.num_test_identities)):
    labels = np.array([ex["label"] for ex in examples.values()])
    assert set(labels) == set(range(identities))
    yaw = np.array([ex["yaw"] for ex in examples.values()])
    assert yaw.min() >= -90 and yaw.max() <= 90
    assert yaw.min() < -75 and yaw.max() > 75
    visible = np.array([ex["visibility"] for ex in examples.values()])
    assert visible[np.abs(yaw) < 30].mean() > 0.95
    assert visible[np.abs(yaw) > 80].mean() < 0.75
  train_yaw = np.array([ex["yaw"] for ex in train.values()])
  counts = np.histogram(np.abs(train_yaw), [0, 37.5, 67.5, 90.1])[0]
  assert counts[0] > counts[1] > counts[2] > 0  # frontal-heavy, profiles included
  test_bins = {int(re.match(r".*/(-?\d+)_\d+\.jpg$", name).group(1))
               for name in test if name.startswith("multipie")}
  assert sorted(test_bins) == YAW_BINS


@pytest.mark.parametrize("config_name", ["tiny", "default"])
def test_train_validation_and_test_identities_are_different_people(config_name):
  config = builder_lib.resolve_config(config_name)
  counts = {"train": config.num_train_identities, "test": config.num_test_identities,
            "validation": config.num_validation_identities}
  people = {split: {faces.sample_identity(builder_lib._identity_seed(config, split, i))
                    for i in range(count)} for split, count in counts.items()}
  for split, count in counts.items():
    assert len(people[split]) == count  # no person twice within a split
  assert not people["train"] & people["test"]
  assert not people["train"] & people["validation"]
  assert not people["test"] & people["validation"]


def test_mean_face_is_the_mean_of_frontal_training_landmarks(tiny):
  builder, _, train, _ = tiny
  stored = mean_face.read(builder.data_dir)
  frontal = [ex["landmarks"] for ex in train.values() if abs(ex["yaw"]) < 10]
  assert len(frontal) >= 10
  np.testing.assert_allclose(stored, np.mean(frontal, axis=0), rtol=1e-5)
  assert np.all((stored > 0) & (stored < 36))


def test_same_seed_builds_the_same_bytes(tiny, tmp_path):
  builder, _, train, test = tiny
  again, _ = build(tmp_path)
  for split, first in (("train", train), ("test", test)):
    second = read_split(again, split)
    assert first.keys() == second.keys()
    for name, ex in first.items():
      for key in ("image", "landmarks", "visibility", "yaw", "label"):
        assert np.asarray(ex[key]).tobytes() == np.asarray(second[name][key]).tobytes()
  np.testing.assert_array_equal(mean_face.read(builder.data_dir),
                                mean_face.read(again.data_dir))


def test_workers_do_not_change_the_data():
  config = builder_lib.make_config("mini", image_size=20, num_train_identities=20,
                                   images_per_identity=2, supersample=1, workers=1)
  serial = list(builder_lib.generate(config, "train"))
  parallel = list(builder_lib.generate(
      builder_lib.make_config("mini", image_size=20, num_train_identities=20,
                              images_per_identity=2, supersample=1, workers=2), "train"))
  assert len(serial) == len(parallel) == 40
  for a, b in zip(serial, parallel):
    assert a[:3] == b[:3]
    for x, y in zip(a[3:], b[3:]):
      assert x.tobytes() == y.tobytes()


def test_bad_configs_raise():
  with pytest.raises(ValueError, match="num_test_identities"):
    builder_lib.make_config("odd", image_size=32, num_train_identities=100,
                            num_test_identities=25)
  with pytest.raises(ValueError, match="num_test_identities"):
    builder_lib.make_config("many", image_size=32, num_train_identities=10,
                            num_test_identities=1000)  # subject folders have 3 digits
  with pytest.raises(ValueError, match="num_validation_identities=15 must be 0 or a multiple"):
    builder_lib.make_config("val", image_size=32, num_train_identities=10,
                            num_validation_identities=15)
  with pytest.raises(ValueError, match="image_size"):
    builder_lib.make_config("small", image_size=8, num_train_identities=100)
  with pytest.raises(ValueError, match="taken by a built-in"):
    builder_lib.make_config("tiny", image_size=32, num_train_identities=100)
  with pytest.raises(ValueError, match="unknown synthetic_faces config"):
    builder_lib.resolve_config("huge")
  assert builder_lib.make_config("c", 40, 500).num_test_identities == 50


def read_lines(path):
  with open(path) as f:
    return f.read().splitlines()


def test_protocol_files_have_the_benchmark_formats(tiny, protocol_root):
  builder, _, _, test = tiny
  config = builder.builder_config
  n = config.num_test_identities
  cfp_root = os.path.join(protocol_root, "cfp")
  for list_name, kind, per_subject in (("F", "frontal", 10), ("P", "profile", 4)):
    lines = read_lines(os.path.join(cfp_root, "Protocol", f"Pair_list_{list_name}.txt"))
    assert len(lines) == n * per_subject
    for i, line in enumerate(lines, 1):
      subject, k = (i - 1) // per_subject + 1, (i - 1) % per_subject + 1
      assert line == f"{i} ../Data/Images/{subject:03d}/{kind}/{k:02d}.jpg"
      path = os.path.join(cfp_root, "Data", "Images", f"{subject:03d}", kind, f"{k:02d}.jpg")
      with Image.open(path) as image:
        assert image.format == "JPEG" and image.size == (36, 36)
      yaw = test[f"cfp/Data/Images/{subject:03d}/{kind}/{k:02d}.jpg"]["yaw"]
      assert abs(yaw) <= 8 if kind == "frontal" else abs(yaw) >= 75

  per_fold = n // 10
  for protocol, per_b in (("FF", 10), ("FP", 4)):
    fold_subjects = []
    for fold in range(1, 11):
      subjects = set()
      for name, same in (("same", True), ("diff", False)):
        lines = read_lines(os.path.join(cfp_root, "Protocol", "Split", protocol,
                                        f"{fold:02d}", f"{name}.txt"))
        assert len(lines) == 7 * per_fold
        pairs = [tuple(map(int, line.split(","))) for line in lines]
        assert all(re.fullmatch(r"\d+,\d+", line) for line in lines)
        assert len(set(pairs)) == len(pairs)
        for a, b in pairs:
          assert 1 <= a <= n * 10 and 1 <= b <= n * per_b
          subject_a, subject_b = (a - 1) // 10 + 1, (b - 1) // per_b + 1
          assert (subject_a == subject_b) == same
          if protocol == "FF":
            assert a != b
          subjects |= {subject_a, subject_b}
      assert subjects == set(range((fold - 1) * per_fold + 1, fold * per_fold + 1))
      fold_subjects.append(subjects)
    assert set.union(*fold_subjects) == set(range(1, n + 1))

  csv = read_lines(os.path.join(cfp_root, "landmarks.csv"))
  assert len(csv) == n * 14
  for line in csv:
    fields = line.split(",")
    assert len(fields) == 103
    expected = test["cfp/" + fields[0]]["landmarks"].ravel()
    np.testing.assert_allclose(np.array(fields[1:], float), expected, atol=1e-3)

  mp_root = os.path.join(protocol_root, "multipie")
  gallery = [line.split(" ") for line in read_lines(os.path.join(mp_root, "gallery.txt"))]
  assert [g[1] for g in gallery] == [str(s) for s in range(1, n + 1)]
  assert all(g[0] == f"images/{int(g[1]):03d}/0_0.jpg" for g in gallery)
  probes = [line.split(" ") for line in read_lines(os.path.join(mp_root, "probe.txt"))]
  assert len(probes) == n * 13 * config.illuminations
  for path, subject, yaw in probes:
    assert re.fullmatch(rf"images/{int(subject):03d}/{yaw}_[1-9]\.jpg", path)
    assert os.path.isfile(os.path.join(mp_root, path))
    assert abs(test["multipie/" + path]["yaw"] - int(yaw)) <= 2
  assert sorted({int(p[2]) for p in probes}) == YAW_BINS


def test_protocol_files_are_read_by_the_benchmark_readers(protocol_root):
  for protocol, same in (("FF", 140), ("FP", 140)):
    pairs = cfp.read_cfp(os.path.join(protocol_root, "cfp"), protocol)
    assert pairs.is_same.sum() == same and (~pairs.is_same).sum() == same
    assert not np.isnan(pairs.landmarks).any()
  lists = multipie.read_multipie(os.path.join(protocol_root, "multipie"))
  assert len(lists.gallery_paths) == 20 and len(lists.probe_paths) == 260


def test_write_protocols_matches_the_builder_tree(protocol_root, tmp_path):
  written = protocols.write_protocols(tmp_path / "protocols", "tiny")
  mismatches = []
  for folder, _, files in os.walk(protocol_root):
    for name in files:
      relative = os.path.relpath(os.path.join(folder, name), protocol_root)
      if not filecmp.cmp(os.path.join(folder, name), os.path.join(written, relative),
                         shallow=False):
        mismatches.append(relative)
  assert not mismatches
  assert (sum(len(files) for _, _, files in os.walk(written))
          == sum(len(files) for _, _, files in os.walk(protocol_root)))


def test_multipie_images_only_for_the_first_people():
  config = builder_lib.make_config("mp", image_size=20, num_train_identities=20,
                                   num_test_identities=20, num_validation_identities=20,
                                   num_multipie_identities=10, illuminations=1)
  with_multipie = builder_lib.test_plan(config, 9)
  assert len(with_multipie) == config.num_test_images_per_identity == 14 + 1 + 13
  without = [name for name, _ in builder_lib.test_plan(config, 10)]
  assert len(without) == 14 and all(name.startswith("cfp/Data/Images/011/") for name in without)
  assert config.multipie_identities("test") == config.multipie_identities("validation") == 10
  with pytest.raises(ValueError, match="num_multipie_identities=30 must be in 0..num_test"):
    builder_lib.make_config("mp2", image_size=20, num_train_identities=20,
                            num_test_identities=20, num_multipie_identities=30)
