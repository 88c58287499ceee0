"""IJB-B/C 1:1: the reader's refusals, five-point alignment against independent numpy
computations, the evaluators' TAR at FAR against a hand computation, and the synthetic IJB-C
copy (aligned back to the stored faces, added to an older export, evaluated from the data set
a run loads)."""
import copy
import json
import os
import types

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy import ndimage

from aprn_jax import data as data_lib
from aprn_jax import evaluate, models, train_state
from configs import default, tiny
import fixture_files
from fixture_files import write_image, write_text
from input_pipeline.readers import face_align
from input_pipeline.readers import ijbc
from input_pipeline.synthetic import builder as builder_lib
from input_pipeline.synthetic import export

FARS = ("1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1")


# --- the reader ---

def _points_line(name, points, faceness=0.9):
  return " ".join([name] + [f"{v:.4f}" for v in np.ravel(points)] + [f"{faceness}"])


def _write_protocol(root, target, pixels, media, pairs):
  """An IJB-B/C folder: pixels {name: uint8 (S, S, 3) image}, media [(template, media)] per
  image, pairs [(t1, t2, label)]; every image's five points are the ArcFace template at S,
  so alignment at S leaves the images as they are."""
  images = list(pixels)
  for name, image in pixels.items():
    write_image(os.path.join(root, "loose_crop", name), image)
  points = face_align.template(len(pixels[images[0]]))
  write_text(os.path.join(root, "meta", f"{target}_face_tid_mid.txt"),
             "".join(f"{n} {t} {m}\n" for n, (t, m) in zip(images, media)))
  write_text(os.path.join(root, "meta", f"{target}_name_5pts_score.txt"),
             "".join(_points_line(n, points) + "\n" for n in images))
  write_text(os.path.join(root, "meta", f"{target}_template_pair_label.txt"),
             "".join(f"{a} {b} {label}\n" for a, b, label in pairs))


@pytest.fixture
def small(tmp_path):
  """A valid 3-image, 2-template IJB-C folder."""
  rng = np.random.default_rng(0)
  pixels = {f"{k}.png": rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for k in (1, 2, 3)}
  _write_protocol(tmp_path, "ijbc", pixels, [(1, 10), (1, 11), (2, 20)],
                  [(1, 2, 0), (1, 1, 1)])
  return tmp_path


def _meta(root, kind):
  return os.path.join(root, "meta", f"ijbc_{kind}.txt")


def _replace_line(path, line_number, text):
  with open(path) as f:
    lines = f.read().splitlines()
  lines[line_number - 1] = text
  write_text(path, "\n".join(lines) + "\n")


def test_reads_a_valid_folder(small):
  protocol = ijbc.read_ijbc(str(small), "ijbc")
  assert protocol.paths == [str(small / "loose_crop" / f"{k}.png") for k in (1, 2, 3)]
  np.testing.assert_array_equal(protocol.template_ids, [1, 1, 2])
  np.testing.assert_array_equal(protocol.media_ids, [10, 11, 20])
  assert protocol.landmarks.shape == (3, 5, 2) and protocol.landmarks.dtype == np.float32
  np.testing.assert_allclose(protocol.landmarks[2], face_align.template(12), atol=1e-4)
  np.testing.assert_allclose(protocol.faceness, 0.9)
  np.testing.assert_array_equal(protocol.tid1, [1, 1])
  np.testing.assert_array_equal(protocol.tid2, [2, 1])
  np.testing.assert_array_equal(protocol.genuine, [False, True])


POINTS = " ".join(["1"] * 10)


@pytest.mark.parametrize("kind, line, text, error, message", [
    ("face_tid_mid", 2, "2.png 1", ValueError,
     r"face_tid_mid\.txt:2: expected 3 fields, got 2"),
    ("face_tid_mid", 3, "3.png two 20", ValueError,
     r"face_tid_mid\.txt:3: template id 'two' is not an integer"),
    ("face_tid_mid", 1, "1.png 1 1.5", ValueError,
     r"face_tid_mid\.txt:1: media id '1.5' is not an integer"),
    ("face_tid_mid", 3, "4.png 2 20", FileNotFoundError,
     r"face_tid_mid\.txt:3: image not found: .*loose_crop[/\\]4\.png"),
    ("name_5pts_score", 2, f"2.png {POINTS}", ValueError,
     r"5pts_score\.txt:2: expected 12 fields, got 11"),
    ("name_5pts_score", 3, f"3.png {POINTS}x 0.5", ValueError,
     r"5pts_score\.txt:3: coordinate '1x' is not a number"),
    ("name_5pts_score", 1, f"1.png {POINTS} high", ValueError,
     r"5pts_score\.txt:1: faceness score 'high' is not a number"),
    ("name_5pts_score", 2, f"3.png {POINTS} 1", ValueError,
     r"5pts_score\.txt:2: image '3\.png', but .*face_tid_mid\.txt:2 names '2\.png'"),
    ("template_pair_label", 2, "1 2", ValueError,
     r"pair_label\.txt:2: expected 3 fields \(template, template, label\), got 2"),
    ("template_pair_label", 1, "a 2 0", ValueError,
     r"pair_label\.txt:1: first template 'a' is not an integer"),
    ("template_pair_label", 2, "1 1 1.0", ValueError,
     r"pair_label\.txt:2: label '1\.0' is not an integer"),
    ("template_pair_label", 2, "1 1 2", ValueError,
     r"pair_label\.txt:2: label '2' is not 0 or 1"),
    ("template_pair_label", 2, "1 7 0", ValueError,
     r"pair_label\.txt:2: template 7 has no images in .*face_tid_mid\.txt"),
])
def test_malformed_lines_are_refused_by_file_and_line(small, kind, line, text, error, message):
  _replace_line(_meta(small, kind), line, text)
  with pytest.raises(error, match=message):
    ijbc.read_ijbc(str(small), "ijbc")


def test_line_numbers_count_blank_lines(small):
  write_text(_meta(small, "template_pair_label"), "1 2 0\n\n1 1 3\n")
  with pytest.raises(ValueError, match=r"pair_label\.txt:3: label '3' is not 0 or 1"):
    ijbc.read_ijbc(str(small), "ijbc")


@pytest.mark.parametrize("keep, message", [
    (2, r"face_tid_mid\.txt:3: .*lists 3 images, .*5pts_score\.txt 2: this line has no "
        r"counterpart"),
    (4, r"5pts_score\.txt:4: .*lists 3 images, .*5pts_score\.txt 4: this line has no "
        r"counterpart"),
])
def test_the_five_point_list_must_match_the_image_list(small, keep, message):
  path = _meta(small, "name_5pts_score")
  with open(path) as f:
    lines = f.read().splitlines()
  lines = (lines + [f"4.png {POINTS} 1"])[:keep]
  write_text(path, "\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=message):
    ijbc.read_ijbc(str(small), "ijbc")


def test_missing_files_and_empty_lists_are_named(small):
  with pytest.raises(ValueError, match=r"IJB target 'ijba'"):
    ijbc.read_ijbc(str(small), "ijba")
  with pytest.raises(FileNotFoundError,
                     match=r"protocol file not found: .*meta[/\\]ijbb_face_tid_mid\.txt"):
    ijbc.read_ijbc(str(small), "ijbb")
  write_text(_meta(small, "template_pair_label"), "\n")
  with pytest.raises(ValueError, match=r"pair_label\.txt: no comparisons"):
    ijbc.read_ijbc(str(small), "ijbc")
  os.remove(_meta(small, "name_5pts_score"))
  with pytest.raises(FileNotFoundError,
                     match=r"protocol file not found: .*meta[/\\]ijbc_name_5pts_score\.txt"):
    ijbc.read_ijbc(str(small), "ijbc")


# --- alignment ---

def _similarity(scale, degrees, shift):
  angle = np.deg2rad(degrees)
  return np.hstack([scale * np.array([[np.cos(angle), -np.sin(angle)],
                                      [np.sin(angle), np.cos(angle)]]),
                    np.reshape(shift, (2, 1))])


def test_a_known_similarity_is_recovered_from_the_template_points():
  matrix = _similarity(1.37, -23.0, (7.5, -4.25))
  template = face_align.template(112)
  np.testing.assert_allclose(template, face_align.ARCFACE_TEMPLATE)
  moved = template @ matrix[:, :2].T + matrix[:, 2]
  np.testing.assert_allclose(face_align.similarity_transform(template, moved), matrix,
                             atol=1e-4)
  inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
  np.testing.assert_allclose(face_align.similarity_transform(moved, template), inverse,
                             atol=1e-4)


@pytest.mark.parametrize("mirror", [False, True])
def test_noisy_points_give_the_least_squares_similarity(mirror):
  """A 2-D similarity x -> [[a, -b], [b, a]] x + t is linear in (a, b, tx, ty): the linear
  least-squares solution is the best one, and it holds no reflection, even for mirrored
  target points."""
  rng = np.random.default_rng(1)
  source = face_align.template(112) + rng.normal(0, 2, (5, 2))
  target = rng.uniform(0, 100, (5, 2))
  if mirror:
    target = face_align.template(112) * [-1, 1] + rng.normal(0, 1, (5, 2))
  x, y = source[:, 0], source[:, 1]
  one, zero = np.ones(5), np.zeros(5)
  design = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
  (a, b, tx, ty), *_ = np.linalg.lstsq(design, np.concatenate(target.T), rcond=None)
  matrix = face_align.similarity_transform(source, target)
  np.testing.assert_allclose(matrix, [[a, -b, tx], [b, a, ty]], atol=1e-8)
  assert np.linalg.det(matrix[:, :2]) > 0


def _bilinear_reference(image, matrix, size):
  """float (size, size, 3) and a mask: the source sampled at inverse(matrix) of each output
  pixel centre, bilinear between its four neighbours; the mask is True where all four are in
  the image."""
  inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
  sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
  sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
  x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
  fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
  height, width = image.shape[:2]
  inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < width) & (y0 + 1 < height)
  x0, y0 = np.clip(x0, 0, width - 2), np.clip(y0, 0, height - 2)
  img = image.astype(np.float64)
  value = ((1 - fx) * (1 - fy) * img[y0, x0] + fx * (1 - fy) * img[y0, x0 + 1]
           + (1 - fx) * fy * img[y0 + 1, x0] + fx * fy * img[y0 + 1, x0 + 1])
  outside = (sx < -1) | (sy < -1) | (sx > width) | (sy > height)
  return value, inside, outside


def test_warp_matches_a_numpy_bilinear_reference():
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, (30, 26, 3), dtype=np.uint8)
  matrix = _similarity(0.9, 12.0, (9.3, 2.7))
  warped = face_align.warp(image, matrix, 40)
  reference, inside, outside = _bilinear_reference(image, matrix, 40)
  assert inside.sum() > 400 and outside.sum() > 100
  assert np.abs(warped[inside] - reference[inside]).max() <= 0.51
  assert not warped[outside].any()


def test_align_moves_the_points_onto_the_template():
  """Image pixels at the five points land on the template's pixels."""
  rng = np.random.default_rng(3)
  image = np.zeros((80, 90, 3), np.uint8)
  matrix = _similarity(1.5, 10.0, (20.0, 5.0))  # template at size 40 -> image
  points = face_align.template(40) @ matrix[:, :2].T + matrix[:, 2]
  colours = rng.integers(50, 256, (5, 3))
  for (x, y), colour in zip(np.rint(points).astype(int), colours):
    # 7x7 patches: a template pixel centre lands within 1.6 pixels of the patch's centre,
    # so all four pixels it is interpolated from are in the patch.
    image[y - 3:y + 4, x - 3:x + 4] = colour
  aligned = face_align.align(image, points, 40)
  for (x, y), colour in zip(np.rint(face_align.template(40)).astype(int), colours):
    np.testing.assert_array_equal(aligned[y, x], colour)


# --- the evaluators ---

def _tar_at_far_by_hand(scores, genuine, far):
  """Largest TAR over the thresholds `score >= s` (s every score, or none accepted) whose
  FAR is at most `far`."""
  best = 0.0
  for threshold in scores:
    accepted = scores >= threshold
    if accepted[~genuine].mean() <= far:
      best = max(best, accepted[genuine].mean())
  return best


@pytest.mark.parametrize("target", ["ijbb", "ijbc"])
def test_tar_at_far_equals_a_hand_computation(tmp_path, monkeypatch, target):
  # 12 templates, 3 of each of 4 people, of 1-3 media of 1-2 images; every pair compared.
  # An image is its person's face plus 4 times as much noise, so the scores overlap.
  rng = np.random.default_rng(4)
  person = {t: (t - 1) // 3 for t in range(1, 13)}
  media = [(t, 10 * t + m) for t in person for m in range(1 + t % 3) for _ in range(1 + m % 2)]
  faces = rng.normal(128, 10, (4, 12, 12, 3))
  names = [f"{k}.png" for k in range(1, len(media) + 1)]
  pixels = {name: np.clip(faces[person[t]] + rng.normal(0, 40, (12, 12, 3)), 0, 255)
            .astype(np.uint8) for name, (t, _) in zip(names, media)}
  pairs = [(a, b, int(person[a] == person[b])) for a in person for b in person if a < b]
  _write_protocol(tmp_path, target, pixels, media, pairs)
  config = default.get_config()
  config.eval.benchmarks = (target,)
  config.eval.paths[target] = str(tmp_path)
  data = types.SimpleNamespace(stored_size=12, protocol_root="")
  evaluate.checked_paths(config, data)  # parses the files and decodes the first image
  monkeypatch.setattr(evaluate, "Embedder", fixture_files.PixelEmbedder)
  result = evaluate.evaluate(config, data, None, None)[target]

  embedding = dict(zip(names, fixture_files.PixelEmbedder().images(np.stack([pixels[n] for n in names]))))
  feature = {}
  for template in person:
    media_means = [np.mean([embedding[n] for n, tm in zip(names, media) if tm == (template, m)],
                           axis=0) for m in sorted({m for t, m in media if t == template})]
    total = np.sum(media_means, axis=0)
    feature[template] = total / np.linalg.norm(total)
  scores = np.array([feature[a] @ feature[b] for a, b, _ in pairs])
  genuine = np.array([label == 1 for _, _, label in pairs])
  expected = {far: _tar_at_far_by_hand(scores, genuine, float(far)) for far in FARS}
  assert 0 < expected["0.01"] < expected["0.1"] < 1  # the figures are not trivial
  assert list(result["tar_at_far"]) == list(FARS)
  for far in FARS:
    assert result["tar_at_far"][far] == pytest.approx(expected[far], abs=1e-12)
    low, high = result["tar_at_far_ci"][far]
    assert 0 <= low <= high <= 1
  assert (result["num_templates"], result["num_comparisons"], result["num_images"]) == (
      12, len(pairs), len(names))
  assert f"\n{target}\n  tar_at_far 1e-06 " in evaluate.table({"baseline": {target: result}})


def test_ijbb_has_no_synthetic_copy():
  config = default.get_config()
  config.eval.benchmarks = ("ijbb",)
  with pytest.raises(ValueError, match=r"config\.eval\.paths\.ijbb is empty"):
    evaluate.checked_paths(config, types.SimpleNamespace(stored_size=36,
                                                         protocol_root="/data"))
  paths = evaluate.checked_paths(default.get_config(),
                                 types.SimpleNamespace(stored_size=36, protocol_root="/data"),
                                 open_files=False)
  assert paths["ijbc"] == os.path.join("/data", "export", "ijbc")


# --- the synthetic IJB-C copy ---

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  """(tiny config with its data_dir, prepared builder, protocol root) of a fresh build."""
  config = tiny.get_config()
  config.data.data_dir = str(tmp_path_factory.mktemp("data"))
  builder = builder_lib.SyntheticFaces(config=config.data.builder_config,
                                       data_dir=config.data.data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return config, builder, export.ensure(builder)


def test_the_synthetic_copy_aligns_back_to_the_stored_faces(tiny_data):
  _, builder, root = tiny_data
  config = builder.builder_config
  size = config.image_size
  protocol = ijbc.read_ijbc(os.path.join(root, "export", "ijbc"), "ijbc")
  sightings = list(export._ijba_sightings(config.num_test_identities,
                                          config.multipie_identities("test")))
  np.testing.assert_array_equal(protocol.template_ids, [s[1] for s in sightings])
  np.testing.assert_array_equal(protocol.media_ids, [s[2] for s in sightings])
  subject = {s[1]: s[0] for s in sightings}
  np.testing.assert_array_equal(protocol.genuine, [subject[a] == subject[b] for a, b in
                                                   zip(protocol.tid1, protocol.tid2)])
  assert protocol.genuine.sum() == 3 * config.num_test_identities

  pixels = export.read_test_images(builder)
  stored = np.stack([pixels[s[4]] for s in sightings]).astype(np.float64)
  aligned = face_align.load_aligned(protocol.paths, protocol.landmarks, size)
  assert aligned.shape == stored.shape
  # The faces are pixel-noisy textures, which the two bilinear resamplings (loose crop, then
  # alignment) blur by about 8 levels; low-passed, they agree to about 2 levels, while an
  # alignment half a pixel off differs by more than 4.
  inner = (slice(None), slice(4, size - 4), slice(4, size - 4))
  low_pass = lambda x: ndimage.gaussian_filter(x, (0, 1, 1, 0))
  assert np.abs(aligned - stored)[inner].mean() < 10
  assert np.abs(low_pass(aligned.astype(np.float64)) - low_pass(stored))[inner].mean() < 3


def test_ensure_adds_the_copy_to_an_older_export(tiny_data):
  _, builder, root = tiny_data
  out = os.path.join(root, "export")
  meta = sorted(os.listdir(os.path.join(out, "ijbc", "meta")))
  written = {name: open(os.path.join(out, "ijbc", "meta", name)).read() for name in meta}
  with open(os.path.join(out, export.SUMMARY)) as f:
    summary = json.load(f)
  older = {k: v for k, v in summary.items() if not k.startswith("ijbc_")}
  with open(os.path.join(out, export.SUMMARY), "w") as f:
    json.dump(older, f)
  os.rename(os.path.join(out, "ijbc"), os.path.join(out, "ijbc_old"))
  untouched = os.path.join(out, "lfw", "pairs.txt")
  before = os.stat(untouched)

  assert export.ensure(builder) == root
  with open(os.path.join(out, export.SUMMARY)) as f:
    assert json.load(f) == summary
  for name in meta:
    assert open(os.path.join(out, "ijbc", "meta", name)).read() == written[name]
  for name in os.listdir(os.path.join(out, "ijbc", "loose_crop")):
    assert (open(os.path.join(out, "ijbc", "loose_crop", name), "rb").read()
            == open(os.path.join(out, "ijbc_old", "loose_crop", name), "rb").read())
  after = os.stat(untouched)
  assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
  assert not [name for name in os.listdir(out) if "partial" in name]


def test_the_tiny_recognizer_evaluates_the_synthetic_copy(tiny_data, tmp_path):
  """The run's path: the data set as main.py loads it, its inputs checked, then evaluated."""
  config, builder, root = tiny_data
  config = copy.deepcopy(config)
  config.eval.benchmarks = ("ijbc",)
  data = data_lib.load(config, str(tmp_path / "workdir"))
  assert data.protocol_root == root
  assert evaluate.checked_paths(config, data)["ijbc"] == os.path.join(root, "export", "ijbc")
  recognizer, discriminator = models.make_models(config, num_classes=data.num_classes,
                                                 num_landmarks=data.num_landmarks)
  variables, _ = train_state.init_variables(recognizer, discriminator, jax.random.key(0),
                                            config.data.image_size, config.aprn.tap)
  result = evaluate.evaluate(config, data, recognizer, variables)["ijbc"]
  with open(os.path.join(root, "export", export.SUMMARY)) as f:
    summary = json.load(f)
  assert (result["num_images"], result["num_templates"], result["num_comparisons"]) == (
      summary["ijbc_images"], summary["ijbc_templates"], summary["ijbc_comparisons"])
  assert list(result["tar_at_far"]) == list(FARS)
  assert all(0 <= tar <= 1 for tar in result["tar_at_far"].values())
