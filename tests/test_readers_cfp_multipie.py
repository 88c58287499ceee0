"""Tests for the CFP and Multi-PIE readers and the shared image loading, on fixture trees."""
import os

import numpy as np
from PIL import Image
import pytest

from input_pipeline.readers import cfp
from input_pipeline.readers import images
from input_pipeline.readers import multipie

import fixture_files


# A CFP tree: 3 identities with 2 frontal and 2 profile images each. Frontal list index
# 2 * (identity - 1) + j for image j (1-based) of the identity; likewise the profile list.
def _frontal(identity, j):
  return 2 * (identity - 1) + j


# Pairs per (protocol, fold, kind) as (a, b) list indices; folds not listed are empty.
CFP_SPLITS = {
    ("FF", 1, "same"): [(1, 2), (3, 4)],
    ("FF", 1, "diff"): [(1, 3)],
    ("FF", 10, "same"): [(5, 6)],
    ("FF", 10, "diff"): [(2, 6), (4, 5)],
    ("FP", 2, "same"): [(1, 1), (3, 4)],
    ("FP", 2, "diff"): [(5, 2)],
    ("FP", 7, "diff"): [(1, 6)],
}


def _cfp_relative(kind, index):
  identity, j = (index - 1) // 2 + 1, (index - 1) % 2 + 1
  folder = "frontal" if kind == "F" else "profile"
  return f"Data/Images/{identity:03d}/{folder}/{j:02d}.jpg"


@pytest.fixture(name="cfp_root")
def fixture_cfp_root(tmp_path):
  rng = np.random.default_rng(0)
  for kind, list_name in (("F", "Pair_list_F.txt"), ("P", "Pair_list_P.txt")):
    lines = []
    for index in range(1, 7):
      relative = _cfp_relative(kind, index)
      fixture_files.write_image(str(tmp_path / relative), rng.integers(0, 256, (12, 10, 3), np.uint8))
      lines.append(f"{index} ../{relative}\n")
    fixture_files.write_text(str(tmp_path / "Protocol" / list_name), "".join(lines))
  for protocol in cfp.PROTOCOLS:
    for fold in range(1, 11):
      for kind in ("same", "diff"):
        pairs = CFP_SPLITS.get((protocol, fold, kind), [])
        fixture_files.write_text(str(tmp_path / "Protocol" / "Split" / protocol / f"{fold:02d}" / f"{kind}.txt"),
               "".join(f"{a},{b}\n" for a, b in pairs))
  return tmp_path


def _expected_cfp(root, protocol):
  """(path a, path b, is_same, 0-based fold) in the reader's documented order."""
  second = "F" if protocol == "FF" else "P"
  expected = []
  for fold in range(1, 11):
    for kind in ("same", "diff"):
      for a, b in CFP_SPLITS.get((protocol, fold, kind), []):
        expected.append((str(root / _cfp_relative("F", a)), str(root / _cfp_relative(second, b)),
                         kind == "same", fold - 1))
  return expected


@pytest.mark.parametrize("protocol", ["FF", "FP"])
def test_cfp_pairs_labels_and_folds(cfp_root, protocol):
  pairs = cfp.read_cfp(str(cfp_root), protocol)
  got = [(pairs.paths[a], pairs.paths[b], bool(same), int(fold))
         for a, b, same, fold in zip(pairs.index_a, pairs.index_b, pairs.is_same, pairs.fold)]
  assert got == _expected_cfp(cfp_root, protocol)
  assert len(set(pairs.paths)) == len(pairs.paths)
  assert set(pairs.paths) == {p for a, b, _, _ in got for p in (a, b)}
  assert pairs.landmarks is None
  assert pairs.index_a.dtype == np.int32 and pairs.is_same.dtype == bool


def test_cfp_fp_paths_frontal_first(cfp_root):
  paths = cfp.read_cfp(str(cfp_root), "FP").paths
  folders = [os.path.basename(os.path.dirname(path)) for path in paths]
  assert folders == sorted(folders)  # "frontal" < "profile"
  assert folders.count("profile") == 4  # profile indices 1, 2, 4, 6


def test_cfp_landmarks_csv(cfp_root):
  points = np.arange(102, dtype=np.float32).reshape(51, 2)
  fixture_files.write_text(str(cfp_root / "landmarks.csv"),
         _cfp_relative("F", 1) + "," + ",".join(map(str, points.ravel())) + "\n")
  pairs = cfp.read_cfp(str(cfp_root), "FF")
  first = pairs.paths.index(str(cfp_root / _cfp_relative("F", 1)))
  assert pairs.landmarks.shape == (len(pairs.paths), 51, 2)
  np.testing.assert_array_equal(pairs.landmarks[first], points)
  others = np.delete(pairs.landmarks, first, axis=0)
  assert np.isnan(others).all()


def test_cfp_malformed_landmarks_csv(cfp_root):
  fixture_files.write_text(str(cfp_root / "landmarks.csv"), "a.jpg," + ",".join(["1"] * 102) + "\n"
         "b.jpg," + ",".join(["1"] * 100) + "\n")
  with pytest.raises(ValueError, match="landmarks.csv:2: expected a path and 102 numbers"):
    cfp.read_cfp(str(cfp_root), "FF")


@pytest.mark.parametrize("relative_file, text, error, message", [
    ("Protocol/Split/FP/03/diff.txt", "1,7\n", ValueError,
     "diff.txt:1: index 7 is not in .*Pair_list_P.txt"),
    ("Protocol/Split/FP/03/same.txt", "1,2\n\n2,x\n", ValueError,
     "same.txt:3: index 'x' is not an integer"),
    ("Protocol/Split/FP/03/same.txt", "1,2,3\n", ValueError,
     "same.txt:1: expected 2 fields, got 3"),
    ("Protocol/Pair_list_P.txt", "1 ../Data/Images/001/profile/01.jpg extra\n", ValueError,
     "Pair_list_P.txt:1: expected 2 fields, got 3"),
    ("Protocol/Pair_list_P.txt", "1 ../Data/Images/001/profile/01.jpg\n"
     "1 ../Data/Images/001/profile/02.jpg\n", ValueError,
     "Pair_list_P.txt:2: index 1 appears twice"),
    ("Protocol/Pair_list_F.txt", "1 ../Data/Images/009/frontal/01.jpg\n", FileNotFoundError,
     "Pair_list_F.txt:1: image not found: .*009/frontal/01.jpg"),
])
def test_cfp_malformed_files_name_file_and_line(cfp_root, relative_file, text, error,
                                                message):
  fixture_files.write_text(str(cfp_root / relative_file), text)
  with pytest.raises(error, match=message):
    cfp.read_cfp(str(cfp_root), "FP")


def test_cfp_missing_split_file_and_bad_protocol(cfp_root):
  os.remove(cfp_root / "Protocol" / "Split" / "FF" / "05" / "diff.txt")
  with pytest.raises(FileNotFoundError, match="FF/05/diff.txt"):
    cfp.read_cfp(str(cfp_root), "FF")
  with pytest.raises(ValueError, match="protocol must be one of"):
    cfp.read_cfp(str(cfp_root), "PP")


# Multi-PIE style lists.


@pytest.fixture(name="multipie_root")
def fixture_multipie_root(tmp_path):
  gallery = [("g/001.png", 1), ("g/002.png", 2), ("g/017.png", 17)]
  probes = [("p/a.png", 2, "-90"), ("p/b.png", 1, "14.2"), ("p/c.png", 17, "-44"),
            ("p/d.png", 2, "0"), ("p/e.png", 1, "60.5")]
  for path, *_ in gallery + probes:
    fixture_files.write_image(str(tmp_path / path), np.zeros((4, 4, 3), np.uint8))
  fixture_files.write_text(str(tmp_path / "gallery.txt"), "".join(f"{p} {s}\n" for p, s in gallery))
  fixture_files.write_text(str(tmp_path / "probe.txt"), "".join(f"{p} {s} {y}\n" for p, s, y in probes))
  return tmp_path


def test_multipie_lists(multipie_root):
  protocol = multipie.read_multipie(str(multipie_root))
  assert protocol.gallery_paths == [str(multipie_root / p) for p in
                                    ("g/001.png", "g/002.png", "g/017.png")]
  np.testing.assert_array_equal(protocol.gallery_subjects, [1, 2, 17])
  assert protocol.probe_paths == [str(multipie_root / f"p/{c}.png") for c in "abcde"]
  np.testing.assert_array_equal(protocol.probe_subjects, [2, 1, 17, 2, 1])
  np.testing.assert_allclose(protocol.probe_yaw, [-90, 14.2, -44, 0, 60.5], rtol=1e-6)
  np.testing.assert_array_equal(protocol.probe_yaw_bin, [-90, 15, -45, 0, 60])
  np.testing.assert_array_equal(
      multipie.read_multipie(str(multipie_root), yaw_bin_width=30).probe_yaw_bin,
      [-90, 0, -30, 0, 60])


@pytest.mark.parametrize("name, text, error, message", [
    ("probe.txt", "p/a.png 3 0\n", ValueError,
     "probe.txt:1: subject 3 has no gallery image"),
    ("probe.txt", "p/a.png 1 0\np/b.png 1 left\n", ValueError,
     "probe.txt:2: yaw_deg 'left' is not a number"),
    ("probe.txt", "p/a.png 1\n", ValueError, "probe.txt:1: expected 3 fields, got 2"),
    ("gallery.txt", "g/001.png one\n", ValueError,
     "gallery.txt:1: subject_id 'one' is not an integer"),
    ("gallery.txt", "g/001.png 1\ng/002.png 2\ng/404.png 17\n", FileNotFoundError,
     "gallery.txt:3: image not found: .*g/404.png"),
])
def test_multipie_malformed_files_name_file_and_line(multipie_root, name, text, error,
                                                     message):
  fixture_files.write_text(str(multipie_root / name), text)
  with pytest.raises(error, match=message):
    multipie.read_multipie(str(multipie_root))


def test_multipie_missing_list(tmp_path):
  with pytest.raises(FileNotFoundError, match="gallery.txt"):
    multipie.read_multipie(str(tmp_path))


# Image loading.


def _ramp(width, height):
  """An RGB image whose red value is 2x + 3y + 5 at pixel centre (x, y)."""
  ys, xs = np.mgrid[0:height, 0:width] + 0.5
  red = 2 * xs + 3 * ys + 5
  return np.stack([red, np.full_like(red, 7), np.full_like(red, 200)], -1).astype(np.uint8)


def test_load_image_centre_square_and_resize(tmp_path):
  path = str(tmp_path / "wide.png")
  ramp = _ramp(width=30, height=20)
  fixture_files.write_image(path, ramp)
  np.testing.assert_array_equal(images.load_image(path, 20), ramp[:, 5:25])
  # Halving the centred square: output pixel centre (u, v) is file point (5 + 2u, 2v); a
  # linear ramp is reproduced there by any symmetric filter (interior pixels).
  small = images.load_image(path, 10).astype(float)
  vs, us = np.mgrid[0:10, 0:10] + 0.5
  expected = 2 * (5 + 2 * us) + 3 * (2 * vs) + 5
  np.testing.assert_allclose(small[1:-1, 1:-1, 0], expected[1:-1, 1:-1], atol=1.0)
  assert (small[..., 1] == 7).all() and (small[..., 2] == 200).all()


def test_load_images_converts_modes_and_moves_landmarks(tmp_path):
  gray = str(tmp_path / "gray.png")
  Image.fromarray(np.full((20, 30), 90, np.uint8)).save(gray)
  rgba = str(tmp_path / "rgba.png")
  Image.fromarray(np.full((8, 8, 4), 50, np.uint8)).save(rgba)
  points = np.float32([[[15.0, 10.0], [5.0, 0.0]], [[4.0, 4.0], [np.nan, np.nan]]])
  loaded, moved = images.load_images_and_landmarks([gray, rgba], points, 10)
  assert loaded.shape == (2, 10, 10, 3) and loaded.dtype == np.uint8
  assert (loaded[0] == 90).all() and (loaded[1] == 50).all()
  # gray: centred square x in [5, 25), scale 10 / 20; rgba: square already, scale 10 / 8.
  np.testing.assert_allclose(moved[0], [[5.0, 5.0], [0.0, 0.0]])
  np.testing.assert_allclose(moved[1, 0], [5.0, 5.0])
  assert np.isnan(moved[1, 1]).all()
  np.testing.assert_array_equal(images.load_images([gray, rgba], 10), loaded)


def test_bad_image_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.jpg"):
    images.load_images([str(tmp_path / "missing.jpg")], 8)
  garbage = tmp_path / "garbage.jpg"
  garbage.write_bytes(b"not an image at all")
  with pytest.raises(ValueError, match="cannot decode image file .*garbage.jpg"):
    images.load_image(str(garbage), 8)
  whole = tmp_path / "whole.png"
  fixture_files.write_image(str(whole), np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
  truncated = tmp_path / "truncated.png"
  truncated.write_bytes(whole.read_bytes()[:2000])
  with pytest.raises(ValueError, match="cannot decode image file .*truncated.png"):
    images.load_image(str(truncated), 8)
