"""The workdir guard: one config's run per workdir, across versions of the config."""
import json

import pytest

from aprn_jax import run
from configs import default


def test_workdir_of_an_older_config_resumes_unless_a_new_field_changed(tmp_path):
  """A config.json written before a field existed matches a config holding its default."""
  config = default.get_config()
  saved = json.loads(config.to_json())
  del saved["data"]["skip_bad"], saved["data"]["stored_size"]
  workdir = tmp_path / "wd"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(saved))
  run.guard_workdir(config, str(workdir))  # the same run
  config.data.skip_bad = True
  with pytest.raises(ValueError, match=r"differs in: data\.skip_bad"):
    run.guard_workdir(config, str(workdir))
