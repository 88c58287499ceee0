"""MegaFace Challenge 1 style rank-1 and CMC (`identification.identify_with_distractors`).

`paths.megaface_probes`: FaceScrub-style JSON list, images under `paths.megaface_probe_images`;
`paths.megaface_distractors`: a JSON list, or a folder holding one
`megaface_features_list.json_<M>_<set>`, images under `paths.megaface_distractor_images`.
Distractor images are streamed through the embedder (bounded image memory); their embeddings
go to the chunked identification. rank-1's interval: bootstrap over probe identities.
"""
import os

from aprn_jax.evaluation import identification, intervals, registry
from aprn_jax.evaluation.benchmarks import _common
from input_pipeline import files
from input_pipeline.readers import megaface

PATHS = {"megaface_probes": "export/megaface/facescrub_features_list.json",
         "megaface_probe_images": "export/megaface/facescrub",
         "megaface_distractors": "export/megaface",
         "megaface_distractor_images": "export/megaface/megaface"}


def distractor_list(path):
  """`path`, or the one MegaFace distractor list in the folder `path`."""
  if not files.isdir(path):
    return path
  found = sorted(files.glob(os.path.join(path, "megaface_features_list.json_*")))
  if len(found) != 1:
    raise ValueError(f"config.eval.paths.megaface_distractors: {path} holds {len(found)} "
                     f"distractor lists (megaface_features_list.json_*); name one file")
  return found[0]


def _lists(context, read):
  paths = context.paths
  probes = read(megaface.read_probe_list, paths["megaface_probes"],
                paths["megaface_probe_images"])
  distractors = read(megaface.read_distractor_list,
                     distractor_list(paths["megaface_distractors"]),
                     paths["megaface_distractor_images"])
  return probes, distractors


def run(context):
  probes, distractors = _lists(context, context.files.read)
  result = identification.identify_with_distractors(
      context.embed(probes.paths), probes.labels, context.embed(distractors))
  return {"megaface": {
      "rank1": result.rank1,
      "rank1_ci": list(intervals.ratio_bootstrap(result.pair_hits, result.pair_labels)),
      "cmc": {str(rank): float(v) for rank, v in enumerate(result.cmc, 1)},
      "num_distractors": len(distractors), "num_pairs": result.num_pairs}}


def checks(context):
  paths = context.paths
  return [
      (("megaface_probes", "megaface_probe_images"), lambda: _common.first_image(
          megaface.read_probe_list(paths["megaface_probes"],
                                   paths["megaface_probe_images"]).paths)),
      (("megaface_distractors", "megaface_distractor_images"), lambda: _common.first_image(
          megaface.read_distractor_list(distractor_list(paths["megaface_distractors"]),
                                        paths["megaface_distractor_images"])))]


EVALUATOR = registry.register(registry.Evaluator(
    name="megaface", paths=PATHS, run=run, checks=checks, table_keys=("rank1",)))
