"""LFW verification: `paths.lfw` is `pairs.txt`, `paths.lfw_images` the `<name>/<name>_NNNN.jpg`
tree; folds = the 10 sets; a pair belongs to the person of its first image."""
import os

from aprn_jax.evaluation import registry
from aprn_jax.evaluation.benchmarks import _common
from input_pipeline.readers import lfw


def _person(path):  # <name>/<name>_NNNN.jpg
  return os.path.basename(os.path.dirname(path))


def run(context):
  pairs = context.files.read(lfw.read_lfw, context.paths["lfw"], context.paths["lfw_images"])
  emb = context.embed(pairs.paths)
  return {"lfw": _common.pair_results(emb, pairs,
                                      _common.person_of_first_image(pairs, _person))}


def checks(context):
  return [(("lfw", "lfw_images"), lambda: _common.first_image(
      lfw.read_lfw(context.paths["lfw"], context.paths["lfw_images"]).paths))]


EVALUATOR = registry.register(registry.Evaluator(
    name="lfw", paths={"lfw": "export/lfw/pairs.txt", "lfw_images": "export/lfw/images"},
    run=run, checks=checks, table_keys=_common.VERIFICATION_TABLE_KEYS))
