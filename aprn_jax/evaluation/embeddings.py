"""Embedding extraction around any embedding function, and .npy storage.

Every evaluation protocol in this package takes L2-normalised embeddings, which is what
`extract` returns. With `flip=True` an image's embedding is

    l2_normalize(embed(image) + embed(mirrored image))

as insightface evaluates, which makes the embedding invariant to a horizontal flip.
"""
import json
import os
import sys

import numpy as np

from input_pipeline import console, files

# Largest deviation of an embedding's norm from 1 that the evaluation code accepts.
UNIT_NORM_TOLERANCE = 1e-3


def l2_normalize(x, eps=1e-12):
  """Rows of `x` scaled to unit L2 norm (float32); all-zero rows stay zero."""
  x = np.asarray(x, np.float32)
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.maximum(norms, eps)


def check_unit_norm(name, x):
  """Raises a ValueError unless `x` is a 2-D float array of L2-normalised rows."""
  x = np.asarray(x)
  if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{name}: expected a 2-D float array (N, D), got {x.dtype} {x.shape}")
  norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # one pass, no copy; NaN/inf stay NaN/inf
  if not np.all(np.isfinite(norms)):
    raise ValueError(f"{name}: contains NaN or infinite values")
  worst = np.max(np.abs(norms - 1.0), initial=0.0)
  if worst > UNIT_NORM_TOLERANCE:
    raise ValueError(
        f"{name}: rows must be L2-normalised (a row norm differs from 1 by {worst:.3g}); "
        "use aprn_jax.evaluation.embeddings.l2_normalize or extract()")


def _image_batches(images):
  """Yields float32 arrays (b, H, W, 3) from an array or an iterable of images or batches."""
  if isinstance(images, np.ndarray):
    images = [images]
  for item in images:
    item = np.asarray(item)
    if item.ndim == 3:
      item = item[None]
    if item.ndim != 4 or item.shape[-1] != 3:
      raise ValueError(
          f"images: expected (H, W, 3) images or (B, H, W, 3) batches, got shape {item.shape}")
    if not np.issubdtype(item.dtype, np.floating):
      raise ValueError(
          f"images: expected float values in [-1, 1], got dtype {item.dtype} "
          "(scale uint8 images with x / 127.5 - 1)")
    if item.size and (item.min() < -1.0 - 1e-6 or item.max() > 1.0 + 1e-6):
      raise ValueError(
          f"images: values must lie in [-1, 1], got [{item.min():.3g}, {item.max():.3g}]")
    yield item.astype(np.float32, copy=False)


def _fixed_size_batches(images, batch_size):
  """Regroups images into (batch_size, H, W, 3) arrays, zero-padding the last one.

  Yields (batch, num_real): only the first num_real rows are images; a fixed shape lets a
  jitted embedding function compile once.
  """
  pending, num_pending = [], 0
  for chunk in _image_batches(images):
    while len(chunk):
      take = min(batch_size - num_pending, len(chunk))
      pending.append(chunk[:take])
      num_pending += take
      chunk = chunk[take:]
      if num_pending == batch_size:
        yield np.concatenate(pending), batch_size
        pending, num_pending = [], 0
  if num_pending:
    batch = np.concatenate(pending)
    padding = np.zeros((batch_size - num_pending,) + batch.shape[1:], np.float32)
    yield np.concatenate([batch, padding]), num_pending


def _embed_batch(embed_fn, batch):
  out = np.asarray(embed_fn(batch), np.float32)
  if out.ndim != 2 or out.shape[0] != batch.shape[0]:
    raise ValueError(
        f"embed_fn: expected an output of shape ({batch.shape[0]}, D) for a batch of "
        f"{batch.shape[0]} images, got {out.shape}")
  return out


def extract(embed_fn, images, batch_size, flip=True, progress_every_s=10.0):
  """L2-normalised embeddings (N, D) float32 of `images`, in order.

  Args:
    embed_fn: maps a float32 batch (batch_size, H, W, 3) in [-1, 1] to (batch_size, D); it
      always receives exactly batch_size images (the last batch is zero-padded and the
      padding is dropped), so a jitted function compiles once.
    images: an array (N, H, W, 3), or an iterable of images (H, W, 3) and/or batches.
    batch_size: images per call of embed_fn.
    flip: embed(image) + embed(mirrored image) before normalising, as insightface does.
    progress_every_s: seconds between progress lines on stderr (`console.Progress`; a bar
      on a terminal); None for none.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  outputs = []
  progress = None if progress_every_s is None else console.Progress(
      "extract:", None, "images", every_s=progress_every_s, stream=sys.stderr)
  for batch, num_real in _fixed_size_batches(images, batch_size):
    embedding = _embed_batch(embed_fn, batch)
    if flip:
      embedding = embedding + _embed_batch(embed_fn, np.ascontiguousarray(batch[:, :, ::-1]))
    outputs.append(embedding[:num_real])
    if progress:
      progress.advance(num_real)
  if progress:
    progress.close()
  if not outputs:
    raise ValueError("images: no images to embed")
  return l2_normalize(np.concatenate(outputs))


def _paths(path):
  path = os.fspath(path)
  root, suffix = os.path.splitext(path)
  if suffix != ".npy":
    raise ValueError(f"{path}: embedding files must end in .npy")
  return path, root + ".json"


def save(path, embeddings, **meta):
  """Writes `embeddings` to `path` (.npy) and `meta` (JSON-serialisable) next to it (.json)."""
  npy_path, json_path = _paths(path)
  try:
    meta_text = json.dumps(meta, indent=2, sort_keys=True)
  except TypeError as e:
    raise ValueError(f"{json_path}: metadata is not JSON-serialisable: {e}") from e
  folder = os.path.dirname(npy_path)
  if folder:
    files.makedirs(folder, exist_ok=True)
  with files.open(npy_path, "wb") as f:
    np.save(f, np.asarray(embeddings))
  with files.open(json_path, "w") as f:
    f.write(meta_text + "\n")


def load(path):
  """(embeddings, meta) saved by `save`; meta is {} when there is no .json beside the .npy."""
  npy_path, json_path = _paths(path)
  if not files.isfile(npy_path):
    raise FileNotFoundError(f"{npy_path}: no such embedding file")
  with files.open(npy_path, "rb") as f:
    embeddings = np.load(f)
  meta = {}
  if files.isfile(json_path):
    with files.open(json_path) as f:
      meta = json.loads(f.read())
  return embeddings, meta
