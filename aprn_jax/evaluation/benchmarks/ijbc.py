"""IJB-B and IJB-C 1:1 verification (`ijbb`, `ijbc`): `paths.ijbb` / `paths.ijbc` is the
root holding `meta/` and `loose_crop/` in insightface's layout (`input_pipeline.readers.ijbc`);
the synthetic data set has an IJB-C copy (`export/ijbc`), not an IJB-B one.

As insightface's IJB code: every image is aligned by its five points to the ArcFace template
(`readers.face_align`), here at the data set's stored size, so the aligned image then takes
evaluation's usual centred crop and resize; embeddings (of image and mirrored image when
config.eval.flip) are averaged within a media, summed over a template's media and
L2-normalised (`templates.pool_templates`); a comparison's score is the cosine of its two
templates. Differences: TAR at FAR 1e-6 ... 1e-1 is the largest TAR whose FAR is <= the
target (`verification`), where insightface takes the ROC point whose FAR is nearest it; and
embeddings are not weighted by the faceness score (insightface's optional detector-score
weighting; no config option, the scores are read but unused).

Intervals: the files name no subjects, so the TAR bootstrap (`intervals.tar_at_far_bootstrap`)
resamples the comparisons grouped by their first template, each template carrying all the
comparisons it opens, instead of grouped by person.
"""
import numpy as np

from aprn_jax.evaluation import intervals, registry, templates, verification
from input_pipeline.readers import face_align
from input_pipeline.readers import ijbc as ijbc_reader

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
CHUNK_IMAGES = 4096  # images read, aligned and embedded at a time (IJB-C lists 470k)
CHUNK_COMPARISONS = 1 << 16  # comparisons scored at a time (IJB-C has 15.7M)
# Bootstrap resamples computed together: each of a block's few (block, comparisons scored
# above FAR 1e-1) float64 arrays is then about 80 MB, whatever the number of comparisons.
_BOOTSTRAP_WEIGHTS = 10 ** 7


def _embeddings(context, protocol):
  """(N, D) embeddings of the aligned images, streamed `CHUNK_IMAGES` at a time."""
  parts = []
  for start in range(0, len(protocol.paths), CHUNK_IMAGES):
    stop = start + CHUNK_IMAGES
    aligned = face_align.load_aligned(protocol.paths[start:stop],
                                      protocol.landmarks[start:stop], context.stored_size)
    parts.append(context.embed.images(aligned))
  return np.concatenate(parts)


def _scores(features_of, features, tid1, tid2):
  """Cosine score of each comparison, `CHUNK_COMPARISONS` at a time (bounded memory)."""
  features = np.asarray(features, np.float64)
  return np.concatenate([
      templates.template_scores(features_of, features, tid1[start:start + CHUNK_COMPARISONS],
                                tid2[start:start + CHUNK_COMPARISONS])
      for start in range(0, len(tid1), CHUNK_COMPARISONS)])


def _run(target, context):
  protocol = context.files.read(ijbc_reader.read_ijbc, context.paths[target], target)
  template_list, features = templates.pool_templates(
      _embeddings(context, protocol), protocol.template_ids, protocol.media_ids)
  scores = _scores(template_list, features, protocol.tid1, protocol.tid2)
  far, tar, _ = verification.roc_curve(scores, protocol.genuine)  # one sort for both
  tars = {target: verification.tar_at_far(far, tar, target) for target in FARS}
  chunk = int(np.clip(_BOOTSTRAP_WEIGHTS // (0.15 * len(scores) + 1), 1, 250))
  ci = intervals.tar_at_far_bootstrap(scores, protocol.genuine, protocol.tid1, list(FARS),
                                      chunk=chunk)
  return {target: {"tar_at_far": {str(far): tar for far, tar in tars.items()},
                   "tar_at_far_ci": {str(far): list(ci[far]) for far in FARS},
                   "roc": verification.sampled_roc(far, tar),
                   "num_templates": len(template_list), "num_comparisons": len(scores),
                   "num_images": len(protocol.paths)}}


def _checks(target, context):
  def check():
    protocol = ijbc_reader.read_ijbc(context.paths[target], target)
    face_align.load_aligned(protocol.paths[:1], protocol.landmarks[:1], context.stored_size)
  return [((target,), check)]


def _evaluator(target, default):
  return registry.register(registry.Evaluator(
      name=target, paths={target: default},
      run=lambda context: _run(target, context),
      checks=lambda context: _checks(target, context), table_keys=("tar_at_far",)))


IJBB = _evaluator("ijbb", None)
IJBC = _evaluator("ijbc", "export/ijbc")
