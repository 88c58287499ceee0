"""IJB-A 1:1 verification: `paths.ijba` holds split1..10, images under `paths.ijba_images`;
template media pooling (`templates`), TAR at FAR 1e-1..1e-4, mean and std over the splits;
the interval of the mean by the bootstrap over subjects, drawn once for all splits."""
import numpy as np

from aprn_jax.evaluation import intervals, registry, templates
from aprn_jax.evaluation.benchmarks import _common
from input_pipeline.readers import ijba


def run(context):
  per_split, scored = [], []
  for split in context.files.read(ijba.read_ijba, context.paths["ijba"],
                                  context.paths["ijba_images"]):
    scores = templates.split_scores(context.embed(split.paths), split.template_ids,
                                    split.media_ids, split.tid1, split.tid2)
    per_split.append(templates.tar_at_fars(scores, split.genuine))
    subject_of = dict(zip(split.templates.tolist(), split.template_subjects.tolist()))
    scored.append((scores, split.genuine, np.array([subject_of[t] for t in split.tid1.tolist()])))
  summary = templates.summarize_splits(per_split)
  ci = intervals.split_mean_tar_bootstrap(scored, list(summary))
  return {"ijba": {"tar_at_far": {str(far): mean for far, (mean, _) in summary.items()},
                   "tar_at_far_std": {str(far): std for far, (_, std) in summary.items()},
                   "tar_at_far_ci": {str(far): list(ci[far]) for far in summary},
                   "num_splits": len(per_split)}}


def checks(context):
  return [(("ijba", "ijba_images"), lambda: [
      _common.first_image(split.paths)
      for split in ijba.read_ijba(context.paths["ijba"], context.paths["ijba_images"])])]


EVALUATOR = registry.register(registry.Evaluator(
    name="ijba", paths={"ijba": "export/ijba/protocol", "ijba_images": "export/ijba/images"},
    run=run, checks=checks, table_keys=("tar_at_far",)))
