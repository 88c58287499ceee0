"""The workdir guard: one config's run per workdir, across versions of the config, and
nothing of a run that never trained (a failed data build) blocks the corrected rerun."""
import json
import os

import pytest

from aprn_jax import export, run
from configs import default, resnet101


def test_workdir_of_an_older_config_resumes_unless_a_new_field_changed(tmp_path):
  """A config.json written before a field existed matches a config holding the value the field
  had before it existed (saved_config.ADDED_FIELDS), whichever config file started the run;
  a field absent from config.json and from that table is a difference."""
  config = resnet101.get_config()
  saved = json.loads(config.to_json())
  del saved["model"]["layer_forms"], saved["aprn"]["d_pool"], saved["model"]["classifier"]
  workdir = tmp_path / "wd"
  (workdir / "baseline").mkdir(parents=True)  # the run trained
  (workdir / "config.json").write_text(json.dumps(saved))
  run.guard_workdir(config, str(workdir))  # the same run
  assert export.load_config(str(workdir)).model.layer_forms == "fast"
  config.model.layer_forms = "flax"
  with pytest.raises(ValueError, match=r"differs in: model\.layer_forms"):
    run.guard_workdir(config, str(workdir))
  del saved["data"]["skip_bad"]
  (workdir / "config.json").write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=r"differs in: data\.skip_bad"):
    run.guard_workdir(resnet101.get_config(), str(workdir))


class _Stop(Exception):
  pass


def test_failed_data_build_leaves_nothing_that_blocks_the_fix(tmp_path, monkeypatch):
  """A build that stops on a bad image, rerun with skip_bad=True, is not refused."""
  config = default.get_config()
  workdir = str(tmp_path / "wd")
  def failed_build(unused_config, unused_workdir):
    raise ValueError("manual/bo/1.jpg: cannot decode the image")
  monkeypatch.setattr(run.data_lib, "load", failed_build)
  with pytest.raises(ValueError, match="cannot decode"):
    run.main(config, workdir, "train")
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  config.data.skip_bad = True
  def built(unused_config, unused_workdir):
    raise _Stop  # the build went through; the guard let it
  monkeypatch.setattr(run.data_lib, "load", built)
  with pytest.raises(_Stop):
    run.main(config, workdir, "train")


def test_config_of_a_run_that_never_trained_is_replaced(tmp_path, capsys):
  """A config.json beside no phase folder (as older versions left after a failed build)."""
  config = default.get_config()
  workdir = tmp_path / "wd"
  run.guard_workdir(config, str(workdir))
  config.data.skip_bad = True
  run.guard_workdir(config, str(workdir))
  assert "differs in: data.skip_bad); this config replaces it" in capsys.readouterr().out
  assert json.loads((workdir / "config.json").read_text())["data"]["skip_bad"] is True
  (workdir / "aprn").mkdir()
  config.data.skip_bad = False
  with pytest.raises(ValueError, match=r"differs in: data\.skip_bad"):
    run.guard_workdir(config, str(workdir))
