"""A run's report: <workdir>/report.md with the results table and the figures it links, in
<workdir>/figures/, and the same in the phases' TensorBoard event files.

Written after every evaluation of a run (main.py's train and eval modes), from what the run
already holds: the results (results.json or eval.json), each phase's metrics.jsonl and the
last phase's checkpoint. Figures:
- `training_<phase>.png`: the phase's metric lines: identity loss, training accuracy, D's L1
  to the truth next to the mean face's (`truth_to_mean_l1`: the L1 of answering the mean
  face), the adversarial L1 (D's output to the mean face, Eq. 2's term for R) and both
  learning rates; the dashed line ends D's warm-up;
- `roc_<benchmark>.png`: each verification benchmark's ROC curve (results' `roc`), one curve
  per phase;
- `rank1_by_yaw.png`: Multi-PIE-style rank-1 per yaw with its 95% bootstrap band, per phase;
- `landmarks_<phase>.png`: D's landmarks on test faces (the Multi-PIE-style probes of the
  first identities) at several yaws, for a phase that trains D (APRN; Fig. 1's picture).

TensorBoard (`tensorboard --logdir <workdir>`): each phase's evaluation figures as scalars
`eval/<benchmark>/<figure>[/<sub>]` at the evaluated checkpoint's step, beside the training
scalars; the phase's training figure as an image, the figures comparing the phases as images
of the last phase.
"""
import io
import json
import os

import jax
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from aprn_jax import evaluate, trainer
from aprn_jax.analysis import analyse, figures, landmark_probe
from aprn_jax.evaluation import embedder
from input_pipeline import files
from input_pipeline.readers import images as images_lib
from input_pipeline.readers import multipie

FIGURES = "figures"
REPORT = "report.md"
# Yaws of the landmark sheet, of the Multi-PIE bins the probes hold; faces of this many
# identities.
SHEET_YAWS = (-90, -60, -30, 0, 30, 60, 90)
SHEET_IDENTITIES = 3

# TensorBoard's image plugin: a string tensor [width, height, PNG bytes] (core TF writes it).
_IMAGE = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="images"))


def read_metrics(workdir, phase):
  """The phase's metric lines (metrics.jsonl); [] when it has none."""
  path = os.path.join(workdir, phase, "metrics.jsonl")
  if not files.exists(path):
    return []
  with files.open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def training_png(lines, phase, warmup_steps, path):
  """The phase's training curves, one panel per quantity its lines hold."""
  steps = [line["step"] for line in lines]
  has_d = "d_l1" in lines[0]  # the baseline trains no D: no D metrics, D's LR unused
  panels = [("identity loss", [("", "identity_loss", 1.0)]),
            ("training accuracy (%)", [("", "accuracy", 100.0)]),
            ("L1 to the true landmarks", [("D", "d_l1", 1.0),
                                          ("mean face", "truth_to_mean_l1", 1.0)]),
            ("adversarial L1 (D to the mean face)", [("", "adversarial_l1", 1.0)]),
            ("learning rate", [("R", "lr", 1.0)] + ([("D", "d_lr", 1.0)] if has_d else []))]
  panels = [(title, [c for c in curves if c[1] in lines[0]]) for title, curves in panels]
  panels = [(title, curves) for title, curves in panels if curves]
  plt = figures.pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.1), squeeze=False)
  for ax, (title, curves) in zip(axes[0], panels):
    series = [(label, steps, [line[key] * scale for line in lines], None)
              for label, key, scale in curves]
    figures.draw_lines(ax, series, xlabel="step", ylabel="", title=title)
    if title == "learning rate" and min(min(y) for _, _, y, _ in series) > 0:
      ax.set_yscale("log")
    if warmup_steps and has_d:
      ax.axvline(warmup_steps, color="grey", ls="--", lw=0.8)
  fig.suptitle(f"{phase}: training (metrics.jsonl)", fontsize=10)
  fig.subplots_adjust(left=0.2 / len(panels), right=0.99, bottom=0.15, top=0.83, wspace=0.3)
  figures.save_figure(fig, path, dpi=110)
  plt.close(fig)


def roc_benchmarks(results_by_phase):
  """The benchmarks whose results hold a ROC curve, in the results' order."""
  names = {}
  for results in results_by_phase.values():
    names.update((bench, None) for bench, values in results.items()
                 if isinstance(values, dict) and "roc" in values)
  return list(names)


def roc_png(bench, results_by_phase, path):
  series = []
  for phase, results in results_by_phase.items():
    values = results.get(bench, {})
    if "roc" in values:
      auc = f" (AUC {100 * values['auc']:.2f})" if "auc" in values else ""
      series.append((phase + auc, values["roc"]["far"],
                     [100 * t for t in values["roc"]["tar"]], None))
  figures.line_png(path, series, xlabel="FAR", ylabel="TAR (%)", logx=True,
                   title=f"{bench}: ROC curve")


def rank1_by_yaw_png(results_by_phase, path):
  series = []
  for phase, results in results_by_phase.items():
    values = results.get("multipie", {})
    if "rank1_by_yaw" not in values:
      continue
    yaws = sorted(values["rank1_by_yaw"], key=int)
    cis = values.get("rank1_by_yaw_ci", {})
    band = ([100 * cis[y][0] for y in yaws], [100 * cis[y][1] for y in yaws]) if all(
        y in cis for y in yaws) else None
    series.append((phase, [int(y) for y in yaws],
                   [100 * values["rank1_by_yaw"][y] for y in yaws], band))
  figures.line_png(path, series, xlabel="yaw (degrees)", ylabel="rank-1 (%)",
                   xticks=[x for x in series[0][1] if x % 30 == 0],
                   title="Multi-PIE-style rank-1 by yaw, 95% bootstrap interval")


def sheet_faces(lists, yaws=SHEET_YAWS, identities=SHEET_IDENTITIES):
  """[[probe path at each yaw] per identity]: the first identities whose probes hold every
  yaw of `yaws`, their first probe at each."""
  rows = []
  for subject in dict.fromkeys(lists.probe_subjects.tolist()):
    mine = lists.probe_subjects == subject
    row = [np.flatnonzero(mine & (lists.probe_yaw_bin == yaw)) for yaw in yaws]
    if all(len(found) for found in row):
      rows.append([lists.probe_paths[found[0]] for found in row])
    if len(rows) == identities:
      break
  return rows


def landmarks_png(config, data, workdir, phase, step, recognizer, variables, path):
  """D's landmarks on test faces at several yaws; None when the run has no such faces (why
  goes into the report)."""
  root = evaluate.benchmark_paths(config, data)["multipie"]
  if root is None or "multipie" not in config.eval.benchmarks:
    return "no Multi-PIE-style probes (config.eval.benchmarks lacks multipie)"
  lists = multipie.read_multipie(root)
  yaws = [yaw for yaw in SHEET_YAWS if (lists.probe_yaw_bin == yaw).any()]
  rows = sheet_faces(lists, yaws)
  if not rows:
    return f"no identity of {root} has a probe at each of the yaws {yaws}"
  flat = [p for row in rows for p in row]
  raw = images_lib.decode_images(images_lib.read_files_bytes(flat), data.stored_size,
                                 [f"image file {p}" for p in flat])
  images = embedder.network_inputs(raw, config.data.crop_size, config.data.image_size)
  checkpoint = trainer.PhaseCheckpoints(config, data, workdir, phase)
  tap = config.aprn.tap
  predict = landmark_probe.predictor(
      ((tap, checkpoint.discriminator),), {tap: analyse.saved_discriminator(checkpoint, step)},
      recognizer, variables, config.eval.batch_size)
  predicted = predict(images)[tap]
  shape = (len(rows), len(yaws))
  figures.contact_sheet_png(
      images.reshape(shape + images.shape[1:]), predicted.reshape(shape + predicted.shape[1:]),
      data.mean_face, path, column_titles=[f"yaw {yaw:+d}" for yaw in yaws],
      tile=max(96, config.data.image_size), title=f"{phase} step {step}: D's landmarks")
  return None


def scalars(results):
  """(tag, value) of every number in a phase's results: `eval/<benchmark>/<figure>[/<sub>]`
  (intervals, curves and per-fold lists are left to results.json)."""
  out = []
  for bench, values in results.items():
    if not isinstance(values, dict):
      continue
    for key, value in values.items():
      if isinstance(value, bool):
        continue
      if isinstance(value, (int, float)):
        out.append((f"eval/{bench}/{key}", float(value)))
      elif isinstance(value, dict) and not key.endswith("_ci") and key != "roc":
        out += [(f"eval/{bench}/{key}/{sub}", float(v)) for sub, v in value.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
  return out


def _png_tensor(path):
  png = files.read_bytes(path)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  width, height = Image.open(io.BytesIO(png)).size
  return tf.constant([str(width).encode(), str(height).encode(), png])


def write_tensorboard(workdir, phase, step, results, pngs):
  """The phase's evaluation scalars and the figures `pngs` ({tag: path}) at `step`."""
  writer = tf.summary.create_file_writer(os.path.join(workdir, phase, "tensorboard"),
                                         filename_suffix=".report")
  with writer.as_default(step=step):
    for tag, value in scalars(results):
      tf.summary.write(tag, tf.constant(value, tf.float32), metadata=trainer._SCALAR)  # pylint: disable=protected-access
    for tag, path in pngs.items():
      tf.summary.write(tag, _png_tensor(path), metadata=_IMAGE)
  writer.close()


def markdown(workdir, source, results_by_phase, steps, sections, notes):
  lines = [f"# {files.abspath(workdir)}", "",
           "The run's config: `config.json`; its checkpoints evaluated: "
           + ", ".join(f"{p} step {s}" for p, s in steps.items()) + ".", ""]
  if results_by_phase and any(results_by_phase.values()):
    lines += ["## Results", "", f"From `{source}`; {evaluate.TABLE_NOTE}.", "",
              evaluate.markdown_table(results_by_phase), ""]
  for heading, entries in sections:
    if entries:
      lines += [f"## {heading}", ""]
      lines += [f"![{title}]({FIGURES}/{name})" for title, name in entries]
      lines.append("")
  lines += [f"Not drawn: {note}." for note in notes]
  return "\n".join(lines).rstrip() + "\n"


def write(config, data, workdir, results_by_phase, steps, models, source):
  """Writes the figures, report.md and the TensorBoard summaries; returns report.md's path.

  results_by_phase: {phase: results} ({} without benchmarks); steps: {phase: the evaluated
  checkpoint's step}; models: {phase: (recognizer, its variables)}; source: the results'
  file in the workdir.
  """
  if jax.process_index() != 0:
    return None
  out_dir = os.path.join(workdir, FIGURES)
  files.makedirs(out_dir, exist_ok=True)
  phases = list(steps)
  last = phases[-1]
  images = {phase: {} for phase in phases}  # TensorBoard images per phase: {tag: path}
  sections, notes = [], []

  def draw(section, title, name, phase, make):
    path = os.path.join(out_dir, name)
    why = make(path)
    if why:
      notes.append(f"{title}: {why}")
      return
    section.append((title, name))
    images[phase][f"figures/{name[:-4]}"] = path

  training = []
  for phase in phases:
    lines = read_metrics(workdir, phase)
    if lines:
      draw(training, f"training, {phase}", f"training_{phase}.png", phase,
           lambda path: training_png(lines, phase, trainer.warmup_steps(config, phase), path))
  sections.append(("Training", training))
  rocs = []
  for bench in roc_benchmarks(results_by_phase):
    draw(rocs, f"ROC, {bench}", f"roc_{bench}.png", last,
         lambda path: roc_png(bench, results_by_phase, path))
  sections.append(("ROC curves", rocs))
  yaw = []
  if any("rank1_by_yaw" in r.get("multipie", {}) for r in results_by_phase.values()):
    draw(yaw, "rank-1 by yaw", "rank1_by_yaw.png", last,
         lambda path: rank1_by_yaw_png(results_by_phase, path))
  sections.append(("Rank-1 by yaw", yaw))
  sheet = []
  if "aprn" in phases:
    recognizer, variables = models["aprn"]
    draw(sheet, "D's landmarks by yaw, aprn", "landmarks_aprn.png", last,
         lambda path: landmarks_png(config, data, workdir, "aprn", steps["aprn"], recognizer,
                                    variables, path))
  sections.append(("D's landmarks by yaw", sheet))

  for phase in phases:
    write_tensorboard(workdir, phase, steps[phase], results_by_phase.get(phase, {}),
                      images[phase])
  path = os.path.join(workdir, REPORT)
  files.write_atomic(path, markdown(workdir, source, results_by_phase, steps, sections, notes))
  return path
