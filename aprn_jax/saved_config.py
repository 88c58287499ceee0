"""A run's saved config (<workdir>/config.json) read by a later version of the project.

config.json holds every field of the config the run was started with. A field added to the
project since then is absent from it; ADDED_FIELDS gives, for each field added since runs
became resumable (the independent seeds and D's own optimizer), the value that does what the
project did before the field existed. `complete` puts those values into a saved config, so a
resumed run, an evaluation or an export of an older workdir sees the config it was trained
with, whichever config file (configs/*.py) started it.

Adding a config field: declare it in configs/default.py and, when its default changes nothing
for existing runs, add it here with that default.
"""
import copy

ADDED_FIELDS = {
    "aprn.d_pool": "table",          # D's max-pool by the backbone's table
    "eval.paths.ijbb": "",           # the data set's own IJB-B files
    "eval.paths.ijbc": "",
    "model.block_widths": (),        # CASIA-Net's widths from the paper
    "model.classifier": "dense",     # the identity head on every device
    "model.layer_forms": "fast",     # models/layers.py's forms (the only ones before)
    "model.sample_rate": 1.0,
    "train.ordered_reductions": False,  # all-reduces in their algorithm's order
}


def complete(saved):
  """`saved` (config.json's dict) with every absent ADDED_FIELDS entry filled in; a copy."""
  out = copy.deepcopy(saved)
  for key, value in ADDED_FIELDS.items():
    *sections, name = key.split(".")
    node = out
    for section in sections:
      node = node.setdefault(section, {})
    node.setdefault(name, list(value) if isinstance(value, tuple) else value)
  return out
