"""Benchmarks of a recognizer on evaluation sets in their distributed layouts, plus the
embedding-level pose analyses (pose SVM, centroid distance), as one results dict.

Benchmarks (`config.eval.benchmarks`) and where their files are (`config.eval.paths`; an empty
path means the data set's own protocol files, which the synthetic faces provide):
- `cfp_ff`, `cfp_fp`: the CFP tree (`paths.cfp`, holding `Protocol/` and `Data/`); 10-fold
  accuracy, AUC, EER, TAR at FAR 1e-3, folds from CFP's Split folders;
- `lfw`: `paths.lfw` is LFW's `pairs.txt`, `paths.lfw_images` the `<name>/<name>_NNNN.jpg`
  tree; folds = the 10 sets;
- `bins`: insightface packs `<paths.bins>/<name>.bin` for each name in `config.eval.bins`
  (e.g. lfw, cfp_fp, agedb_30); 10 contiguous folds; results under `bin_<name>`; a pack of
  fewer than 10 pairs or of one kind of pair only gets the accuracy at the best threshold over
  all its pairs and a `note` naming the file (an empty one: `skipped`);
- `ijba`: IJB-A 1:1 (`paths.ijba` with split1..10, images under `paths.ijba_images`); TAR at
  FAR 1e-1..1e-4, mean and std over the splits;
- `megaface`: MegaFace Challenge 1 style rank-1 and CMC (`paths.megaface_probes` FaceScrub-style
  JSON list, images under `paths.megaface_probe_images`; `paths.megaface_distractors` JSON
  list, or a folder holding one `megaface_features_list.json_<M>_<set>`, images under
  `paths.megaface_distractor_images`);
- `multipie`: per-yaw rank-1 against the frontal gallery (`paths.multipie`).

Before the first training step (`checked_paths`, which main.py runs once the data is built)
every input the configured benchmarks read is opened with the reader evaluation uses: list
files parsed, listed images found, the first image of each list and each .bin pack's pickle,
layout and first image decoded; a problem stops the run naming the config.eval.paths option
and the file.

Images are read at the data set's stored size and go through the same centred crop and resize
as evaluation batches in training (`preprocess.eval_transform`). Embeddings are
L2-normalise(emb(image) + emb(mirrored image)) when `config.eval.flip`; an image is embedded
once however many benchmark copies hold its pixels.

Every accuracy, TAR and rank-1 comes with its 95% confidence interval (`intervals`), as
`<figure>_ci` = [low, high] beside it: k-fold accuracy by the t interval over folds; TAR at
FAR, rank-1 and per-yaw rank-1 by the percentile bootstrap over identities (CFP pairs belong
to the person of their first image, LFW's likewise; .bin packs name no people, so there each
pair is resampled alone); IJB-A's mean over splits by the same bootstrap, people drawn once
for all splits; the pose SVM's validation accuracy by Wilson's interval.
"""
import glob
import hashlib
import os

import numpy as np
import tensorflow as tf

from aprn_jax import inference
from aprn_jax.analysis import embedding_analyses
from aprn_jax.evaluation import embeddings as embeddings_lib
from aprn_jax.evaluation import identification, intervals, templates, verification
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
  if not len(images):
    return np.zeros((0, image_size, image_size, 3), np.float32)
  dataset = tf.data.Dataset.from_tensor_slices({"image": images}).map(
      lambda ex: preprocess.eval_transform(ex, crop_size=crop_size, image_size=image_size),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(1024)
  return np.concatenate([batch["image"] for batch in
                         preprocess.fixed_parallelism(dataset).as_numpy_iterator()])


def _digest(data):
  return hashlib.blake2b(data, digest_size=16).digest()


class Embedder:
  """Embeds images with a fixed recognizer: each path is read once, and each distinct image
  is decoded and embedded once (files by their bytes, pixels by their values), so the
  benchmark copies of one image (LFW, IJB-A, MegaFace layouts of the same faces) share it."""

  def __init__(self, config, data, recognizer, variables):
    self.config, self.data = config, data
    self.embed_fn = inference.make_embed_fn(recognizer, variables)
    self.by_path, self.by_key = {}, {}

  def __call__(self, paths):
    missing = [p for p in dict.fromkeys(paths) if p not in self.by_path]
    if missing:
      contents = {p: images_lib.read_file_bytes(p) for p in missing}
      keys = {p: b"file" + _digest(data) for p, data in contents.items()}
      new = list({keys[p]: p for p in missing if keys[p] not in self.by_key}.values())
      if new:
        raw = images_lib.decode_images([contents[p] for p in new], self.data.stored_size,
                                       [f"image file {p}" for p in new])
        self.by_key.update(zip((keys[p] for p in new), self._embed(raw)))
      self.by_path.update((p, self.by_key[keys[p]]) for p in missing)
    return np.stack([self.by_path[p] for p in paths])

  def images(self, raw):
    """Embeddings of uint8 (N, stored, stored, 3) images."""
    raw = np.asarray(raw)
    keys = [b"pixels" + _digest(image.tobytes()) for image in raw]
    new = list({key: i for i, key in enumerate(keys) if key not in self.by_key}.values())
    if new:
      self.by_key.update(zip((keys[i] for i in new), self._embed(raw[new])))
    return np.stack([self.by_key[key] for key in keys])

  def _embed(self, raw):
    inputs = network_inputs(raw, self.config.data.crop_size, self.config.data.image_size)
    return embeddings_lib.extract(self.embed_fn, inputs, self.config.eval.batch_size,
                                  flip=self.config.eval.flip)


class BenchmarkFiles:
  """The protocol files of the benchmarks, each parsed once however many phases use them."""

  def __init__(self):
    self._parsed = {}

  def read(self, reader, *args):
    key = (reader.__module__, reader.__qualname__, args)
    if key not in self._parsed:
      self._parsed[key] = reader(*args)
    return self._parsed[key]


def _pair_results(emb, pairs, clusters):
  """Verification figures of `pairs` with their intervals; clusters: (P,) the person each
  pair belongs to, resampled together by the TAR bootstrap."""
  distances = verification.squared_distances(emb[pairs.index_a], emb[pairs.index_b])
  result = verification.evaluate_distances(distances, pairs.is_same, pairs.fold)
  out = {k: v for k, v in result.as_dict().items() if k in VERIFICATION_FIELDS}
  out["accuracy_ci"] = list(intervals.t_interval(result.fold_accuracies))
  tar_ci = intervals.tar_at_far_bootstrap(-distances, pairs.is_same, clusters,
                                          list(result.tar_at_far))
  out["tar_at_far_ci"] = {f"{far:g}": list(ci) for far, ci in tar_ci.items()}
  return out


def _person_of_first_image(pairs, person_of_path):
  return np.array([person_of_path(pairs.paths[i]) for i in pairs.index_a])


def _cfp_person(path):  # .../Data/Images/<person>/<frontal|profile>/<k>.jpg
  return os.path.basename(os.path.dirname(os.path.dirname(path)))


def _verification(embed, files, root, protocol):
  pairs = files.read(cfp.read_cfp, root, protocol)
  return _pair_results(embed(pairs.paths), pairs, _person_of_first_image(pairs, _cfp_person))


def _lfw(embed, files, pairs_file, image_root):
  pairs = files.read(lfw.read_lfw, pairs_file, image_root)
  person = lambda path: os.path.basename(os.path.dirname(path))  # <name>/<name>_NNNN.jpg
  return _pair_results(embed(pairs.paths), pairs, _person_of_first_image(pairs, person))


def _bin(embed, files, path, stored_size):
  """The pack's figures; a pack too small for the folds, or without both kinds of pair, gets
  the accuracy at the best threshold over all its pairs and a `note`, an empty one a
  `skipped` message (printed too), so the other benchmarks still run."""
  pack = files.read(insightface_bin.read_bin, path, stored_size)
  pairs = pack.pairs
  num_pairs, num_genuine = len(pairs.is_same), int(pairs.is_same.sum())
  lacking = []
  if len(np.unique(pairs.fold)) < 2:
    lacking.append(f"{num_pairs} pairs, fewer than the {insightface_bin.NUM_FOLDS} folds")
  if num_genuine in (0, num_pairs):
    lacking.append(f"{num_genuine} genuine and {num_pairs - num_genuine} impostor pairs")
  if not lacking:
    return _pair_results(embed.images(pack.images), pairs, np.arange(num_pairs))
  if not num_pairs:
    message = f"{path}: no pairs; benchmark skipped"
    print(f"warning: {message}", flush=True)
    return {"skipped": message}
  emb = embed.images(pack.images)
  distances = verification.squared_distances(emb[pairs.index_a], emb[pairs.index_b])
  accuracy, threshold = verification.best_threshold_accuracy(distances, pairs.is_same)
  note = (f"{path}: {' and '.join(lacking)}, so no k-fold accuracy, AUC, EER or TAR; "
          f"accuracy is at the best threshold over all pairs (chosen on them: optimistic)")
  print(f"warning: {note}", flush=True)
  return {"accuracy": accuracy, "threshold": threshold, "num_pairs": num_pairs,
          "num_genuine": num_genuine, "note": note}


def _ijba(embed, files, protocol_root, image_root):
  per_split, scored = [], []
  for split in files.read(ijba.read_ijba, protocol_root, image_root):
    scores = templates.split_scores(embed(split.paths), split.template_ids, split.media_ids,
                                    split.tid1, split.tid2)
    per_split.append(templates.tar_at_fars(scores, split.genuine))
    subject_of = dict(zip(split.templates.tolist(), split.template_subjects.tolist()))
    scored.append((scores, split.genuine, np.array([subject_of[t] for t in split.tid1.tolist()])))
  summary = templates.summarize_splits(per_split)
  ci = intervals.split_mean_tar_bootstrap(scored, list(summary))
  return {"tar_at_far": {str(far): mean for far, (mean, _) in summary.items()},
          "tar_at_far_std": {str(far): std for far, (_, std) in summary.items()},
          "tar_at_far_ci": {str(far): list(ci[far]) for far in summary},
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


def _megaface(embed, files, paths):
  probes = files.read(megaface.read_probe_list, paths["megaface_probes"],
                      paths["megaface_probe_images"])
  distractors = files.read(megaface.read_distractor_list,
                           _distractor_list(paths["megaface_distractors"]),
                           paths["megaface_distractor_images"])
  result = identification.identify_with_distractors(embed(probes.paths), probes.labels,
                                                    embed(distractors))
  return {"rank1": result.rank1,
          "rank1_ci": list(intervals.ratio_bootstrap(result.pair_hits, result.pair_labels)),
          "cmc": {str(rank): float(v) for rank, v in enumerate(result.cmc, 1)},
          "num_distractors": len(distractors), "num_pairs": result.num_pairs}


def _per_pose(embed, files, root):
  lists = files.read(multipie.read_multipie, root)
  result = identification.rank1_by_pose(
      embed(lists.gallery_paths), lists.gallery_subjects, embed(lists.probe_paths),
      lists.probe_subjects, lists.probe_yaw_bin)
  subjects, yaws = np.asarray(lists.probe_subjects), np.asarray(lists.probe_yaw_bin)
  by_yaw_ci = {str(int(yaw)): list(intervals.ratio_bootstrap(result.correct[yaws == yaw],
                                                             subjects[yaws == yaw]))
               for yaw in result.per_yaw}
  return {"rank1": result.overall,
          "rank1_ci": list(intervals.ratio_bootstrap(result.correct, subjects)),
          "rank1_by_yaw": {str(int(k)): float(v) for k, v in result.per_yaw.items()},
          "rank1_by_yaw_ci": by_yaw_ci,
          "probes_by_yaw": {str(int(k)): int(v) for k, v in result.counts.items()}}


def _pose_analyses(embed, root, files=None):
  """Frontal-vs-profile SVM and centroid distance on the CFP images (the paper's CFP set-up)."""
  pairs = (files or BenchmarkFiles()).read(cfp.read_cfp, root, "FP")
  emb = embed(pairs.paths)
  is_profile = np.array(["/profile/" in p.replace(os.sep, "/") for p in pairs.paths])
  identity = np.array([os.path.basename(os.path.dirname(os.path.dirname(p)))
                       for p in pairs.paths])
  # The paper's 5000 / 2000 split of CFP's 7000 images, scaled down for smaller sets.
  num_train = min(5000, len(emb) * 5 // 7)
  train_idx, test_idx = embedding_analyses.sample_train_test(
      len(emb), num_train=num_train, num_test=min(2000, len(emb) - num_train))
  svm = embedding_analyses.pose_svm(emb, is_profile, train_idx, test_idx)
  correct = int(round(svm["val_accuracy"] * len(test_idx)))
  mean, std = embedding_analyses.centroid_distance(emb, np.unique(identity,
                                                                  return_inverse=True)[1])
  return {"pose_svm_train_accuracy": svm["train_accuracy"],
          "pose_svm_val_accuracy": svm["val_accuracy"],
          "pose_svm_val_accuracy_ci": list(intervals.wilson(correct, len(test_idx))),
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


def _first_image(image_paths):
  """Decodes the first image of a list: the image root and format are right."""
  if len(image_paths):
    images_lib.decode_image(images_lib.read_file_bytes(image_paths[0]), 8,
                            f"image file {image_paths[0]}")


def _input_checks(config, paths):
  """[(option names, check)]: for each input the configured benchmarks read, a function that
  opens it with the reader evaluation uses (list files parsed, listed images found, the
  first image and each .bin pack's pickle and first image decoded)."""
  checks = []
  benchmarks = list(dict.fromkeys(config.eval.benchmarks))
  if {"cfp_ff", "cfp_fp"} & set(benchmarks):  # FP also for the pose analyses
    for protocol in sorted({b[-2:].upper() for b in benchmarks if b.startswith("cfp")} | {"FP"}):
      checks.append((("cfp",), lambda p=protocol: _first_image(
          cfp.read_cfp(paths["cfp"], p).paths)))
  if "lfw" in benchmarks:
    checks.append((("lfw", "lfw_images"), lambda: _first_image(
        lfw.read_lfw(paths["lfw"], paths["lfw_images"]).paths)))
  if "bins" in benchmarks:
    for pack in dict.fromkeys(config.eval.bins):
      checks.append((("bins",), lambda pack=pack: insightface_bin.check_bin(
          os.path.join(paths["bins"], f"{pack}.bin"))))
  if "ijba" in benchmarks:
    checks.append((("ijba", "ijba_images"), lambda: [
        _first_image(split.paths) for split in ijba.read_ijba(paths["ijba"],
                                                              paths["ijba_images"])]))
  if "megaface" in benchmarks:
    checks.append((("megaface_probes", "megaface_probe_images"), lambda: _first_image(
        megaface.read_probe_list(paths["megaface_probes"],
                                 paths["megaface_probe_images"]).paths)))
    checks.append((("megaface_distractors", "megaface_distractor_images"),
                   lambda: _first_image(megaface.read_distractor_list(
                       _distractor_list(paths["megaface_distractors"]),
                       paths["megaface_distractor_images"]))))
  if "multipie" in benchmarks:
    checks.append((("multipie",), lambda: _first_image(
        multipie.read_multipie(paths["multipie"]).gallery_paths)))
  return checks


def checked_paths(config, data, open_files=True):
  """`benchmark_paths`, after checking that every configured benchmark has its files named
  and, with `open_files`, that each opens and parses as evaluation will read it.

  Runs before training too, so a missing or malformed evaluation file stops a run at its
  start, not at its end; the error names the config.eval.paths option and the file.
  """
  paths = benchmark_paths(config, data)
  for benchmark in config.eval.benchmarks:
    if benchmark not in BENCHMARKS:
      hint = (" (on the command line a tuple is written "
              "--config.eval.benchmarks=\"('cfp_ff','cfp_fp')\")" if "," in benchmark else "")
      raise ValueError(
          f"config.eval.benchmarks holds {benchmark!r}; allowed: {BENCHMARKS}{hint}")
    for name in _NEEDS[benchmark]:
      if paths[name] is None:
        raise ValueError(f"config.eval.benchmarks holds {benchmark!r} but config.eval.paths."
                         f"{name} is empty and the data set has no files of its own for it")
  if open_files:
    for names, check in _input_checks(config, paths):
      try:
        check()
      except (OSError, ValueError) as error:
        options = ", ".join(f"config.eval.paths.{name}={paths[name]}" for name in names)
        kind = FileNotFoundError if isinstance(error, FileNotFoundError) else ValueError
        raise kind(f"an evaluation input is unreadable ({options}): {error}") from None
  return paths


def evaluate(config, data, recognizer, variables, files=None):
  """{benchmark: results} for config.eval.benchmarks (see the module docstring).

  files: a BenchmarkFiles shared by the phases evaluated one after the other.
  """
  paths = checked_paths(config, data, open_files=False)  # the readers below check the files
  files = files or BenchmarkFiles()
  embed = Embedder(config, data, recognizer, variables)
  results = {}
  for name in config.eval.benchmarks:
    if name in ("cfp_ff", "cfp_fp"):
      results[name] = _verification(embed, files, paths["cfp"], name[-2:].upper())
    elif name == "lfw":
      results[name] = _lfw(embed, files, paths["lfw"], paths["lfw_images"])
    elif name == "bins":
      for pack in config.eval.bins:
        results[f"bin_{pack}"] = _bin(embed, files,
                                      os.path.join(paths["bins"], f"{pack}.bin"),
                                      data.stored_size)
    elif name == "ijba":
      results[name] = _ijba(embed, files, paths["ijba"], paths["ijba_images"])
    elif name == "megaface":
      results[name] = _megaface(embed, files, paths)
    elif name == "multipie":
      results[name] = _per_pose(embed, files, paths["multipie"])
  if {"cfp_ff", "cfp_fp"} & set(config.eval.benchmarks):
    results["pose_analyses"] = _pose_analyses(embed, paths["cfp"], files)
  return results


# Figures the table prints, as percentages (all but centroid distances).
_TABLE_KEYS = ("accuracy", "auc", "eer", "tar_at_far", "rank1", "rank1_by_yaw",
               "pose_svm_train_accuracy", "pose_svm_val_accuracy", "centroid_distance_mean")


def _cell(value, interval, percent):
  scale = 100.0 if percent else 1.0
  text = f"{value * scale:.2f}" if percent else f"{value:.3f}"
  if interval is not None:
    text += f" +- {intervals.half_width(interval) * scale:.2f}"
  return text


def table(results_by_phase):
  """A plain-text table: one row per figure, one column per phase; `value +- half-width` of
  the 95% interval where the figure has one."""
  phases = list(results_by_phase)
  rows = []
  first = results_by_phase[phases[0]]
  for bench, values in first.items():
    for key in _TABLE_KEYS:
      if key not in values:
        continue
      percent = not key.startswith("centroid")
      ci_key = f"{key}_ci"
      if isinstance(values[key], dict):
        for sub in values[key]:
          rows.append((f"{bench} {key} {sub}", [
              _cell(results_by_phase[p][bench][key][sub],
                    results_by_phase[p][bench].get(ci_key, {}).get(sub), percent)
              for p in phases]))
      else:
        rows.append((f"{bench} {key}", [
            _cell(results_by_phase[p][bench][key], results_by_phase[p][bench].get(ci_key),
                  percent) for p in phases]))
  width = max(len(name) for name, _ in rows)
  cell = max(16, max(len(c) for _, cells in rows for c in cells) + 2)
  lines = ["figures in %, centroid distance in cosine units; +- : half-width of the 95% "
           "interval (aprn_jax/evaluation/intervals.py)",
           " " * width + "".join(f"{p:>{cell}}" for p in phases)]
  for name, cells in rows:
    lines.append(name.ljust(width) + "".join(f"{c:>{cell}}" for c in cells))
  return "\n".join(lines)
