"""Template-based 1:1 verification (IJB-A; the same pooling as insightface's IJB-B/C code).

A template's feature: average the embeddings within each media (same template and media id,
e.g. the frames of one video or a single photo), sum those media averages, L2-normalise. So a
video counts once however many frames it has. A comparison's score is the cosine of the two
template features. TAR at each target FAR is read off that split's ROC curve as defined in
`verification` (largest TAR with FAR <= target; insightface's IJB code takes the point whose
FAR is nearest the target instead). Splits are summarised by mean and std (ddof=0).
"""
import numpy as np

from aprn_jax.evaluation import verification

DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4)


def _group_sums(values, group_index, num_groups):
  """Row sums of `values` per group; every group in range(num_groups) must be non-empty."""
  order = np.argsort(group_index, kind="stable")
  starts = np.searchsorted(group_index[order], np.arange(num_groups))
  return np.add.reduceat(values[order], starts, axis=0)


def pool_templates(embeddings, template_ids, media_ids):
  """(template ids, sorted and unique; their L2-normalised features (T, D) float32)."""
  embeddings = np.asarray(embeddings, np.float64)
  if embeddings.ndim != 2 or not len(embeddings) or not np.all(np.isfinite(embeddings)):
    raise ValueError(
        f"embeddings: expected a finite, non-empty (N, D) array, got {embeddings.shape}")
  template_ids, media_ids = np.asarray(template_ids), np.asarray(media_ids)
  for name, ids in (("template_ids", template_ids), ("media_ids", media_ids)):
    if ids.shape != (len(embeddings),):
      raise ValueError(f"{name}: expected shape ({len(embeddings)},), got {ids.shape}")
  templates, template_index = np.unique(template_ids, return_inverse=True)
  media, media_index = np.unique(media_ids, return_inverse=True)
  keys, group_index = np.unique(template_index * len(media) + media_index,
                                return_inverse=True)
  group_sizes = np.bincount(group_index)
  media_means = _group_sums(embeddings, group_index, len(keys)) / group_sizes[:, None]
  features = _group_sums(media_means, keys // len(media), len(templates))
  norms = np.linalg.norm(features, axis=1, keepdims=True)
  return templates, (features / np.maximum(norms, 1e-12)).astype(np.float32)


def template_scores(templates, features, tid1, tid2):
  """Cosine score of each comparison (tid1[i], tid2[i]) between pooled templates."""
  rows = []
  for name, tids in (("tid1", tid1), ("tid2", tid2)):
    tids = np.asarray(tids)
    index = np.minimum(np.searchsorted(templates, tids), len(templates) - 1)
    missing = templates[index] != tids
    if np.any(missing):
      raise ValueError(
          f"{name}: template {tids[missing][0]} is compared but has no images "
          f"({int(missing.sum())} comparisons affected)")
    rows.append(index)
  if rows[0].shape != rows[1].shape:
    raise ValueError(f"tid1 {rows[0].shape} and tid2 {rows[1].shape} differ in shape")
  features = np.asarray(features, np.float64)
  return np.einsum("ij,ij->i", features[rows[0]], features[rows[1]])


def split_scores(embeddings, template_ids, media_ids, tid1, tid2):
  """Cosine score of each comparison of one split from per-image embeddings."""
  templates, features = pool_templates(embeddings, template_ids, media_ids)
  return template_scores(templates, features, tid1, tid2)


def verify_split(embeddings, template_ids, media_ids, tid1, tid2, genuine, fars=DEFAULT_FARS):
  """{target FAR: TAR} of one split from per-image embeddings and its comparisons."""
  scores = split_scores(embeddings, template_ids, media_ids, tid1, tid2)
  return tar_at_fars(scores, genuine, fars)


def tar_at_fars(scores, genuine, fars=DEFAULT_FARS):
  """{target FAR: TAR} of scored comparisons."""
  far, tar, _ = verification.roc_curve(scores, genuine)
  return {target: verification.tar_at_far(far, tar, target) for target in fars}


def summarize_splits(split_results):
  """{target FAR: (mean TAR, std TAR)} over the per-split results of `verify_split`."""
  split_results = list(split_results)
  if not split_results:
    raise ValueError("summarize_splits: no split results")
  fars = split_results[0].keys()
  if any(result.keys() != fars for result in split_results):
    raise ValueError("summarize_splits: the splits were evaluated at different FARs")
  summary = {}
  for target in fars:
    tars = np.array([result[target] for result in split_results])
    summary[target] = (float(tars.mean()), float(tars.std()))
  return summary
