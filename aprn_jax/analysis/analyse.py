"""`--mode=analyse`: the paper's pose-invariance analyses on each phase's checkpoint.

Per phase found in the workdir (baseline, aprn), from its latest checkpoint (or `step`):
- `landmark_probes` (Table 3): held-out L1 of landmark probes on each tap of the frozen
  backbone (`landmark_probe`), with two references: predicting the training images' mean
  landmarks (`train_mean_l1`) and the frontal mean face (`mean_face_l1`);
- `pose_analyses`: the frontal-vs-profile SVM and centroid distance, as in evaluation;
- `tsne_<phase>.png` (Fig. 2): CFP-FP embeddings, identities by colour, profile as circles;
- `overlays_<phase>.png` (Fig. 1) and `noise_test`: D's landmarks on CFP images, and D's L1
  to the mean face on noise. The baseline phase trains no D (its checkpoint holds an untrained
  one), so there the predictor is the landmark probe on `config.aprn.tap`, which has D's
  architecture: Fig. 1's baseline row is exactly such an estimator on frozen baseline maps.
  Without that probe (`config.analysis.probe_taps` lacks the tap) the baseline gets neither.

Without the training images (the user's faces analysed from the workdir's data.json alone,
see `run`) the probes cannot train: `landmark_probes` is {"skipped": why} and the baseline
gets no overlays or noise test; the rest runs as usual.

Numbers go to <workdir>/analysis/analysis.json, pictures beside it:

    {phase: {"step": int,
             "pose_analyses": {pose_svm_train_accuracy, pose_svm_val_accuracy,
                               pose_svm_val_accuracy_ci (Wilson, 95%),
                               centroid_distance_mean, centroid_distance_std},
             "tsne_png": "tsne_<phase>.png",
             "landmark_probes": {train_images, test_images, test_set: "cfp_fp", steps,
                                 train_mean_l1, mean_face_l1,
                                 taps: {tap: {l1, l1_frontal, l1_profile,
                                              train_l1_first, train_l1_last}}},
             "overlays": {png: "overlays_<phase>.png", source, l1},
             "noise_test": {source, num_images, l1_mean, l1_std}}}

`source` is "discriminator" or "probe:<tap>"; train_l1_first/last average the training L1 of
the first/last (up to) 10 probe steps. All L1 are per coordinate in the normalised [-1, 1] frame.
"""
import os

import jax
import numpy as np

from aprn_jax import checkpoints, evaluate, models, train_state, trainer
from aprn_jax import data as data_lib
from aprn_jax.analysis import embedding_analyses, figures, landmark_probe, noise_test
from aprn_jax.evaluation.benchmarks import pose_analyses
from input_pipeline import files


def saved_discriminator(phase, step):
  """D's variables alone from a phase's checkpoint at `step`."""
  _, target = train_state.variable_shapes(phase.recognizer, phase.discriminator,
                                          phase.config.data.image_size, phase.config.aprn.tap)
  return checkpoints.restore_item(phase.checkpoint_dir(), "discriminator", target, step)[0]


def overlay_selection(held_out, num_identities):
  """Indices of the first frontal and first profile image of the first identities."""
  chosen = []
  for identity in list(dict.fromkeys(held_out.identity))[:num_identities]:
    for profile in (False, True):
      where = np.flatnonzero((held_out.identity == identity) & (held_out.is_profile == profile))
      chosen += list(where[:1])
  return np.array(chosen, int)


def probe_taps(config):
  taps = tuple(config.analysis.probe_taps) or models.tap_names(config.model)
  allowed = models.tap_names(config.model)
  for tap in taps:
    if tap not in allowed:
      raise ValueError(f"config.analysis.probe_taps holds {tap!r}; allowed: {allowed}")
  return taps


def probes_skipped(config):
  return (f"training images unavailable: set config.data.manual_dir to their folder (got "
          f"{config.data.get('manual_dir', '')!r}) to train the landmark probes on them")


def cfp_root(config, data):
  """The CFP folder the analyses read: config.eval.paths.cfp, else the data set's own."""
  root = evaluate.benchmark_paths(config, data)["cfp"]
  if root is None:
    raise ValueError("the analyses run on CFP's images: set config.eval.paths.cfp to the CFP "
                     "folder (Protocol/, Data/); this data set has no CFP files of its own")
  return root


def analyse_phase(config, data, phase, step, train_set, held_out, out_dir):
  """phase: a trainer.PhaseCheckpoints; train_set: the probes' training images, None when
  they are unavailable (the probes, and the baseline's overlays and noise test, are skipped)."""
  cfg = config.analysis
  recognizer_variables, restored = phase.saved_recognizer(step)
  print(f"[{phase.name}] analysing the checkpoint of step {restored}", flush=True)
  results = {"step": int(restored)}
  recognizer = phase.recognizer
  embed = evaluate.Embedder(config, data.stored_size, recognizer, recognizer_variables)
  results["pose_analyses"] = pose_analyses.pose_analyses(embed, evaluate.BenchmarkFiles(),
                                                         cfp_root(config, data))
  lead = jax.process_index() == 0  # one writer of the pictures
  tsne_name = f"tsne_{phase.name}.png"
  if lead:
    embedding_analyses.tsne_png(
        embed(held_out.paths), held_out.identity, held_out.is_profile,
        os.path.join(out_dir, tsne_name),
        num_identities=min(cfg.tsne_identities, len(set(held_out.identity))), seed=cfg.seed)
  results["tsne_png"] = tsne_name

  probes, probe_variables = (), {}
  taps = probe_taps(config)
  if taps and train_set is None:
    note = probes_skipped(config)
    print(f"[{phase.name}] landmark probes skipped: {note}", flush=True)
    results["landmark_probes"] = {"skipped": note}
  elif taps:
    results["landmark_probes"], probes, probe_variables = landmark_probe.run(
        config, recognizer, recognizer_variables, train_set, held_out, data.mean_face, taps,
        label=f"[{phase.name}] landmark probes on {', '.join(taps)}")

  tap = config.aprn.tap
  if phase.name == "aprn":
    source, disc, disc_variables = ("discriminator", phase.discriminator,
                                    saved_discriminator(phase, restored))
  elif tap in probe_variables:
    source, disc, disc_variables = f"probe:{tap}", dict(probes)[tap], probe_variables[tap]
  else:
    return results
  predict_all = landmark_probe.predictor(((tap, disc),), {tap: disc_variables}, recognizer,
                                         recognizer_variables, config.eval.batch_size)
  predict = lambda images: predict_all(images)[tap]
  chosen = overlay_selection(held_out, cfg.overlay_identities)
  overlay_name = f"overlays_{phase.name}.png"
  predicted = predict(held_out.images[chosen])
  if lead:
    figures.overlay_png(held_out.images[chosen], held_out.landmarks[chosen], predicted,
                        data.mean_face, os.path.join(out_dir, overlay_name),
                        tile=cfg.overlay_tile, title=f"{phase.name} ({source})")
  results["overlays"] = {"png": overlay_name, "source": source,
                         "l1": float(landmark_probe.per_image_l1(
                             predicted, held_out.landmarks[chosen]).mean())}
  results["noise_test"] = {"source": source, **noise_test.noise_test(
      predict, data.mean_face, num_images=cfg.noise_images,
      image_size=config.data.image_size, seed=cfg.seed)}
  return results


def _rows(tree, prefix=""):
  """(dotted name, number) of every numeric leaf."""
  if isinstance(tree, dict):
    return [row for key, value in tree.items() for row in _rows(value, f"{prefix}{key}.")]
  if isinstance(tree, (int, float)) and not isinstance(tree, bool):
    return [(prefix[:-1], tree)]
  return []


def table(results_by_phase):
  """A plain-text table: one row per number, one column per phase ('-' where absent)."""
  phases = list(results_by_phase)
  values = {p: dict(_rows(r)) for p, r in results_by_phase.items()}
  names = list(dict.fromkeys(name for p in phases for name in values[p]))
  width = max(len(name) for name in names)
  lines = [" " * width + "".join(f"{p:>12}" for p in phases)]
  for name in names:
    cells = [values[p].get(name) for p in phases]
    lines.append(name.ljust(width) + "".join(
        f"{'-':>12}" if v is None else f"{v:>12}" if isinstance(v, int) else f"{v:>12.4f}"
        for v in cells))
  return "\n".join(lines)


def analyse(config, data, workdir, step=None):
  """{phase: results} of every phase with checkpoints; writes analysis/analysis.json.

  data: a data.TrainData, or the DataInfo alone, which skips the landmark probes.
  """
  out_dir = os.path.join(workdir, "analysis")
  phases = [trainer.PhaseCheckpoints(config, data, workdir, name)
            for name in trainer.saved_phases(workdir)]
  held_out = landmark_probe.cfp_images(config, data, cfp_root(config, data))
  train_set = None
  if probe_taps(config) and isinstance(data, data_lib.TrainData):  # not its description alone
    train_set = landmark_probe.train_images(config, data, config.analysis.probe_train_images)
  results = {p.name: analyse_phase(config, data, p, step, train_set, held_out, out_dir)
             for p in phases}
  print(table(results), flush=True)
  if jax.process_index() == 0:
    files.makedirs(out_dir, exist_ok=True)
    files.write_json(os.path.join(out_dir, "analysis.json"), results)
  return results
