"""Tests for the offline landmark annotator on a real photo (scikit-image's astronaut).

Needs the optional extra (`pip install -r requirements-annotate.txt`); skipped without it.
The reference points were read by eye off an 8-24x magnified crop of the photo with a
1-pixel grid, in the coordinate convention of `input_pipeline.landmarks`.
"""
import importlib.util
import io
import os
import struct
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from input_pipeline import annotate
from input_pipeline import landmarks as landmarks_lib
from input_pipeline.readers import images

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP_REASON = "the annotator's extra is not installed: pip install -r requirements-annotate.txt"

# Hand-checked on skimage/data/astronaut.png (512x512, the face about 90 px wide).
HAND = {
    "right_eye": (202.0, 100.5),  # subject's right eye = image left; centre of the opening
    "left_eye": (247.5, 102.5),
    "nose_tip": (222.5, 126.5),  # the highlight on the tip
    "right_mouth_corner": (203.5, 140.5),
    "left_mouth_corner": (243.5, 141.0),
}
TOLERANCE = 4.5  # pixels, 0.1 of the 45 px between the eyes


def _measured(points):
  """The hand-checked features from 51 points."""
  parts = landmarks_lib.IBUG51_PARTS
  return {
      "right_eye": points[list(parts["right_eye"])].mean(0),
      "left_eye": points[list(parts["left_eye"])].mean(0),
      "nose_tip": points[13],  # iBUG point 30
      "right_mouth_corner": points[31],  # iBUG point 48
      "left_mouth_corner": points[37],  # iBUG point 54
  }


@pytest.fixture(scope="module")
def astronaut():
  """The astronaut photo as a uint8 RGB array."""
  pytest.importorskip("dlib", reason=_SKIP_REASON)
  if importlib.util.find_spec("face_recognition_models") is None:
    pytest.skip(_SKIP_REASON)
  spec = importlib.util.find_spec("skimage")
  if spec is None:
    pytest.skip(_SKIP_REASON)
  path = os.path.join(spec.submodule_search_locations[0], "data", "astronaut.png")
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def _aligned_crop(photo, size=112):
  """The face cut and scaled so the hand-checked eyes sit on ArcFace's 112x112 template.

  Returns the crop, the map of photo pixels to crop pixels and its scale.
  """
  eyes = np.array([HAND["right_eye"], HAND["left_eye"]])
  template = np.array([[38.29, 51.70], [73.53, 51.50]]) * size / 112
  scale = np.diff(template[:, 0])[0] / np.diff(eyes[:, 0])[0]
  corner = eyes.mean(0) - template.mean(0) / scale
  side = size / scale
  crop = Image.fromarray(photo).resize(
      (size, size), Image.Resampling.BILINEAR,
      box=(corner[0], corner[1], corner[0] + side, corner[1] + side))
  return np.asarray(crop), lambda p: (np.asarray(p) - corner) * scale, scale


def _save(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def _grey(size):
  return np.full((size, size, 3), 128, np.uint8)


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return f.read().splitlines()


def test_landmarks_land_on_the_face(tmp_path, astronaut):
  photo = str(tmp_path / "faces" / "id0" / "astronaut.png")
  _save(photo, astronaut)
  counts = annotate.annotate(str(tmp_path / "faces"), out=str(tmp_path / "out"))
  assert counts == {"detected": 1, "template box": 0, "unannotated": 0}
  assert _lines(tmp_path / "out" / "landmarks.csv")[0].startswith("../faces/id0/")
  points = images.read_landmarks_csv(tmp_path / "out" / "landmarks.csv", [photo])[0]
  assert points.shape == (51, 2)
  for name, value in _measured(points).items():
    error = np.linalg.norm(value - np.array(HAND[name]))
    assert error < TOLERANCE, f"{name}: {value} is {error:.1f} px from {HAND[name]}"


def test_resume_keeps_lines_and_lists_faceless_images(tmp_path, astronaut):
  _save(str(tmp_path / "a" / "face.png"), astronaut)
  _save(str(tmp_path / "b" / "mirrored.jpg"), astronaut[:, ::-1], quality=95)
  _save(str(tmp_path / "b" / "grey.png"), _grey(200))
  table, skipped = tmp_path / "landmarks.csv", tmp_path / "unannotated.txt"
  # First run through the command line.
  subprocess.run([sys.executable, "-m", "input_pipeline.annotate", f"--input={tmp_path}"],
                 cwd=_REPO, check=True, capture_output=True)
  first = _lines(table)
  assert sorted(line.split(",")[0] for line in first) == ["a/face.png", "b/mirrored.jpg"]
  assert _lines(skipped) == ["b/grey.png\tno face detected"]
  # The mirrored face gets the mirrored points.
  paths = [str(tmp_path / "a" / "face.png"), str(tmp_path / "b" / "mirrored.jpg")]
  face, mirrored = images.read_landmarks_csv(table, paths)
  np.testing.assert_allclose(landmarks_lib.flip_horizontal(mirrored, 512), face, atol=3.0)
  # Drop one line and tear the other as a kill would; a rerun restores the table.
  with open(table, "w", encoding="utf-8") as f:
    f.write(first[0] + "\n" + first[1][:40])
  assert annotate.annotate(str(tmp_path)) == {
      "detected": 1, "template box": 0, "unannotated": 0}
  again = _lines(table)
  assert again[0] == first[0] and sorted(again) == sorted(first)
  assert _lines(skipped) == ["b/grey.png\tno face detected"]  # not retried


def _record(payload, flag=0, label=0.0, labels=()):
  """One RecordIO record: magic, length, IRHeader, labels, image, padding."""
  body = struct.pack("<IfQQ", flag, label, 0, 0) + np.float32(labels).tobytes() + payload
  return (struct.pack("<II", 0xCED7230A, len(body)) + body
          + b"\0" * (-len(body) % 4))


def _write_rec(prefix, encoded_images, missing=0):
  """An insightface-style .rec/.idx: header record 0, then one record per image.

  The header also promises `missing` images that the .idx does not list.
  """
  n = len(encoded_images)
  records = [_record(b"", flag=2, labels=(n + 1 + missing, n + 1 + missing))]
  records += [_record(data, label=float(i)) for i, data in enumerate(encoded_images)]
  offset = 0
  with open(prefix + ".rec", "wb") as rec, open(prefix + ".idx", "w") as idx:
    for index, record in enumerate(records):
      idx.write(f"{index}\t{offset}\n")
      rec.write(record)
      offset += len(record)


def _encode(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


@pytest.mark.parametrize("num_workers", [1, 2])
def test_rec(tmp_path, astronaut, num_workers):
  crop, to_crop, scale = _aligned_crop(astronaut)
  _write_rec(str(tmp_path / "train"),
             [_encode(crop), _encode(_grey(112)), b"not an image"], missing=1)
  counts = annotate.annotate(str(tmp_path / "train.rec"), num_workers=num_workers)
  assert counts == {"detected": 1, "template box": 0, "unannotated": 3}
  [line] = _lines(tmp_path / "landmarks.csv")
  fields = line.split(",")
  assert fields[0] == "1" and len(fields) == 103
  points = np.float32(fields[1:]).reshape(51, 2)
  for name, value in _measured(points).items():
    expected = to_crop(HAND[name])
    assert np.linalg.norm(value - expected) < TOLERANCE * scale, name
  skipped = [line.split("\t") for line in _lines(tmp_path / "unannotated.txt")]
  assert skipped[0] == ["2", "no face detected and the image is blank"]
  assert skipped[1][0] == "3" and skipped[1][1].startswith("cannot decode")
  assert skipped[2] == ["4", "record missing from the .idx"]


def test_template_box_fits_an_aligned_crop_like_detection(astronaut):
  crop, _, _ = _aligned_crop(astronaut)
  annotator = annotate.Annotator(aligned=True)
  detected = annotator.fit(crop, annotator.detect(crop))
  from_template = annotator.fit(crop, annotate.template_box(112, 112))
  assert np.abs(from_template - detected).mean() < 1.5


def test_missing_dlib_says_what_to_install(tmp_path):
  code = ("import sys; sys.modules['dlib'] = None; "
          "from input_pipeline import annotate; "
          f"annotate.main(['--input={tmp_path}'])")
  result = subprocess.run([sys.executable, "-c", code], cwd=_REPO, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 1
  assert "pip install -r requirements-annotate.txt" in result.stderr


@pytest.mark.parametrize("size", [(48, 48), (32, 30)])  # (32, 30): UCI's CMU faces
def test_small_images_are_upsampled_before_detection(tmp_path, astronaut, size):
  """dlib finds no face of 32x30 pixels; enlarged first (--upsample_below) it does."""
  crop, to_crop, _ = _aligned_crop(astronaut)
  small = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS))
  _save(str(tmp_path / "faces" / "id0" / "small.png"), small)
  counts = annotate.annotate(str(tmp_path / "faces"), log=io.StringIO())
  assert counts == {"detected": 1, "template box": 0, "unannotated": 0}
  [points] = images.read_landmarks_csv(tmp_path / "faces" / "landmarks.csv",
                                       [str(tmp_path / "faces" / "id0" / "small.png")])
  to_small = lambda p: to_crop(p) * np.array(size) / 112
  eyes = np.linalg.norm(to_small(HAND["left_eye"]) - to_small(HAND["right_eye"]))
  for name, value in _measured(points).items():  # TOLERANCE is 0.1 of the eye distance
    assert np.linalg.norm(value - to_small(HAND[name])) < 0.1 * eyes, name
  if size == (32, 30):
    points, how = annotate.Annotator(upsample_below=0).annotate(small)
    assert points is None and how == "no face detected"


class _NoFaceDetector:
  """dlib's detector's interface, finding nothing (for the tests that need no dlib)."""

  def __init__(self):
    self.shapes = []

  def run(self, image, unused_upsample, unused_threshold):
    self.shapes.append(image.shape)
    return [], [], []


def test_no_face_in_most_images_prints_the_cause_and_the_flag(tmp_path, monkeypatch):
  detector = _NoFaceDetector()
  monkeypatch.setattr(annotate, "_models", lambda unused_path: (None, detector, None))
  rng = np.random.default_rng(0)
  for i in range(3):
    _save(str(tmp_path / "faces" / "id0" / f"{i}.png"),
          rng.integers(0, 256, (30, 32, 3), dtype=np.uint8))
  log = io.StringIO()
  counts = annotate.annotate(str(tmp_path / "faces"), log=log)
  assert counts == {"detected": 0, "template box": 0, "unannotated": 3}
  assert detector.shapes[0] == (30 * 4, 32 * 4, 3)  # enlarged to a side >= 100 first
  printed = log.getvalue()
  assert "no face detected in 3 of 3 images" in printed
  assert "faces are likely too small" in printed and "--upsample_below=200" in printed
  assert "--aligned" in printed
  assert annotate.no_face_hint(1, 3, 100, False) is None  # most images had a face
