"""insightface verification packs: `<paths.bins>/<name>.bin` for each name in
`config.eval.bins` (lfw, cfp_fp, agedb_30, calfw, cplfw, ...), results under `bin_<name>`.

10 contiguous folds, as insightface; .bin packs name no people, so the TAR bootstrap
resamples each pair alone. A pack of fewer than 10 pairs or of one kind of pair only gets the
accuracy at the best threshold over all its pairs and a `note` naming the file; an empty one
a `skipped` message (printed too), so the other benchmarks still run.
"""
import os

import numpy as np

from aprn_jax.evaluation import registry, verification
from aprn_jax.evaluation.benchmarks import _common
from input_pipeline.readers import insightface_bin


def _pack(context, path):
  pack = context.files.read(insightface_bin.read_bin, path, context.stored_size)
  pairs = pack.pairs
  num_pairs, num_genuine = len(pairs.is_same), int(pairs.is_same.sum())
  lacking = []
  if len(np.unique(pairs.fold)) < 2:
    lacking.append(f"{num_pairs} pairs, fewer than the {insightface_bin.NUM_FOLDS} folds")
  if num_genuine in (0, num_pairs):
    lacking.append(f"{num_genuine} genuine and {num_pairs - num_genuine} impostor pairs")
  if not lacking:
    return _common.pair_results(context.embed.images(pack.images), pairs, np.arange(num_pairs))
  if not num_pairs:
    message = f"{path}: no pairs; benchmark skipped"
    print(f"warning: {message}", flush=True)
    return {"skipped": message}
  emb = context.embed.images(pack.images)
  distances = verification.squared_distances(emb[pairs.index_a], emb[pairs.index_b])
  accuracy, threshold = verification.best_threshold_accuracy(distances, pairs.is_same)
  note = (f"{path}: {' and '.join(lacking)}, so no k-fold accuracy, AUC, EER or TAR; "
          f"accuracy is at the best threshold over all pairs (chosen on them: optimistic)")
  print(f"warning: {note}", flush=True)
  return {"accuracy": accuracy, "threshold": threshold, "num_pairs": num_pairs,
          "num_genuine": num_genuine, "note": note}


def _pack_paths(context):
  return [os.path.join(context.paths["bins"], f"{name}.bin")
          for name in dict.fromkeys(context.config.eval.bins)]


def run(context):
  return {f"bin_{os.path.basename(path)[:-4]}": _pack(context, path)
          for path in _pack_paths(context)}


def checks(context):
  return [(("bins",), lambda path=path: insightface_bin.check_bin(path))
          for path in _pack_paths(context)]


EVALUATOR = registry.register(registry.Evaluator(
    name="bins", paths={"bins": "export"}, run=run, checks=checks,
    table_keys=_common.VERIFICATION_TABLE_KEYS))
