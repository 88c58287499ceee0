"""Where evaluation finds each benchmark's files: the data set's own, or config.eval.paths."""
import os

import pytest

from aprn_jax import data as data_lib
from aprn_jax import evaluate
from configs import default


def fake_data(protocol_root):
  return data_lib.TrainData(dataset_fn=None, num_examples=0, num_classes=0, num_landmarks=51,
                            stored_size=72, mean_face=None, protocol_root=protocol_root)


def test_empty_paths_are_the_data_sets_own_files():
  config = default.get_config()
  paths = evaluate.checked_paths(config, fake_data("/data/protocols"))
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
  paths = evaluate.checked_paths(config, fake_data(""))
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
  assert evaluate._distractor_list(str(tmp_path / "a.json")) == str(tmp_path / "a.json")
  with pytest.raises(ValueError, match="holds 0 distractor lists"):
    evaluate._distractor_list(str(tmp_path))
  for size in (10, 100):
    (tmp_path / f"megaface_features_list.json_{size}_1").write_text("{}")
  with pytest.raises(ValueError, match="holds 2 distractor lists"):
    evaluate._distractor_list(str(tmp_path))
  os.remove(tmp_path / "megaface_features_list.json_100_1")
  assert evaluate._distractor_list(str(tmp_path)).endswith("json_10_1")

