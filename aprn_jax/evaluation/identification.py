"""Closed-set identification: MegaFace-style rank-1/CMC with distractors, per-pose rank-1.

MegaFace Challenge 1 (`identify_with_distractors`): for each probe identity with K >= 2
images, each image in turn is the gallery image g, put among the distractors, and each of the
other K - 1 images p is a probe. The rank of g for p is 1 + the number of distractors whose
similarity to p is >= sim(p, g) (a tie counts against the probe). So p is right at rank 1
exactly when sim(p, g) beats p's best similarity to every distractor; CMC(r) is the fraction
of (g, p) pairs with rank <= r. Similarity is the cosine of L2-normalised float32 embeddings.

Distractors are scored in chunks of `chunk_size` rows, keeping each probe's top `max_rank`
distractor similarities, so probes x distractors never exists at once (1M x 512 distractors
can even be a np.memmap). The results do not depend on chunk_size, exactly: BLAS float32
products (whose rounding depends on matrix shapes) only pick candidates, within a proven
rounding bound of the current top list, and every similarity that is kept or compared is
recomputed by one fixed routine (`_pair_similarities`) that depends only on the two vectors.

Multi-PIE (`rank1_by_pose`): one gallery embedding per subject; each probe is assigned the
subject of its most similar gallery embedding (cosine); rank-1 accuracy per yaw bin and over
all probes.
"""
import dataclasses

import numpy as np

from aprn_jax.evaluation import embeddings as embeddings_lib

DEFAULT_CHUNK_SIZE = 16384
DEFAULT_MAX_RANK = 10
_PAIR_BATCH = 4096


def _pair_similarities(x, x_rows, y, y_rows):
  """Dot products x[x_rows[i]] . y[y_rows[i]] (float64), each a function of its two vectors.

  Products of float32 numbers are exact in float64 and numpy's pairwise sum of a contiguous
  row follows an order fixed by the row length, so a pair's value never depends on which
  other pairs are computed with it.
  """
  out = np.empty(len(x_rows))
  for start in range(0, len(x_rows), _PAIR_BATCH):
    stop = start + _PAIR_BATCH
    products = x[x_rows[start:stop]].astype(np.float64) * y[y_rows[start:stop]]
    out[start:stop] = products.sum(axis=1)
  return out


def _float32_dot_error_bound(dim):
  """Bound on |float32 dot - exact dot| for vectors that passed the unit-norm check.

  Any summation order: |error| <= gamma_dim * sum |x_i y_i| <= gamma_dim * |x| |y|, with
  gamma_n = n u / (1 - n u) and u = 2^-24; norms are at most 1 + tolerance, doubled here to
  cover the rounding of the check itself.
  """
  unit_roundoff = 2.0**-24
  gamma = dim * unit_roundoff / (1.0 - dim * unit_roundoff)
  return gamma * (1.0 + 2.0 * embeddings_lib.UNIT_NORM_TOLERANCE)**2


def _merge_top(top, rows, values):
  """Each row's `top.shape[1]` largest of its old top values and the new (row, value)s."""
  num_rows, k = top.shape
  all_rows = np.concatenate([np.repeat(np.arange(num_rows), k), rows])
  all_values = np.concatenate([top.ravel(), values])
  order = np.lexsort((-all_values, all_rows))
  all_rows, all_values = all_rows[order], all_values[order]
  position = np.arange(len(all_rows)) - np.searchsorted(all_rows, np.arange(num_rows))[all_rows]
  keep = position < k
  merged = np.empty_like(top)
  merged[all_rows[keep], position[keep]] = all_values[keep]
  return merged


def distractor_top_similarities(probes, distractors, top_k=DEFAULT_MAX_RANK,
                                chunk_size=DEFAULT_CHUNK_SIZE):
  """(N, top_k) float64: each probe's top_k similarities to the distractors, descending.

  Rows are padded with -inf when there are fewer than top_k distractors. `distractors` may
  be any array-like with slicing (e.g. np.memmap); it is read chunk_size rows at a time.
  """
  probes = np.asarray(probes, np.float32)
  embeddings_lib.check_unit_norm("probes", probes)
  if not hasattr(distractors, "shape"):
    distractors = np.asarray(distractors, np.float32)
  if distractors.ndim != 2 or distractors.shape[1] != probes.shape[1]:
    raise ValueError(
        f"distractors: expected shape (M, {probes.shape[1]}), got {distractors.shape}")
  if top_k < 1 or chunk_size < 1:
    raise ValueError(f"top_k ({top_k}) and chunk_size ({chunk_size}) must be positive")
  margin = 2.0 * _float32_dot_error_bound(probes.shape[1])
  top = np.full((len(probes), top_k), -np.inf)
  for start in range(0, len(distractors), chunk_size):
    chunk = np.asarray(distractors[start:start + chunk_size], np.float32)
    embeddings_lib.check_unit_norm(f"distractors[{start}:{start + len(chunk)}]", chunk)
    approx = probes @ chunk.T
    floor = top[:, -1]
    if len(chunk) > top_k and np.isneginf(floor).any():
      floor = np.maximum(floor, np.partition(approx, -top_k, axis=1)[:, -top_k])
    rows, cols = np.divmod(np.flatnonzero(approx >= (floor - margin)[:, None]), len(chunk))
    top = _merge_top(top, rows, _pair_similarities(probes, rows, chunk, cols))
  return top


@dataclasses.dataclass(frozen=True)
class IdentificationResult:
  """rank1 = cmc[0]; cmc[r - 1]: fraction of (gallery, probe) pairs with rank <= r.

  pair_hits: (num_pairs,) bool, the pairs right at rank 1; pair_labels: their identity (for
  intervals that resample identities)."""
  rank1: float
  cmc: np.ndarray
  num_pairs: int
  pair_hits: np.ndarray = None
  pair_labels: np.ndarray = None


def _same_identity_pairs(labels):
  """(probe, gallery) index arrays of all ordered same-label pairs of distinct images."""
  order = np.argsort(labels, kind="stable")
  _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
  probe_rows, gallery_rows = [], []
  for start, count in zip(starts, counts):
    if count < 2:
      continue
    members = order[start:start + count]
    probe, gallery = np.meshgrid(members, members, indexing="ij")
    distinct = probe != gallery
    probe_rows.append(probe[distinct])
    gallery_rows.append(gallery[distinct])
  if not probe_rows:
    raise ValueError("probe_labels: no identity has 2 or more images")
  return np.concatenate(probe_rows), np.concatenate(gallery_rows)


def identify_with_distractors(probes, probe_labels, distractors, max_rank=DEFAULT_MAX_RANK,
                              chunk_size=DEFAULT_CHUNK_SIZE):
  """MegaFace Challenge 1 rank-1 and CMC up to max_rank (see the module docstring).

  Args:
    probes: (N, D) L2-normalised embeddings of the probe set (e.g. FaceScrub).
    probe_labels: (N,) identity of each probe image.
    distractors: (M, D) L2-normalised distractor embeddings (array or np.memmap).
    max_rank: the CMC is computed for ranks 1..max_rank.
    chunk_size: distractor rows scored at once; working memory about N * chunk_size * 9
      bytes (float32 similarities, a mask, and on the first chunk a partition copy).
  """
  probes = np.asarray(probes, np.float32)
  probe_labels = np.asarray(probe_labels)
  if probe_labels.shape != (len(probes),):
    raise ValueError(f"probe_labels: expected shape ({len(probes)},), got {probe_labels.shape}")
  top = distractor_top_similarities(probes, distractors, max_rank, chunk_size)
  probe_rows, gallery_rows = _same_identity_pairs(probe_labels)
  genuine = _pair_similarities(probes, probe_rows, probes, gallery_rows)
  beaten_by = (top[probe_rows] >= genuine[:, None]).sum(axis=1)
  cmc = (beaten_by[:, None] < np.arange(1, max_rank + 1)).mean(axis=0)
  return IdentificationResult(rank1=float(cmc[0]), cmc=cmc, num_pairs=len(probe_rows),
                              pair_hits=beaten_by == 0, pair_labels=probe_labels[probe_rows])


@dataclasses.dataclass(frozen=True)
class PoseRank1Result:
  """Rank-1 accuracy and probe count per yaw bin (sorted), and over all probes; `correct`:
  (num_probes,) bool, each probe's outcome."""
  per_yaw: dict
  counts: dict
  overall: float
  correct: np.ndarray = None


def rank1_by_pose(gallery, gallery_ids, probes, probe_ids, probe_yaws):
  """Multi-PIE style rank-1: argmax cosine over the gallery, accuracy per yaw bin."""
  gallery = np.asarray(gallery, np.float32)
  probes = np.asarray(probes, np.float32)
  embeddings_lib.check_unit_norm("gallery", gallery)
  embeddings_lib.check_unit_norm("probes", probes)
  gallery_ids, probe_ids = np.asarray(gallery_ids), np.asarray(probe_ids)
  probe_yaws = np.asarray(probe_yaws)
  if gallery_ids.shape != (len(gallery),):
    raise ValueError(f"gallery_ids: expected shape ({len(gallery)},), got {gallery_ids.shape}")
  for name, values in (("probe_ids", probe_ids), ("probe_yaws", probe_yaws)):
    if values.shape != (len(probes),):
      raise ValueError(f"{name}: expected shape ({len(probes)},), got {values.shape}")
  if gallery.shape[1] != probes.shape[1]:
    raise ValueError(f"gallery {gallery.shape} and probes {probes.shape} differ in dimension")
  unknown = ~np.isin(probe_ids, gallery_ids)
  if np.any(unknown):
    raise ValueError(
        f"probe_ids: subject {probe_ids[unknown][0]} has no gallery image "
        f"({int(unknown.sum())} probes affected)")
  predicted = gallery_ids[np.argmax(probes @ gallery.T, axis=1)]
  correct = predicted == probe_ids
  yaws, yaw_index = np.unique(probe_yaws, return_inverse=True)
  counts = np.bincount(yaw_index, minlength=len(yaws))
  hits = np.bincount(yaw_index, weights=correct, minlength=len(yaws))
  return PoseRank1Result(
      per_yaw={yaw.item(): float(h / n) for yaw, h, n in zip(yaws, hits, counts)},
      counts={yaw.item(): int(n) for yaw, n in zip(yaws, counts)},
      overall=float(correct.mean()),
      correct=correct,
  )
