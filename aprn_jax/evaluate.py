"""Benchmarks of a recognizer on evaluation sets in their distributed layouts, plus the
embedding-level pose analyses (pose SVM, centroid distance), as one results dict.

Benchmarks (`config.eval.benchmarks`) and where their files are (`config.eval.paths`; an empty
path means the data set's own protocol files, which the synthetic faces provide):
- `cfp_ff`, `cfp_fp`: the CFP tree (`paths.cfp`, holding `Protocol/` and `Data/`); 10-fold
  accuracy, AUC, EER, TAR at FAR 1e-3, folds from CFP's Split folders;
- `lfw`: `paths.lfw` is LFW's `pairs.txt`, `paths.lfw_images` the `<name>/<name>_NNNN.jpg`
  tree; folds = the 10 sets;
- `bins`: insightface packs `<paths.bins>/<name>.bin` for each name in `config.eval.bins`
  (e.g. lfw, cfp_fp, agedb_30); 10 contiguous folds; results under `bin_<name>`;
- `ijba`: IJB-A 1:1 (`paths.ijba` with split1..10, images under `paths.ijba_images`); TAR at
  FAR 1e-1..1e-4, mean and std over the splits;
- `megaface`: MegaFace Challenge 1 style rank-1 and CMC (`paths.megaface_probes` FaceScrub-style
  JSON list, images under `paths.megaface_probe_images`; `paths.megaface_distractors` JSON
  list, or a folder holding one `megaface_features_list.json_<M>_<set>`, images under
  `paths.megaface_distractor_images`);
- `multipie`: per-yaw rank-1 against the frontal gallery (`paths.multipie`).

Images are read at the data set's stored size and go through the same centred crop and resize
as evaluation batches in training (`preprocess.eval_transform`). Embeddings are
L2-normalise(emb(image) + emb(mirrored image)) when `config.eval.flip`.
"""
import glob
import os

import numpy as np
import tensorflow as tf

from aprn_jax import inference
from aprn_jax.analysis import embedding_analyses
from aprn_jax.evaluation import embeddings as embeddings_lib
from aprn_jax.evaluation import identification, templates, verification
from input_pipeline import preprocess
from input_pipeline.readers import cfp, ijba, images as images_lib, insightface_bin, lfw
from input_pipeline.readers import megaface, multipie

BENCHMARKS = ("cfp_ff", "cfp_fp", "lfw", "bins", "ijba", "megaface", "multipie")
VERIFICATION_FIELDS = ("accuracy", "accuracy_std", "accuracy_sem", "auc", "eer", "tar_at_far")

# Each path option of config.eval.paths, and where the data set's own files are below its
# protocol root (synthetic faces: `protocols` and `export`).
DEFAULT_PATHS = {
    "cfp": "cfp", "multipie": "multipie", "lfw": "export/lfw/pairs.txt",
    "lfw_images": "export/lfw/images", "bins": "export",
    "ijba": "export/ijba/protocol", "ijba_images": "export/ijba/images",
    "megaface_probes": "export/megaface/facescrub_features_list.json",
    "megaface_probe_images": "export/megaface/facescrub",
    "megaface_distractors": "export/megaface",
    "megaface_distractor_images": "export/megaface/megaface",
}


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
      self.cache.update(zip(missing, self.images(
          images_lib.load_images(missing, self.data.stored_size))))
    return np.stack([self.cache[p] for p in paths])

  def images(self, raw):
    """Embeddings of uint8 (N, stored, stored, 3) images."""
    inputs = network_inputs(raw, self.config.data.crop_size, self.config.data.image_size)
    return embeddings_lib.extract(self.embed_fn, inputs, self.config.eval.batch_size,
                                  flip=self.config.eval.flip)


def _pair_results(emb, pairs):
  result = verification.evaluate(emb[pairs.index_a], emb[pairs.index_b], pairs.is_same,
                                 pairs.fold)
  return {k: v for k, v in result.as_dict().items() if k in VERIFICATION_FIELDS}


def _verification(embed, root, protocol):
  pairs = cfp.read_cfp(root, protocol)
  return _pair_results(embed(pairs.paths), pairs)


def _lfw(embed, pairs_file, image_root):
  pairs = lfw.read_lfw(pairs_file, image_root)
  return _pair_results(embed(pairs.paths), pairs)


def _bin(embed, path, stored_size):
  pack = insightface_bin.read_bin(path, stored_size)
  return _pair_results(embed.images(pack.images), pack.pairs)


def _ijba(embed, protocol_root, image_root):
  per_split = []
  for split in ijba.read_ijba(protocol_root, image_root):
    per_split.append(templates.verify_split(
        embed(split.paths), split.template_ids, split.media_ids, split.tid1, split.tid2,
        split.genuine))
  summary = templates.summarize_splits(per_split)
  return {"tar_at_far": {str(far): mean for far, (mean, _) in summary.items()},
          "tar_at_far_std": {str(far): std for far, (_, std) in summary.items()},
          "num_splits": len(per_split)}


def _distractor_list(path):
  """`path`, or the one MegaFace distractor list in the folder `path`."""
  if not os.path.isdir(path):
    return path
  found = sorted(glob.glob(os.path.join(path, "megaface_features_list.json_*")))
  if len(found) != 1:
    raise ValueError(f"config.eval.paths.megaface_distractors: {path} holds {len(found)} "
                     f"distractor lists (megaface_features_list.json_*); name one file")
  return found[0]


def _megaface(embed, paths):
  probes = megaface.read_probe_list(paths["megaface_probes"], paths["megaface_probe_images"])
  distractors = megaface.read_distractor_list(_distractor_list(paths["megaface_distractors"]),
                                              paths["megaface_distractor_images"])
  result = identification.identify_with_distractors(embed(probes.paths), probes.labels,
                                                    embed(distractors))
  return {"rank1": result.rank1,
          "cmc": {str(rank): float(v) for rank, v in enumerate(result.cmc, 1)},
          "num_distractors": len(distractors), "num_pairs": result.num_pairs}


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


def benchmark_paths(config, data):
  """config.eval.paths with empty entries replaced by the data set's own files."""
  given = dict(config.eval.get("paths", {}))
  unknown = sorted(set(given) - set(DEFAULT_PATHS))
  if unknown:
    raise ValueError(f"config.eval.paths has unknown entries {unknown}; known: "
                     f"{sorted(DEFAULT_PATHS)}")
  paths = {}
  for name, default in DEFAULT_PATHS.items():
    if given.get(name):
      paths[name] = os.path.abspath(os.path.expanduser(given[name]))
    elif data.protocol_root:
      paths[name] = os.path.join(data.protocol_root, default)
    else:
      paths[name] = None
  return paths


# The config.eval.paths entries each benchmark reads.
_NEEDS = {"cfp_ff": ("cfp",), "cfp_fp": ("cfp",), "lfw": ("lfw", "lfw_images"),
          "bins": ("bins",), "ijba": ("ijba", "ijba_images"),
          "megaface": ("megaface_probes", "megaface_probe_images", "megaface_distractors",
                       "megaface_distractor_images"),
          "multipie": ("multipie",)}


def checked_paths(config, data):
  """`benchmark_paths`, after checking that every configured benchmark has its files named.

  Runs before training too, so a missing path stops a run at its start, not at its end.
  """
  paths = benchmark_paths(config, data)
  for benchmark in config.eval.benchmarks:
    if benchmark not in BENCHMARKS:
      raise ValueError(f"config.eval.benchmarks holds {benchmark!r}; allowed: {BENCHMARKS}")
    for name in _NEEDS[benchmark]:
      if paths[name] is None:
        raise ValueError(f"config.eval.benchmarks holds {benchmark!r} but config.eval.paths."
                         f"{name} is empty and the data set has no files of its own for it")
  return paths


def evaluate(config, data, recognizer, variables):
  """{benchmark: results} for config.eval.benchmarks (see the module docstring)."""
  paths = checked_paths(config, data)
  embed = Embedder(config, data, recognizer, variables)
  results = {}
  for name in config.eval.benchmarks:
    if name in ("cfp_ff", "cfp_fp"):
      results[name] = _verification(embed, paths["cfp"], name[-2:].upper())
    elif name == "lfw":
      results[name] = _lfw(embed, paths["lfw"], paths["lfw_images"])
    elif name == "bins":
      for pack in config.eval.bins:
        results[f"bin_{pack}"] = _bin(embed, os.path.join(paths["bins"], f"{pack}.bin"),
                                      data.stored_size)
    elif name == "ijba":
      results[name] = _ijba(embed, paths["ijba"], paths["ijba_images"])
    elif name == "megaface":
      results[name] = _megaface(embed, paths)
    elif name == "multipie":
      results[name] = _per_pose(embed, paths["multipie"])
  if {"cfp_ff", "cfp_fp"} & set(config.eval.benchmarks):
    results["pose_analyses"] = _pose_analyses(embed, paths["cfp"])
  return results


def table(results_by_phase):
  """A plain-text table: one row per figure, one column per phase."""
  phases = list(results_by_phase)
  rows = []
  first = results_by_phase[phases[0]]
  for bench, values in first.items():
    for key, value in values.items():
      if key == "cmc" or key.endswith("_std") and isinstance(value, dict):
        continue  # in the JSON only
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
