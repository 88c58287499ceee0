"""CFP (Sengupta et al. 2016) frontal-frontal and frontal-profile verification.

`paths.cfp` holds `Protocol/` and `Data/`; 10-fold accuracy, AUC, EER and TAR at FAR 1e-3,
folds from CFP's Split folders; a pair belongs to the person of its first image (the TAR
bootstrap resamples people).
"""
import os

from aprn_jax.evaluation import registry
from aprn_jax.evaluation.benchmarks import _common
from input_pipeline.readers import cfp

PATHS = {"cfp": "cfp"}


def person(path):  # .../Data/Images/<person>/<frontal|profile>/<k>.jpg
  return os.path.basename(os.path.dirname(os.path.dirname(path)))


def _evaluator(protocol):
  name = f"cfp_{protocol.lower()}"

  def run(context):
    pairs = context.files.read(cfp.read_cfp, context.paths["cfp"], protocol)
    emb = context.embed(pairs.paths)
    return {name: _common.pair_results(emb, pairs,
                                       _common.person_of_first_image(pairs, person))}

  def checks(context):
    return [(("cfp",), lambda: _common.first_image(
        cfp.read_cfp(context.paths["cfp"], protocol).paths))]

  return registry.Evaluator(name=name, paths=PATHS, run=run, checks=checks,
                            table_keys=_common.VERIFICATION_TABLE_KEYS)


FF = registry.register(_evaluator("FF"))
FP = registry.register(_evaluator("FP"))
