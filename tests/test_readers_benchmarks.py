"""Readers of evaluation sets as distributed: insightface .bin, LFW, IJB-A, MegaFace.

Every fixture is written here, in tmp_path; malformed inputs must raise errors that name the
file (and the line or index where there is one).
"""
import io
import json
import os
import pickle
import pickletools
import struct

import numpy as np
from PIL import Image
import pytest

from aprn_jax.evaluation import identification, templates, verification
from input_pipeline.readers import ijba
from input_pipeline.readers import images
from input_pipeline.readers import insightface_bin
from input_pipeline.readers import lfw
from input_pipeline.readers import megaface

import fixture_files


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


# insightface .bin packs: 13 pairs (not a multiple of 10, so the folds are uneven).

NUM_PAIRS = 13
ISSAME = [i % 3 != 0 for i in range(NUM_PAIRS)]


@pytest.fixture(name="pair_images")
def fixture_pair_images():
  """Smooth 8x8 images (colour ramps), which JPEG keeps close; each one different."""
  rng = np.random.default_rng(0)
  ramp = np.linspace(0, 1, 8)
  start = rng.uniform(0, 255, (2 * NUM_PAIRS, 1, 1, 3))
  slope = rng.uniform(-60, 60, (2 * NUM_PAIRS, 1, 1, 3))
  images = start + slope * (ramp[:, None, None] + ramp[None, :, None]) / 2
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def _python2_pickle(bins, issame):
  """The bytes cPickle (protocol 2) writes for (list of str, list of bool) in Python 2."""
  out = [b"\x80\x02]("]  # PROTO 2, EMPTY_LIST, MARK
  out += [b"T" + struct.pack("<i", len(b)) + b for b in bins]  # BINSTRING: a Python 2 str
  out.append(b"e](")  # APPENDS, EMPTY_LIST, MARK
  out += [b"\x88" if same else b"\x89" for same in issame]  # NEWTRUE / NEWFALSE
  out.append(b"e\x86.")  # APPENDS, TUPLE2, STOP
  return b"".join(out)


def test_bin_png_round_trip_pairs_and_folds(tmp_path, pair_images):
  path = str(tmp_path / "lfw.bin")
  insightface_bin.write_bin(path, pair_images, ISSAME, image_format="png")
  pack = insightface_bin.read_bin(path, 8)
  np.testing.assert_array_equal(pack.images, pair_images)
  pairs = pack.pairs
  np.testing.assert_array_equal(pairs.index_a, np.arange(0, 26, 2))
  np.testing.assert_array_equal(pairs.index_b, np.arange(1, 26, 2))
  np.testing.assert_array_equal(pairs.is_same, ISSAME)
  # KFold(10) without shuffle on 13 pairs: three folds of 2, then seven of 1.
  np.testing.assert_array_equal(pairs.fold, [0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9])
  np.testing.assert_array_equal(pairs.fold, verification.contiguous_folds(NUM_PAIRS))
  assert pairs.paths == [f"{path}#{i}" for i in range(26)] and pairs.landmarks is None
  assert pairs.index_a.dtype == np.int32 and pairs.is_same.dtype == bool


def test_bin_jpeg_and_resize_follow_the_image_loader(tmp_path, pair_images):
  path = str(tmp_path / "cfp_fp.bin")
  insightface_bin.write_bin(path, pair_images, ISSAME)  # JPEG, as insightface's packs
  pack = insightface_bin.read_bin(path, 8)
  assert np.abs(pack.images.astype(int) - pair_images).mean() < 2
  with open(path, "rb") as f:
    bins, issame = pickle.load(f)
  assert bins[0][:2] == b"\xff\xd8" and issame == ISSAME
  small = insightface_bin.read_bin(path, 5).images
  np.testing.assert_array_equal(small[3], images.decode_image(bins[3], 5))
  image_file = tmp_path / "3.jpg"
  image_file.write_bytes(bins[3])
  np.testing.assert_array_equal(small[3], images.load_image(str(image_file), 5))


def test_bin_python2_pickle_and_numpy_bins(tmp_path, pair_images):
  encoded = [_png(image) for image in pair_images]
  python2 = tmp_path / "python2.bin"
  python2.write_bytes(_python2_pickle(encoded, ISSAME))
  with pytest.raises(UnicodeDecodeError):  # why encoding='bytes' is needed
    pickle.loads(python2.read_bytes())
  pack = insightface_bin.read_bin(str(python2), 8)
  np.testing.assert_array_equal(pack.images, pair_images)
  np.testing.assert_array_equal(pack.pairs.is_same, ISSAME)

  as_arrays = tmp_path / "arrays.bin"
  with open(as_arrays, "wb") as f:
    pickle.dump(([np.frombuffer(b, np.uint8) for b in encoded], np.array(ISSAME)), f,
                protocol=2)
  pack = insightface_bin.read_bin(str(as_arrays), 8)
  np.testing.assert_array_equal(pack.images, pair_images)
  np.testing.assert_array_equal(pack.pairs.is_same, ISSAME)


def _cv2_encoded(image):
  """What cv2.imencode(".jpg", image)[1] holds: the JPEG's bytes as a uint8 (n, 1) array."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=95)
  return np.frombuffer(buffer.getvalue(), np.uint8).reshape(-1, 1).copy()


def _as_numpy1(data):
  """A protocol 5 pickle as numpy 1 writes it: `numpy.core` where numpy 2 has `numpy._core`.

  The opcodes are rewritten and the pickle re-framed, as no numpy 1 is installed here.
  """
  data = data.replace(b"\x8c\x13numpy._core.numeric", b"\x8c\x12numpy.core.numeric")
  data = data.replace(b"\x8c\x16numpy._core.multiarray", b"\x8c\x15numpy.core.multiarray")
  return pickletools.optimize(data)


def _build_eval_pack(bins, issame, protocol=pickle.HIGHEST_PROTOCOL):
  """The bytes insightface's build_eval_pack.py writes: pickle.dump((bins, issame_list), f,
  protocol=pickle.HIGHEST_PROTOCOL), bins the cv2.imencode arrays, issame_list bools."""
  return pickle.dumps((bins, [bool(same) for same in issame]), protocol=protocol)


@pytest.mark.parametrize("layout", [
    "build_eval_pack", "build_eval_pack_numpy1", "arrays_protocol2", "arrays_protocol3",
    "arrays_protocol4", "flat_arrays_protocol5", "bytes_protocol2", "faces_emore"])
def test_bin_reads_every_insightface_layout(tmp_path, pair_images, layout):
  """Packs as insightface's tools write them read to the same images and pairs."""
  arrays = [_cv2_encoded(image) for image in pair_images]
  if layout == "build_eval_pack":
    data = _build_eval_pack(arrays, ISSAME)
    assert pickle.HIGHEST_PROTOCOL == 5 and b"numpy._core.numeric" in data
  elif layout == "build_eval_pack_numpy1":
    data = _as_numpy1(_build_eval_pack(arrays, ISSAME))
    assert b"numpy.core.numeric" in data and b"numpy._core" not in data
  elif layout.startswith("arrays_protocol"):
    data = _build_eval_pack(arrays, ISSAME, protocol=int(layout[-1]))
  elif layout == "flat_arrays_protocol5":
    data = _build_eval_pack([a.ravel() for a in arrays], np.array(ISSAME), protocol=5)
  elif layout == "bytes_protocol2":
    data = _build_eval_pack([a.tobytes() for a in arrays], ISSAME, protocol=2)
  else:  # the lfw.bin, cfp_fp.bin, agedb_30.bin of faces_emore: Python 2 str images
    data = _python2_pickle([a.tobytes() for a in arrays], ISSAME)
  path = tmp_path / f"{layout}.bin"
  path.write_bytes(data)
  pack = insightface_bin.read_bin(str(path), 8)
  expected = np.stack([images.decode_image(a.tobytes(), 8) for a in arrays])
  np.testing.assert_array_equal(pack.images, expected)
  assert np.abs(pack.images.astype(int) - pair_images).mean() < 2
  np.testing.assert_array_equal(pack.pairs.is_same, ISSAME)
  np.testing.assert_array_equal(pack.pairs.fold, verification.contiguous_folds(NUM_PAIRS))
  assert insightface_bin.check_bin(str(path)) == NUM_PAIRS


class _Calls:
  """Pickles as a call of `fn(*args)`: what a malicious pack would hold."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("fn, name", [
    (os.system, "posix.system"), (exec, r"(builtins|__builtin__)\.exec"),
    (np.load, "numpy.load")])
def test_bin_refuses_other_globals_without_running_them(tmp_path, pair_images, protocol, fn,
                                                        name):
  marker = tmp_path / "ran"
  argument = {os.system: f"touch {marker}", exec: f"open({str(marker)!r}, 'w')",
              np.load: str(marker)}[fn]
  bins = [_cv2_encoded(image) for image in pair_images[:2]] + [_Calls(fn, argument)]
  path = tmp_path / "evil.bin"
  path.write_bytes(pickle.dumps((bins, [True]), protocol=protocol))
  for read in (lambda: insightface_bin.read_bin(str(path), 8),
               lambda: insightface_bin.check_bin(str(path))):
    with pytest.raises(ValueError, match=f"evil.bin: not a verification pack pickle: .*"
                       f"refers to {name}"):
      read()
  assert not marker.exists()


def test_bin_of_fewer_pairs_than_folds_has_one_fold(tmp_path, pair_images):
  path = tmp_path / "small.bin"
  path.write_bytes(_build_eval_pack([_cv2_encoded(im) for im in pair_images[:8]],
                                    [True, False, True, True]))
  pack = insightface_bin.read_bin(str(path), 8)
  np.testing.assert_array_equal(pack.pairs.fold, [0, 0, 0, 0])


@pytest.mark.parametrize("contents, message", [
    (b"not a pickle at all", "not a verification pack pickle"),
    (pickle.dumps(os.getcwd), "not a verification pack pickle: .*refers to posix.getcwd"),
    (pickle.dumps({"bins": [], "issame": []}), "expected a pickled pair"),
    (pickle.dumps(([b"x"] * 3, [True])), "3 images, an odd number"),
    (pickle.dumps(([b"x"] * 4, [True])), "4 images make 2 pairs, but issame_list has 1"),
    (pickle.dumps(([b"x", 7], [True])), "image 1 is a int"),
    (pickle.dumps(([b"x", b"y"], ["yes"])), "issame_list must be a list of N booleans"),
])
def test_bin_malformed_packs_name_the_file(tmp_path, contents, message):
  path = tmp_path / "bad.bin"
  path.write_bytes(contents)
  with pytest.raises(ValueError, match=f"bad.bin: {message}"):
    insightface_bin.read_bin(str(path), 8)


def test_bin_truncated_image_names_file_and_index(tmp_path, pair_images):
  encoded = [_png(image) for image in pair_images]
  encoded[5] = encoded[5][:len(encoded[5]) // 2]
  path = tmp_path / "truncated.bin"
  with open(path, "wb") as f:
    pickle.dump((encoded, ISSAME), f)
  with pytest.raises(ValueError, match=r"cannot decode image 5 of .*truncated.bin"):
    insightface_bin.read_bin(str(path), 8)
  with pytest.raises(FileNotFoundError, match="missing.bin"):
    insightface_bin.read_bin(str(tmp_path / "missing.bin"), 8)


# LFW: 2 sets of 2 matched and 2 mismatched pairs.

LFW_IMAGES = {"Ann_Lee": 3, "Bob": 2, "Cy_De_Vo": 1}
LFW_PAIRS = """2\t2
Ann_Lee 1 2
Bob 1 2
Ann_Lee 3 Bob 1
Cy_De_Vo 1 Ann_Lee 2

Ann_Lee 2 3
Ann_Lee 1 3
Bob 2 Cy_De_Vo 1
Ann_Lee 1 Bob 2
"""


@pytest.fixture(name="lfw_root")
def fixture_lfw_root(tmp_path):
  rng = np.random.default_rng(1)
  for name, count in LFW_IMAGES.items():
    for i in range(1, count + 1):
      fixture_files.write_image(str(tmp_path / "lfw" / name / f"{name}_{i:04d}.jpg"),
                   rng.integers(0, 256, (6, 6, 3), np.uint8))
  fixture_files.write_text(str(tmp_path / "pairs.txt"), LFW_PAIRS)
  return tmp_path


def test_lfw_pairs_labels_and_sets(lfw_root):
  pairs = lfw.read_lfw(str(lfw_root / "pairs.txt"), str(lfw_root / "lfw"))
  path = lambda name, i: str(lfw_root / "lfw" / name / f"{name}_{i:04d}.jpg")
  got = [(pairs.paths[a], pairs.paths[b], bool(s), int(f))
         for a, b, s, f in zip(pairs.index_a, pairs.index_b, pairs.is_same, pairs.fold)]
  assert got == [
      (path("Ann_Lee", 1), path("Ann_Lee", 2), True, 0),
      (path("Bob", 1), path("Bob", 2), True, 0),
      (path("Ann_Lee", 3), path("Bob", 1), False, 0),
      (path("Cy_De_Vo", 1), path("Ann_Lee", 2), False, 0),
      (path("Ann_Lee", 2), path("Ann_Lee", 3), True, 1),
      (path("Ann_Lee", 1), path("Ann_Lee", 3), True, 1),
      (path("Bob", 2), path("Cy_De_Vo", 1), False, 1),
      (path("Ann_Lee", 1), path("Bob", 2), False, 1),
  ]
  assert len(pairs.paths) == len(set(pairs.paths)) == 6
  assert pairs.landmarks is None and pairs.fold.dtype == np.int32


def test_lfw_landmarks_csv(lfw_root):
  points = np.arange(102, dtype=np.float32).reshape(51, 2)
  fixture_files.write_text(str(lfw_root / "lfw" / "landmarks.csv"),
         "Bob/Bob_0002.jpg," + ",".join(map(str, points.ravel())) + "\n")
  pairs = lfw.read_lfw(str(lfw_root / "pairs.txt"), str(lfw_root / "lfw"))
  bob = pairs.paths.index(str(lfw_root / "lfw" / "Bob" / "Bob_0002.jpg"))
  np.testing.assert_array_equal(pairs.landmarks[bob], points)
  assert np.isnan(np.delete(pairs.landmarks, bob, axis=0)).all()


@pytest.mark.parametrize("old, new, error, message", [
    ("2\t2\n", "10\n", ValueError, r"pairs.txt:1: expected a header `<sets> <n>`"),
    ("2\t2\n", "2 two\n", ValueError, "pairs.txt:1: pairs per set 'two' is not an integer"),
    ("Bob 1 2\n", "Bob 1 Bob\n", ValueError, "pairs.txt:3: image number 'Bob'"),
    ("Bob 1 2\n", "Bob 1 Bob 2\n", ValueError, "pairs.txt:3: expected a matched pair"),
    ("Ann_Lee 3 Bob 1\n", "Ann_Lee 3 1\n", ValueError,
     "pairs.txt:4: expected a mismatched pair"),
    ("Ann_Lee 1 Bob 2\n", "", ValueError, r"pairs.txt:9: the header promises 2 sets of 2 matched and 2 "
     r"mismatched pairs \(8 lines\), got 7"),
    ("Ann_Lee 2 3\n", "Ann_Lee 2 4\n", FileNotFoundError,
     "pairs.txt:7: image not found: .*Ann_Lee_0004.jpg"),
])
def test_lfw_malformed_pairs_name_file_and_line(lfw_root, old, new, error, message):
  fixture_files.write_text(str(lfw_root / "pairs.txt"), LFW_PAIRS.replace(old, new))
  with pytest.raises(error, match=message):
    lfw.read_lfw(str(lfw_root / "pairs.txt"), str(lfw_root / "lfw"))


# IJB-A: one split, columns in a different order and case, extra columns.

IJBA_HEADER = ("Subject_ID,TEMPLATE_ID,Sighting_ID,FILE,MEDIA_ID,FRAME,FACE_X,FACE_Y,"
               "FACE_WIDTH,FACE_HEIGHT")
IJBA_ROWS = [  # subject, template, file, media
    (5, 11, "img/1.jpg", 100), (5, 11, "frame/200_1.png", 200),
    (5, 11, "frame/200_2.png", 200),
    (5, 12, "img/2.jpg", 101),
    (9, 31, "img/3.jpg", 102), (9, 31, "img/1.jpg", 100),
    (9, 32, "frame/201_1.png", 201),
]
IJBA_COMPARISONS = [(11, 12), (11, 31), (31, 32), (12, 32)]


def _ijba_metadata(rows):
  lines = [IJBA_HEADER]
  for k, (subject, template, path, media) in enumerate(rows):
    lines.append(f"{subject},{template},{k},{path},{media},,{k},1.5,20,24")
  return "\n".join(lines) + "\n"


@pytest.fixture(name="ijba_root")
def fixture_ijba_root(tmp_path):
  for _, _, path, _ in IJBA_ROWS:
    if not (tmp_path / "images" / path).exists():
      fixture_files.write_image(str(tmp_path / "images" / path), np.zeros((4, 4, 3), np.uint8))
  split = tmp_path / "IJB-A_11" / "split3"
  fixture_files.write_text(str(split / "verify_metadata_3.csv"), _ijba_metadata(IJBA_ROWS))
  fixture_files.write_text(str(split / "verify_comparisons_3.csv"),
         "".join(f"{a},{b}\n" for a, b in IJBA_COMPARISONS))
  return tmp_path


def test_ijba_split_feeds_template_verification(ijba_root):
  (split,) = ijba.read_ijba(str(ijba_root / "IJB-A_11"), str(ijba_root / "images"), [3])
  assert split.paths == [str(ijba_root / "images" / row[2]) for row in IJBA_ROWS]
  np.testing.assert_array_equal(split.template_ids, [r[1] for r in IJBA_ROWS])
  np.testing.assert_array_equal(split.media_ids, [r[3] for r in IJBA_ROWS])
  np.testing.assert_array_equal(split.subject_ids, [r[0] for r in IJBA_ROWS])
  np.testing.assert_array_equal(split.templates, [11, 12, 31, 32])
  np.testing.assert_array_equal(split.template_subjects, [5, 5, 9, 9])
  np.testing.assert_array_equal(split.tid1, [11, 11, 31, 12])
  np.testing.assert_array_equal(split.tid2, [12, 31, 32, 32])
  np.testing.assert_array_equal(split.genuine, [True, False, True, False])
  np.testing.assert_allclose(split.boxes[2], [2, 1.5, 20, 24])
  # The fields plug into the template protocol as they are.
  embeddings = np.eye(10)[split.subject_ids] + 0.01 * np.arange(len(IJBA_ROWS))[:, None]
  result = templates.verify_split(embeddings, split.template_ids, split.media_ids,
                                  split.tid1, split.tid2, split.genuine, fars=(0.5,))
  assert result == {0.5: 1.0}


@pytest.mark.parametrize("name, text, error, message", [
    ("verify_metadata_3.csv", IJBA_HEADER.replace("MEDIA_ID", "MEDIA") + "\n", ValueError,
     "verify_metadata_3.csv:1: missing column.*MEDIA_ID"),
    ("verify_metadata_3.csv", _ijba_metadata(IJBA_ROWS).replace("img/3.jpg", "img/9.jpg"),
     FileNotFoundError, "verify_metadata_3.csv:6: image not found: .*img/9.jpg"),
    ("verify_metadata_3.csv", _ijba_metadata(IJBA_ROWS) + "9,32,7\n", ValueError,
     "verify_metadata_3.csv:9: expected 10 fields like the header, got 3"),
    ("verify_metadata_3.csv", _ijba_metadata(IJBA_ROWS).replace("9,31,5,", "5,31,5,"),
     ValueError, "verify_metadata_3.csv:7: template 31 has subject 5 here but 9"),
    ("verify_comparisons_3.csv", "11,12\n11,77\n", ValueError,
     "verify_comparisons_3.csv:2: template 77 is not in .*verify_metadata_3.csv"),
    ("verify_comparisons_3.csv", "11 12\n", ValueError,
     "verify_comparisons_3.csv:1: expected 2 fields, got 1"),
])
def test_ijba_malformed_files_name_file_and_line(ijba_root, name, text, error, message):
  fixture_files.write_text(str(ijba_root / "IJB-A_11" / "split3" / name), text)
  with pytest.raises(error, match=message):
    ijba.read_split(str(ijba_root / "IJB-A_11"), 3, str(ijba_root / "images"))


# MegaFace: FaceScrub probes, distractors, feature files.


@pytest.fixture(name="megaface_root")
def fixture_megaface_root(tmp_path):
  probes = {"id": ["Zoe_B", "Al_A", "Zoe_B", "Al_A", "Al_A"],
            "path": ["Zoe_B/Zoe_B_1.png", "Al_A/Al_A_3.png", "Zoe_B/Zoe_B_9.png",
                     "Al_A/Al_A_4.png", "Al_A/Al_A_5.png"]}
  distractors = {"path": ["386/a@N00/1_1.jpg", "12/b@N01/2_1.jpg", "12/b@N01/3_2.jpg"]}
  for path in probes["path"]:
    fixture_files.write_image(str(tmp_path / "facescrub" / path), np.zeros((4, 4, 3), np.uint8))
  for path in distractors["path"]:
    fixture_files.write_image(str(tmp_path / "megaface" / path), np.zeros((4, 4, 3), np.uint8))
  fixture_files.write_text(str(tmp_path / "facescrub_features_list.json"), json.dumps(probes))
  fixture_files.write_text(str(tmp_path / "megaface_features_list.json_3_1"), json.dumps(distractors))
  return tmp_path


def test_megaface_lists_and_features_feed_rank1(megaface_root, tmp_path):
  probes = megaface.read_probe_list(str(megaface_root / "facescrub_features_list.json"),
                                    str(megaface_root / "facescrub"))
  assert probes.names == ["Al_A", "Zoe_B"]
  np.testing.assert_array_equal(probes.labels, [1, 0, 1, 0, 0])
  assert probes.paths[1] == str(megaface_root / "facescrub" / "Al_A" / "Al_A_3.png")
  distractors = megaface.read_distractor_list(
      str(megaface_root / "megaface_features_list.json_3_1"), str(megaface_root / "megaface"))
  assert distractors == [str(megaface_root / "megaface" / p)
                         for p in ("386/a@N00/1_1.jpg", "12/b@N01/2_1.jpg", "12/b@N01/3_2.jpg")]

  # Feature files, one per image, as the devkit writes them: (dim, 1) float32 matrices.
  rng = np.random.default_rng(2)
  unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
  centres = unit(rng.standard_normal((2, 16)))
  probe_features = unit(centres[probes.labels] + 0.05 * rng.standard_normal((5, 16)))
  distractor_features = unit(rng.standard_normal((3, 16)))
  files = []
  for i, feature in enumerate(np.concatenate([probe_features, distractor_features])):
    files.append(str(tmp_path / "features" / f"{i}_aprn.bin"))
    megaface.write_feature_file(files[-1], feature)
  with open(files[0], "rb") as f:
    assert struct.unpack("<4i", f.read(16)) == (16, 1, 4, 5)
  features = megaface.read_features(files)
  np.testing.assert_array_equal(features, np.concatenate([probe_features,
                                                          distractor_features]))
  result = identification.identify_with_distractors(features[:5], probes.labels,
                                                    features[5:])
  assert result.num_pairs == 3 * 2 + 2 * 1 and result.rank1 == 1.0

  matrix = rng.standard_normal((3, 7)).astype(np.float32)
  megaface.write_feature_file(str(tmp_path / "matrix.bin"), matrix)
  np.testing.assert_array_equal(megaface.read_feature_file(str(tmp_path / "matrix.bin")),
                                matrix)


def test_megaface_malformed_feature_files_name_the_file(tmp_path):
  path = tmp_path / "f.bin"
  megaface.write_feature_file(str(path), np.ones(8, np.float32))
  whole = path.read_bytes()
  for contents, message in [
      (whole[:-4], r"f.bin: header says 8 x 1 float32 \(48 bytes with the header\), file "
                   r"has 44 bytes"),
      (whole + b"\0" * 4, "file has 52 bytes"),
      (whole[:10], "f.bin: 10 bytes, shorter than the 16-byte header"),
      (struct.pack("<4i", 8, 1, 4, 6) + whole[16:], "f.bin: matrix type 6"),
      (struct.pack("<4i", 8, 1, 8, 5) + whole[16:], "f.bin: header rows=8, cols=1, row "
                                                    "bytes=8"),
  ]:
    path.write_bytes(contents)
    with pytest.raises(ValueError, match=message):
      megaface.read_feature_file(str(path))


@pytest.mark.parametrize("contents, error, message", [
    ('{"id": ["a", "b"], "path": ["Zoe_B/Zoe_B_1.png"]}', ValueError, "lists .* differ"),
    ('{"path": ["Zoe_B/Zoe_B_1.png"]}', ValueError, "expected a list under 'id'"),
    ('{"id": ["a"], "path": [3]}', ValueError, r"path\[0\] is 3"),
    ('["Zoe_B/Zoe_B_1.png"]', ValueError, "expected a JSON object"),
    ('{"id": ["a"', ValueError, "not a JSON file"),
    ('{"id": ["a", "b"], "path": ["Zoe_B/Zoe_B_1.png", "Zoe_B/Zoe_B_2.png"]}',
     FileNotFoundError, r"path\[1\]: image not found: .*Zoe_B_2.png"),
])
def test_megaface_malformed_lists_name_the_file(megaface_root, contents, error, message):
  path = megaface_root / "facescrub_features_list.json"
  fixture_files.write_text(str(path), contents)
  with pytest.raises(error, match=f"facescrub_features_list.json: {message}"):
    megaface.read_probe_list(str(path), str(megaface_root / "facescrub"))


def _encoded(array, mode, **save):
  buffer = io.BytesIO()
  Image.fromarray(array, mode).save(buffer, "JPEG", **save)
  return buffer.getvalue()


def _pillow_decode(data, size):
  """Pillow's own decode, convert and centred-square resize: the reference of decode_image."""
  with Image.open(io.BytesIO(data)) as image:
    image = image.convert("RGB")
  side = min(image.size)
  left, top = (image.size[0] - side) / 2, (image.size[1] - side) / 2
  return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR,
                                 box=(left, top, left + side, top + side)))


@pytest.mark.parametrize("mode, shape, save", [
    ("RGB", (40, 40, 3), {}),                                  # YCbCr 4:2:0, simplejpeg
    ("RGB", (40, 40, 3), {"subsampling": 0, "quality": 95}),   # 4:4:4, simplejpeg
    ("RGB", (40, 40, 3), {"progressive": True}),               # progressive, simplejpeg
    ("L", (40, 40), {}),                                        # grayscale, simplejpeg
    ("CMYK", (40, 40, 4), {}),                                  # Pillow
    ("RGB", (50, 64, 3), {}),                                   # needs a resize: Pillow
])
def test_decode_image_equals_pillow_for_every_jpeg_kind(mode, shape, save):
  """JPEGs written by Pillow: decode_image (simplejpeg when no resize is needed, else Pillow)
  gives Pillow's pixels exactly."""
  array = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
  data = _encoded(array, mode, **save)
  decoded = images.decode_image(data, 40)
  assert decoded.shape == (40, 40, 3) and decoded.dtype == np.uint8
  np.testing.assert_array_equal(decoded, _pillow_decode(data, 40))


def test_decode_image_truncated_jpeg_names_the_image():
  data = _encoded(np.random.default_rng(1).integers(0, 256, (40, 40, 3), np.uint8), "RGB")
  with pytest.raises(ValueError, match="cannot decode image 3 of x.bin"):
    images.decode_image(data[:len(data) // 2], 40, "image 3 of x.bin")
