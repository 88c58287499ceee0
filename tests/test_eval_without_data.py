"""Eval and analyse of a run on the user's own faces once their images and build are gone:
they read the workdir's config.json, data.json and checkpoints alone.

The end-to-end test trains configs/tiny.py's baseline on a face folder written here and
evaluates it on an LFW-layout benchmark also written here; the others save checkpoints of the
phases' initial states beside a hand-written data.json (training them is not needed).
"""
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from aprn_jax import checkpoints, run, trainer
from aprn_jax import data as data_lib
from aprn_jax.analysis import analyse, landmark_probe
from aprn_jax.evaluation.benchmarks import pose_analyses
from configs import tiny
from test_real_builders import face_points, write_csv

SIZE = 32
IDENTITIES, PER_IDENTITY = 4, 8  # 32 training images: 2 steps of 16 per epoch
LFW_PEOPLE = 4


def random_image(rng):
  return rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def write_face_folder(root, rng):
  """<root>/faces/<identity>/<j>.png with landmarks.csv (the face_folder layout)."""
  manual = os.path.join(root, "faces")
  rows = {}
  for i in range(IDENTITIES):
    os.makedirs(os.path.join(manual, f"id{i}"))
    for j in range(PER_IDENTITY):
      key = f"id{i}/{j}.png"
      Image.fromarray(random_image(rng)).save(os.path.join(manual, key))
      rows[key] = face_points(SIZE, SIZE, rng)
  write_csv(os.path.join(manual, "landmarks.csv"), rows)
  return manual


def write_lfw(root, rng):
  """An LFW tree of LFW_PEOPLE people with 2 images each; pairs.txt of 10 sets, each one
  matched and one mismatched pair. Returns (pairs.txt, image root)."""
  images = os.path.join(root, "lfw", "images")
  for p in range(LFW_PEOPLE):
    os.makedirs(os.path.join(images, f"p{p}"))
    for n in (1, 2):
      Image.fromarray(random_image(rng)).save(os.path.join(images, f"p{p}", f"p{p}_{n:04d}.jpg"))
  lines = ["10 1"]
  for s in range(10):
    a, b = s % LFW_PEOPLE, (s + 1) % LFW_PEOPLE
    lines += [f"p{a} 1 2", f"p{a} {1 + s % 2} p{b} {2 - s % 2}"]
  pairs = os.path.join(root, "lfw", "pairs.txt")
  with open(pairs, "w") as f:
    f.write("\n".join(lines) + "\n")
  return pairs, images


def face_config(root, manual_dir):
  config = tiny.get_config()
  config.data.update(name="face_folder", manual_dir=manual_dir, stored_size=SIZE,
                     data_dir=os.path.join(root, "data"))
  pairs, images = write_lfw(root, np.random.default_rng(1))
  config.eval.benchmarks = ("lfw",)
  config.eval.paths.update(lfw=pairs, lfw_images=images)
  return config


def test_eval_after_the_training_images_and_build_are_gone(tmp_path, capfd):
  root = str(tmp_path)
  manual = write_face_folder(root, np.random.default_rng(0))
  config = face_config(root, manual)
  config.train.phases = ("baseline",)  # 4 steps
  workdir = os.path.join(root, "work")
  trained = run.main(config, workdir, "train")
  with open(os.path.join(workdir, "data.json")) as f:
    assert json.load(f)["num_classes"] == IDENTITIES
  shutil.move(manual, os.path.join(root, "faces_moved"))
  shutil.move(config.data.data_dir, os.path.join(root, "data_moved"))
  capfd.readouterr()
  evaluated = run.main(config, workdir, "eval")
  printed = capfd.readouterr()
  assert set(evaluated) == {"baseline"}
  assert evaluated["baseline"]["lfw"] == trained["baseline"]["lfw"]
  assert not os.path.exists(config.data.data_dir)  # nothing was built again
  assert "restored the recognizer" in printed.out
  assert "generating" not in (printed.out + printed.err).lower()


@pytest.fixture(scope="module")
def described(tmp_path_factory):
  """A face_folder workdir whose images are gone: config.json, data.json, checkpoints."""
  root = str(tmp_path_factory.mktemp("described"))
  config = face_config(root, os.path.join(root, "gone"))
  workdir = os.path.join(root, "work")
  run.guard_workdir(config, workdir)  # config.json, as training writes it
  info = data_lib.DataInfo(
      num_examples=32, num_classes=IDENTITIES, num_landmarks=51, stored_size=SIZE,
      mean_face=data_lib.to_network_frame(face_points(SIZE, SIZE, np.random.default_rng(2)),
                                          SIZE, SIZE, SIZE),
      protocol_root="")
  run.record_data(info, workdir)
  for name in trainer.PHASES:
    phase = trainer.Phase(config, info, workdir, name)
    state = phase.initial_state()
    mngr = phase.checkpoint_manager()
    checkpoints.save(mngr, state.replace(step=state.step + 1))
    mngr.close()
  return config, workdir, info


@pytest.fixture
def no_data_load(monkeypatch):
  def refuse(*args):
    raise AssertionError("data_lib.load was called")
  monkeypatch.setattr(data_lib, "load", refuse)


def test_saved_description_round_trips(described):
  _, workdir, info = described
  saved = run.saved_data(workdir)
  assert saved.to_json() == info.to_json()
  assert saved.mean_face.dtype == np.float32
  np.testing.assert_array_equal(saved.mean_face, info.mean_face)


def test_eval_reads_data_json_and_never_opens_the_data(described, no_data_load):
  config, workdir, _ = described
  results = run.main(config, workdir, "eval")
  assert set(results) == set(trainer.PHASES)
  assert 0.0 <= results["aprn"]["lfw"]["accuracy"] <= 1.0


def fake_cfp(config):
  """Held-out images with landmarks, standing in for CFP-FP (real data names no CFP files
  here): the LFW images, first of each person frontal, second profile."""
  paths = [os.path.join(config.eval.paths.lfw_images, f"p{p}", f"p{p}_{n:04d}.jpg")
           for p in range(LFW_PEOPLE) for n in (1, 2)]
  images = np.stack([np.asarray(Image.open(p), np.float32) / 127.5 - 1 for p in paths])
  rng = np.random.default_rng(3)
  return landmark_probe.LandmarkImages(
      images=images, landmarks=rng.uniform(-0.8, 0.8, (len(paths), 51, 2)).astype(np.float32),
      is_profile=np.array([n == 2 for p in range(LFW_PEOPLE) for n in (1, 2)]),
      identity=np.array([f"p{p}" for p in range(LFW_PEOPLE) for _ in (1, 2)]), paths=paths)


def test_analyse_without_training_images_skips_the_probes_alone(described, no_data_load,
                                                                 monkeypatch, capfd):
  config, workdir, _ = described
  config = config.copy_and_resolve_references()
  config.analysis.update(tsne_identities=2, overlay_identities=2, overlay_tile=32,
                         noise_images=4)
  config.eval.paths.cfp = os.path.join(workdir, "cfp")  # read by the fakes below alone
  monkeypatch.setattr(landmark_probe, "cfp_images", lambda config, data, root: fake_cfp(config))
  monkeypatch.setattr(pose_analyses, "pose_analyses",
                      lambda embed, files, root: {"centroid_distance_mean": 0.0})
  results = run.main(config, workdir, "analyse")
  assert "landmark probes skipped: training images unavailable" in capfd.readouterr().out
  for phase in trainer.PHASES:
    skipped = results[phase]["landmark_probes"]["skipped"]
    assert "config.data.manual_dir" in skipped and config.data.manual_dir in skipped
    assert os.path.exists(os.path.join(workdir, "analysis", results[phase]["tsne_png"]))
  assert results["aprn"]["overlays"]["source"] == "discriminator"
  assert "noise_test" in results["aprn"]
  assert "overlays" not in results["baseline"]  # its stand-in for D is a probe


def test_unreadable_data_json_and_missing_checkpoints_are_named(tmp_path):
  config = face_config(str(tmp_path), str(tmp_path / "gone"))
  workdir = str(tmp_path / "work")
  with pytest.raises(FileNotFoundError, match=re.escape(f"no phase checkpoints under {workdir}")):
    run.main(config, workdir, "eval")
  os.makedirs(os.path.join(workdir, "baseline", "checkpoints"))
  path = os.path.join(workdir, "data.json")
  with open(path, "w") as f:
    f.write('{"num_classes": 4')  # cut short
  with pytest.raises(ValueError, match=re.escape(f"{path} is not a readable data")):
    run.main(config, workdir, "eval")


def test_analyse_names_the_cfp_option_when_real_data_has_none(tmp_path):
  config = face_config(str(tmp_path), str(tmp_path / "gone"))
  info = data_lib.DataInfo(num_examples=1, num_classes=1, num_landmarks=51, stored_size=32,
                           mean_face=np.zeros((51, 2), np.float32), protocol_root="")
  with pytest.raises(ValueError, match=r"set config\.eval\.paths\.cfp"):
    analyse.cfp_root(config, info)
  config.eval.paths.cfp = str(tmp_path / "cfp")
  assert analyse.cfp_root(config, info) == str(tmp_path / "cfp")
