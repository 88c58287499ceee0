"""IJB-A 1:1 verification: `paths.ijba` holds split1..10, images under `paths.ijba_images`;
template media pooling (`templates`), TAR at FAR 1e-1..1e-4, mean and std over the splits;
the interval of the mean by the bootstrap over subjects, drawn once for all splits; `roc`:
the splits' mean TAR at each FAR of `verification.ROC_FARS`."""
import numpy as np

from aprn_jax.evaluation import intervals, registry, templates, verification
from aprn_jax.evaluation.benchmarks import _common
from input_pipeline.readers import ijba


def mean_roc(curves):
  """The splits' mean TAR at the `verification.ROC_FARS` every split measures, as the
  benchmark's figures are means over splits; curves: [(far, tar)] of each split."""
  rocs = [verification.sampled_roc(far, tar) for far, tar in curves]
  fars = [f for f in rocs[0]["far"] if all(f in roc["far"] for roc in rocs)]
  return {"far": fars, "tar": [float(np.mean([roc["tar"][roc["far"].index(f)] for roc in rocs]))
                               for f in fars]}


def run(context):
  per_split, scored, curves = [], [], []
  for split in context.files.read(ijba.read_ijba, context.paths["ijba"],
                                  context.paths["ijba_images"]):
    scores = templates.split_scores(context.embed(split.paths), split.template_ids,
                                    split.media_ids, split.tid1, split.tid2)
    far, tar, _ = verification.roc_curve(scores, split.genuine)
    curves.append((far, tar))
    per_split.append({target: verification.tar_at_far(far, tar, target)
                      for target in templates.DEFAULT_FARS})
    subject_of = dict(zip(split.templates.tolist(), split.template_subjects.tolist()))
    scored.append((scores, split.genuine, np.array([subject_of[t] for t in split.tid1.tolist()])))
  summary = templates.summarize_splits(per_split)
  ci = intervals.split_mean_tar_bootstrap(scored, list(summary))
  return {"ijba": {"tar_at_far": {str(far): mean for far, (mean, _) in summary.items()},
                   "tar_at_far_std": {str(far): std for far, (_, std) in summary.items()},
                   "tar_at_far_ci": {str(far): list(ci[far]) for far in summary},
                   "roc": mean_roc(curves), "num_splits": len(per_split)}}


def checks(context):
  return [(("ijba", "ijba_images"), lambda: [
      _common.first_image(split.paths)
      for split in ijba.read_ijba(context.paths["ijba"], context.paths["ijba_images"])])]


EVALUATOR = registry.register(registry.Evaluator(
    name="ijba", paths={"ijba": "export/ijba/protocol", "ijba_images": "export/ijba/images"},
    run=run, checks=checks, table_keys=("tar_at_far",)))
