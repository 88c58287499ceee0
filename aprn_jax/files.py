"""The run's JSON files (config, data description, results, summaries, model cards)."""
import json
import os


def write_json(path, value):
  """Writes via a temporary file and a rename, so a reader never sees half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
