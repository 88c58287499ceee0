"""Where evaluation finds each benchmark's files: the data set's own, or config.eval.paths;
that each is opened before training; and what a pack too small for the protocol gives."""
import os
import pickle

import numpy as np
import pytest

from aprn_jax import data as data_lib
from aprn_jax import evaluate
from aprn_jax.evaluation.benchmarks import megaface as megaface_family
from configs import default
import fixture_files
from input_pipeline.readers import insightface_bin


def fake_data(protocol_root):
  return data_lib.TrainData(dataset_fn=None, num_examples=0, num_classes=0, num_landmarks=51,
                            stored_size=72, mean_face=None, protocol_root=protocol_root)


def test_empty_paths_are_the_data_sets_own_files():
  config = default.get_config()
  paths = evaluate.checked_paths(config, fake_data("/data/protocols"), open_files=False)
  assert paths["cfp"] == "/data/protocols/cfp"
  assert paths["lfw"] == "/data/protocols/export/lfw/pairs.txt"
  assert paths["megaface_distractors"] == "/data/protocols/export/megaface"


def test_given_paths_win_and_real_data_needs_them(tmp_path):
  config = default.get_config()
  config.eval.benchmarks = ("lfw",)
  with pytest.raises(ValueError, match=r"'lfw'.*config\.eval\.paths\.lfw is empty"):
    evaluate.checked_paths(config, fake_data(""))
  config.eval.paths.lfw = str(tmp_path / "pairs.txt")
  with pytest.raises(ValueError, match=r"config\.eval\.paths\.lfw_images is empty"):
    evaluate.checked_paths(config, fake_data(""))
  config.eval.paths.lfw_images = str(tmp_path)
  paths = evaluate.checked_paths(config, fake_data(""), open_files=False)
  assert (paths["lfw"], paths["lfw_images"]) == (str(tmp_path / "pairs.txt"), str(tmp_path))
  assert paths["cfp"] is None  # not asked for, so not needed


@pytest.mark.parametrize("field, value, message", [
    ("benchmarks", ("lfw", "ytf"), r"'ytf'; allowed"),
    ("benchmarks", ("cfp_ff,cfp_fp",), r"'cfp_ff,cfp_fp'; allowed.*a tuple is written"),
    ("paths", {"lfw_pairs": "x"}, r"unknown entries \['lfw_pairs'\]"),
])
def test_bad_eval_options_are_named(field, value, message):
  config = default.get_config()
  with config.unlocked():
    if field == "paths":
      config.eval.paths.update(value)
    else:
      config.eval[field] = value
  with pytest.raises(ValueError, match=message):
    evaluate.checked_paths(config, fake_data("/data"))


def test_distractor_folder_must_hold_one_list(tmp_path):
  assert megaface_family.distractor_list(str(tmp_path / "a.json")) == str(tmp_path / "a.json")
  with pytest.raises(ValueError, match="holds 0 distractor lists"):
    megaface_family.distractor_list(str(tmp_path))
  for size in (10, 100):
    (tmp_path / f"megaface_features_list.json_{size}_1").write_text("{}")
  with pytest.raises(ValueError, match="holds 2 distractor lists"):
    megaface_family.distractor_list(str(tmp_path))
  os.remove(tmp_path / "megaface_features_list.json_100_1")
  assert megaface_family.distractor_list(str(tmp_path)).endswith("json_10_1")



def _pack_images(num_pairs, genuine, seed=0):
  """uint8 (2 num_pairs, 8, 8, 3): a genuine pair is one noise image and a slightly noisier
  copy, an impostor pair two noise images."""
  rng = np.random.default_rng(seed)
  first = rng.integers(0, 256, (num_pairs, 8, 8, 3))
  second = np.where(np.asarray(genuine)[:, None, None, None],
                    first + rng.integers(-8, 9, first.shape),
                    rng.integers(0, 256, first.shape))
  return np.clip(np.stack([first, second], 1).reshape(-1, 8, 8, 3), 0, 255).astype(np.uint8)


def _write_pack(path, genuine):
  insightface_bin.write_bin(str(path), _pack_images(len(genuine), genuine), genuine,
                            image_format="png")


def _bins_config(folder, packs):
  config = default.get_config()
  config.eval.benchmarks = ("bins",)
  config.eval.bins = packs
  config.eval.paths.bins = str(folder)
  return config


def test_every_eval_input_is_opened_before_training(tmp_path):
  """A pack missing from or broken in config.eval.paths.bins stops checked_paths (which
  main.py runs before the first training step), naming the option and the file."""
  _write_pack(tmp_path / "lfw.bin", [True, False] * 10)
  config = _bins_config(tmp_path, ("lfw",))
  evaluate.checked_paths(config, fake_data(""))
  config.eval.bins = ("lfw", "agedb_30")
  with pytest.raises(FileNotFoundError, match=r"config\.eval\.paths\.bins=.*: verification "
                     r"pack not found: .*agedb_30\.bin"):
    evaluate.checked_paths(config, fake_data(""))
  (tmp_path / "agedb_30.bin").write_bytes(pickle.dumps(([b"not an image"] * 2, [True])))
  with pytest.raises(ValueError, match=r"config\.eval\.paths\.bins=.*cannot decode image 0 "
                     r"of .*agedb_30\.bin"):
    evaluate.checked_paths(config, fake_data(""))


@pytest.mark.parametrize("benchmark, option, make, message", [
    ("lfw", "lfw", lambda root: (root / "pairs.txt").write_text("2\t1\nAnn 1 2\n"),
     "pairs.txt"),
    ("lfw", "lfw", lambda root: None, r"pairs\.txt"),
    ("multipie", "multipie", lambda root: (root / "gallery.txt").write_text("a.png 1\n"),
     r"probe\.txt"),
    ("megaface", "megaface_probes", lambda root: None, r"list file not found: .*probes\.json"),
    ("ijba", "ijba", lambda root: None, "split1"),
    ("cfp_fp", "cfp", lambda root: None, "Protocol"),
])
def test_list_inputs_are_parsed_before_training(tmp_path, benchmark, option, make, message):
  make(tmp_path)
  config = default.get_config()
  config.eval.benchmarks = (benchmark,)
  config.eval.paths.update(
      cfp=str(tmp_path), lfw=str(tmp_path / "pairs.txt"), lfw_images=str(tmp_path),
      multipie=str(tmp_path), ijba=str(tmp_path), ijba_images=str(tmp_path),
      megaface_probes=str(tmp_path / "probes.json"), megaface_probe_images=str(tmp_path),
      megaface_distractors=str(tmp_path / "distractors.json"),
      megaface_distractor_images=str(tmp_path))
  with pytest.raises((ValueError, FileNotFoundError),
                     match=rf"config\.eval\.paths\.{option}=.*{message}"):
    evaluate.checked_paths(config, fake_data(""))


def test_packs_too_small_or_one_sided_report_what_they_can(tmp_path, monkeypatch, capsys):
  """insightface's own test pack has only genuine pairs; a tiny pack has fewer pairs than
  folds. Each gets the accuracy at the best threshold and a note naming it; the full pack
  beside them keeps its k-fold figures."""
  _write_pack(tmp_path / "lfw.bin", [True, False] * 10)
  _write_pack(tmp_path / "genuine.bin", [True] * 12)
  _write_pack(tmp_path / "tiny.bin", [True, False, True])
  insightface_bin.write_encoded_bin(str(tmp_path / "empty.bin"), [], [])
  monkeypatch.setattr(evaluate, "Embedder", fixture_files.PixelEmbedder)
  config = _bins_config(tmp_path, ("lfw", "genuine", "tiny", "empty"))
  results = evaluate.evaluate(config, fake_data(""), None, None)
  assert results["bin_lfw"]["accuracy"] == 1.0 and "auc" in results["bin_lfw"]
  genuine, tiny = results["bin_genuine"], results["bin_tiny"]
  assert genuine["accuracy"] == 1.0 and "auc" not in genuine
  assert "12 genuine and 0 impostor pairs" in genuine["note"]
  assert tiny["accuracy"] == 1.0 and tiny["num_pairs"] == 3
  assert "3 pairs, fewer than the 10 folds" in tiny["note"]
  assert results["bin_empty"] == {"skipped": f"{tmp_path / 'empty.bin'}: no pairs; "
                                             "benchmark skipped"}
  printed = capsys.readouterr().out
  assert "genuine.bin" in printed and "tiny.bin" in printed and "empty.bin" in printed
  table = evaluate.table({"baseline": results})
  assert "\nbin_tiny\n  accuracy " in table and "\n  auc " in table.split("\nbin_lfw\n")[1]
