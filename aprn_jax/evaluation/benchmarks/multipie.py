"""Multi-PIE style per-yaw rank-1 against the frontal gallery (`paths.multipie`);
intervals by the bootstrap over probe subjects."""
import numpy as np

from aprn_jax.evaluation import identification, intervals, registry
from aprn_jax.evaluation.benchmarks import _common
from input_pipeline.readers import multipie


def run(context):
  lists = context.files.read(multipie.read_multipie, context.paths["multipie"])
  result = identification.rank1_by_pose(
      context.embed(lists.gallery_paths), lists.gallery_subjects,
      context.embed(lists.probe_paths), lists.probe_subjects, lists.probe_yaw_bin)
  subjects, yaws = np.asarray(lists.probe_subjects), np.asarray(lists.probe_yaw_bin)
  by_yaw_ci = {str(int(yaw)): list(intervals.ratio_bootstrap(result.correct[yaws == yaw],
                                                             subjects[yaws == yaw]))
               for yaw in result.per_yaw}
  return {"multipie": {
      "rank1": result.overall,
      "rank1_ci": list(intervals.ratio_bootstrap(result.correct, subjects)),
      "rank1_by_yaw": {str(int(k)): float(v) for k, v in result.per_yaw.items()},
      "rank1_by_yaw_ci": by_yaw_ci,
      "probes_by_yaw": {str(int(k)): int(v) for k, v in result.counts.items()}}}


def checks(context):
  return [(("multipie",), lambda: _common.first_image(
      multipie.read_multipie(context.paths["multipie"]).gallery_paths))]


EVALUATOR = registry.register(registry.Evaluator(
    name="multipie", paths={"multipie": "multipie"}, run=run, checks=checks,
    table_keys=("rank1", "rank1_by_yaw")))
