"""Benchmarks of a recognizer on the protocol files of a data set (CFP, Multi-PIE style), plus
the embedding-level pose analyses (pose SVM, centroid distance), as one results dict.

Images are read at the data set's stored size and go through the same centred crop and resize
as evaluation batches in training (`preprocess.eval_transform`). Embeddings are
L2-normalise(emb(image) + emb(mirrored image)) when `config.eval.flip`.
"""
import os

import numpy as np
import tensorflow as tf

from aprn_jax import inference
from aprn_jax.analysis import embedding_analyses
from aprn_jax.evaluation import embeddings as embeddings_lib
from aprn_jax.evaluation import identification, verification
from input_pipeline import preprocess
from input_pipeline.readers import cfp, images as images_lib, multipie

BENCHMARKS = ("cfp_ff", "cfp_fp", "multipie")


def network_inputs(images, crop_size, image_size):
  """uint8 (N, H, W, 3) -> float32 (N, S, S, 3) in [-1, 1], centred crop + resize."""
  dataset = tf.data.Dataset.from_tensor_slices({"image": images}).map(
      lambda ex: preprocess.eval_transform(ex, crop_size=crop_size, image_size=image_size))
  return np.stack([ex["image"] for ex in dataset.as_numpy_iterator()])


class Embedder:
  """Embeds image files once each (cached by path) with a fixed recognizer."""

  def __init__(self, config, data, recognizer, variables):
    self.config, self.data = config, data
    self.embed_fn = inference.make_embed_fn(recognizer, variables)
    self.cache = {}

  def __call__(self, paths):
    missing = [p for p in dict.fromkeys(paths) if p not in self.cache]
    if missing:
      raw = images_lib.load_images(missing, self.data.stored_size)
      inputs = network_inputs(raw, self.config.data.crop_size, self.config.data.image_size)
      out = embeddings_lib.extract(self.embed_fn, inputs, self.config.eval.batch_size,
                                   flip=self.config.eval.flip)
      self.cache.update(zip(missing, out))
    return np.stack([self.cache[p] for p in paths])


def _verification(embed, root, protocol):
  pairs = cfp.read_cfp(root, protocol)
  emb = embed(pairs.paths)
  result = verification.evaluate(emb[pairs.index_a], emb[pairs.index_b], pairs.is_same,
                                 pairs.fold)
  return {k: v for k, v in result.as_dict().items()
          if k in ("accuracy", "accuracy_std", "accuracy_sem", "auc", "eer", "tar_at_far")}


def _per_pose(embed, root):
  lists = multipie.read_multipie(root)
  result = identification.rank1_by_pose(
      embed(lists.gallery_paths), lists.gallery_subjects, embed(lists.probe_paths),
      lists.probe_subjects, lists.probe_yaw_bin)
  return {"rank1": result.overall,
          "rank1_by_yaw": {str(int(k)): float(v) for k, v in result.per_yaw.items()}}


def _pose_analyses(embed, root):
  """Frontal-vs-profile SVM and centroid distance on the CFP images (the paper's CFP set-up)."""
  pairs = cfp.read_cfp(root, "FP")
  emb = embed(pairs.paths)
  is_profile = np.array(["/profile/" in p.replace(os.sep, "/") for p in pairs.paths])
  identity = np.array([os.path.basename(os.path.dirname(os.path.dirname(p)))
                       for p in pairs.paths])
  # The paper's 5000 / 2000 split of CFP's 7000 images, scaled down for smaller sets.
  num_train = min(5000, len(emb) * 5 // 7)
  train_idx, test_idx = embedding_analyses.sample_train_test(
      len(emb), num_train=num_train, num_test=min(2000, len(emb) - num_train))
  svm = embedding_analyses.pose_svm(emb, is_profile, train_idx, test_idx)
  mean, std = embedding_analyses.centroid_distance(emb, np.unique(identity,
                                                                  return_inverse=True)[1])
  return {"pose_svm_train_accuracy": svm["train_accuracy"],
          "pose_svm_val_accuracy": svm["val_accuracy"],
          "centroid_distance_mean": mean, "centroid_distance_std": std}


def evaluate(config, data, recognizer, variables):
  """{benchmark: results} for config.eval.benchmarks on the data set's protocol files."""
  for name in config.eval.benchmarks:
    if name not in BENCHMARKS:
      raise ValueError(f"config.eval.benchmarks holds {name!r}; allowed: {BENCHMARKS}")
  embed = Embedder(config, data, recognizer, variables)
  cfp_root = os.path.join(data.protocol_root, "cfp")
  results = {}
  for name in config.eval.benchmarks:
    if name in ("cfp_ff", "cfp_fp"):
      results[name] = _verification(embed, cfp_root, name[-2:].upper())
    elif name == "multipie":
      results[name] = _per_pose(embed, os.path.join(data.protocol_root, "multipie"))
  if {"cfp_ff", "cfp_fp"} & set(config.eval.benchmarks):
    results["pose_analyses"] = _pose_analyses(embed, cfp_root)
  return results


def table(results_by_phase):
  """A plain-text table: one row per figure, one column per phase."""
  phases = list(results_by_phase)
  rows = []
  first = results_by_phase[phases[0]]
  for bench, values in first.items():
    for key, value in values.items():
      if isinstance(value, dict):
        for sub in value:
          rows.append((f"{bench} {key} {sub}", [results_by_phase[p][bench][key][sub]
                                                 for p in phases]))
      elif key in ("accuracy", "rank1", "auc", "eer") or bench == "pose_analyses":
        rows.append((f"{bench} {key}", [results_by_phase[p][bench][key] for p in phases]))
  width = max(len(name) for name, _ in rows)
  lines = [" " * width + "".join(f"{p:>12}" for p in phases)]
  for name, values in rows:
    lines.append(name.ljust(width) + "".join(f"{v:>12.4f}" for v in values))
  return "\n".join(lines)
