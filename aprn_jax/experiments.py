"""The paper's experiments, one command each: seeds, shared baselines, paired controls.

    python -m aprn_jax.experiments --config=configs/default.py --experiment=control \\
        --seeds=5 --workdir=/tmp/aprn_study [--split=validation] [--config.aprn.alpha=0.3]

Experiments (`EXPERIMENTS`), each a list of variants of the config plus the control, the same
fine-tuning with D trained as a probe only (`aprn.loss=none`):
- `control`: APRN (the config as given) against the control;
- `alpha` (Table 11): aprn.alpha 0.1, 0.2, 0.3, 0.4;
- `tap` (Table 10): every tap of the backbone;
- `loss_parts` (Table 12): adversarial, l1_reg, l2_reg, each with the noise test;
- `pose` (Table 3 and the SVM): landmark probes on every tap, the frontal-vs-profile SVM and
  the centroid distance of the baseline, APRN and the control (`--mode=analyse`'s analyses);
- `sweep`: your own, `--variants="alpha=0.1,0.3;tap=stage3"` (fields separated by `;`,
  values by `,`; a field without a dot is one of config.aprn's, e.g. `train.aprn_epochs=4`).

The study folder `--workdir` holds ordinary main.py workdirs, so any run can be inspected,
evaluated or analysed with main.py:

    seed<k>/baseline/     the baseline phase of seed k (config.seed = k), trained once
    seed<k>/<run>/        the APRN phase of one variant, fine-tuned from that baseline (its
                          `baseline` folder is a link to the baseline run's); <run> names
                          what differs from the config: `aprn` (nothing), `control`,
                          `alpha=0.1`, ...
    <experiment>/<split>/ summary.json, summary.md, differences.png, rank1_by_yaw.png
                          (`summary_dir`: tuning on validation and reporting on test
                          keep both)

Experiments run in one study folder share their runs: `alpha`'s 0.2 is `control`'s `aprn`
run, and every experiment's control is the same run. A variant that changes what the
baseline trains (a field outside config.aprn, train.aprn_epochs, train.aprn_lr_scale,
config.eval and config.analysis) gets its own baseline, `seed<k>/baseline-<run>`. Each run
writes `results_<split>.json` ({phase: benchmark results}, as main.py's results.json) once it
is trained and evaluated, and the extra measurements its experiment asks for beside it
(`noise_test.json`; `analysis_<split>.json`, as one phase of --mode=analyse's analysis.json);
a rerun of the same command skips what exists and resumes the unfinished run from its
checkpoint, so a killed experiment ends with the tables of an uninterrupted one.
`--split=validation` evaluates on the validation identities (tune there), `test` (the
default) on the test identities (report there); training does not depend on the split.

summary.json (every figure in %, except centroid distances and L1s):

    {"experiment", "split", "seeds": [0, ..], "config": the study's config,
     "variants": [name, ..] (baseline first, control last),
     "runs": {variant: [run folder per seed]},
     "figures": {figure: {variant: {"per_seed": [..], "mean", "ci": [low, high] | null,
                                     "vs_control": {"per_seed": [..], "mean",
                                                    "ci": [low, high] | null,
                                                    "positive": seeds with a difference > 0},
                                     "vs_baseline": the same, to the baseline (not for
                                                    the baseline itself)}}}}

`ci` is the t interval over seeds (`intervals.t_interval`, 95%), of the mean and of the
differences to the control and to the baseline paired by seed; it needs 2 seeds or more.
"""
import dataclasses
import json
import math
import os
import time

import jax
import ml_collections
import numpy as np

from aprn_jax import data as data_lib
from aprn_jax import evaluate, models, run, trainer
from aprn_jax.analysis import analyse, landmark_probe, noise_test
from aprn_jax.analysis import figures as analysis_figures
from aprn_jax.evaluation import intervals
from input_pipeline import files

BASELINE, CONTROL, APRN = "baseline", "control", "aprn"
# Fields that change only the APRN phase: variants differing in nothing else share a baseline.
APRN_PHASE_FIELDS = ("aprn.", "train.aprn_epochs", "train.aprn_lr_scale", "train.phases",
                     "eval.", "analysis.")


@dataclasses.dataclass(frozen=True)
class Variant:
  """A named set of config overrides ((dotted field, value), ...)."""
  name: str
  overrides: tuple = ()


CONTROL_VARIANT = Variant(CONTROL, (("aprn.loss", "none"),))


def _values(field, values):
  short = field.split(".", 1)[1] if field.startswith("aprn.") else field
  return [Variant(f"{short}={value}", ((field, value),)) for value in values]


def _sweep(config, spec):
  if not spec:
    raise ValueError("--experiment=sweep needs --variants, e.g. "
                     "--variants=\"alpha=0.1,0.3;tap=stage3\"")
  variants = []
  for part in filter(None, (p.strip() for p in spec.split(";"))):
    field, sep, values = part.partition("=")
    if not sep or not values:
      raise ValueError(f"--variants: {part!r} is not field=value[,value...]")
    field = _field(config, field.strip())
    variants += _values(field, [_parse(config, field, v.strip()) for v in values.split(",")])
  return variants


EXPERIMENTS = {
    "control": lambda config, spec: [Variant(APRN)],
    "alpha": lambda config, spec: _values("aprn.alpha", (0.1, 0.2, 0.3, 0.4)),
    "tap": lambda config, spec: _values("aprn.tap", models.tap_names(config.model)),
    "loss_parts": lambda config, spec: _values("aprn.loss", ("adversarial", "l1_reg",
                                                             "l2_reg")),
    "pose": lambda config, spec: [Variant(APRN)],
    "sweep": _sweep,
}
# Extra measurements of an experiment, on each run of its variants and the control.
NOISE_TEST = ("loss_parts",)
POSE_ANALYSES = ("pose",)


def _field(config, name):
  """The dotted config field `name` names ("alpha" is config.aprn.alpha)."""
  dotted = name if "." in name else f"aprn.{name}"
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ValueError(f"--variants: config has no field {dotted!r}")
    node = node[part]
  return dotted


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _parse(config, dotted, text):
  """A value for `dotted` from text, typed like the config's current value."""
  current = _get(config, dotted)
  if isinstance(current, bool):
    if text not in ("True", "False"):
      raise ValueError(f"--variants: {dotted} takes True or False, not {text!r}")
    return text == "True"
  if isinstance(current, (int, float)):
    try:
      return type(current)(float(text)) if isinstance(current, float) else int(text)
    except ValueError:
      raise ValueError(f"--variants: {dotted} takes a number, not {text!r}") from None
  return text


def apply(config, overrides):
  """A copy of `config` with the overrides set."""
  out = ml_collections.ConfigDict(config.to_dict())
  for dotted, value in overrides:
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
      node = node[part]
    node[last] = value
  return out


def effective(config, overrides):
  """The overrides that change `config`, sorted by field."""
  return tuple(sorted((f, v) for f, v in overrides if _get(config, f) != v))


def run_name(config, overrides):
  """The run folder of a variant: what it changes in the config."""
  changes = effective(config, overrides)
  if not changes:
    return APRN
  if changes == CONTROL_VARIANT.overrides:
    return CONTROL
  return ",".join(f"{f.split('.', 1)[1] if f.startswith('aprn.') else f}={v}"
                  for f, v in changes)


def changes_baseline(config, overrides):
  return any(not f.startswith(APRN_PHASE_FIELDS) for f, _ in effective(config, overrides))


@dataclasses.dataclass
class Run:
  """One main.py workdir of the study: a baseline or one variant's APRN phase."""
  seed: int
  folder: str                 # relative to the study, e.g. "seed0/alpha=0.1"
  config: ml_collections.ConfigDict
  phase: str                  # the phase this run trains and evaluates
  baseline: str = ""          # for APRN runs: the baseline run's folder
  extras: tuple = ()          # "noise_test", "pose_analyses"


def plan(config, experiment, seeds, spec=""):
  """(variants in table order, {variant: [Run per seed]}, runs to do in order)."""
  if experiment not in EXPERIMENTS:
    raise ValueError(f"--experiment={experiment!r}; choose one of {tuple(EXPERIMENTS)}")
  if seeds < 1:
    raise ValueError(f"--seeds={seeds} must be at least 1")
  variants = list(EXPERIMENTS[experiment](config, spec)) + [CONTROL_VARIANT]
  extras = (("noise_test",) if experiment in NOISE_TEST else ()) + (
      ("pose_analyses",) if experiment in POSE_ANALYSES else ())
  by_variant = {BASELINE: []}
  by_variant.update({v.name: [] for v in variants})
  todo = {}
  for seed in range(seeds):
    seeded = apply(config, (("seed", seed),))
    base = _baseline_run(seeded, seed, f"seed{seed}/{BASELINE}", extras)
    base = todo.setdefault(base.folder, base)
    by_variant[BASELINE].append(base)
    for variant in variants:
      name = run_name(seeded, variant.overrides)
      changed = apply(seeded, variant.overrides)
      own = base
      if changes_baseline(seeded, variant.overrides):
        own = _baseline_run(changed, seed, f"seed{seed}/{BASELINE}-{name}", ())
        todo.setdefault(own.folder, own)
      aprn_config = apply(changed, (("train.phases", (APRN,)),))
      folder = f"seed{seed}/{name}"
      todo.setdefault(folder, Run(seed, folder, aprn_config, APRN, own.folder, extras))
      by_variant[variant.name].append(todo[folder])
  return [BASELINE] + [v.name for v in variants], by_variant, list(todo.values())


def _baseline_run(config, seed, folder, extras):
  return Run(seed, folder, apply(config, (("train.phases", (BASELINE,)),)), BASELINE,
             extras=tuple(e for e in extras if e == "pose_analyses"))


def summary_dir(study, experiment, split):
  return os.path.join(study, experiment, split)


def results_path(study, run_, split):
  return os.path.join(study, run_.folder, f"results_{split}.json")


class Progress:
  """Runs done / total and the ETA of the whole experiment, prefixed to the trainer's lines.

  The ETA assumes every remaining training step costs what the finished ones cost so far
  (evaluation and analyses included); runs finished before this process started count as
  done and cost nothing.
  """

  def __init__(self, experiment, runs, steps_of):
    self.experiment, self.total = experiment, len(runs)
    self.steps_of = steps_of
    self.left = {r.folder: steps_of(r) for r in runs}
    self.done_runs, self.spent_steps, self.started = 0, 0, time.time()
    self.current, self.current_steps = None, 0

  def skip(self, run_):
    self.left.pop(run_.folder, None)
    self.done_runs += 1

  def start(self, run_):
    self.current, self.current_steps = run_, 0
    print(f"[{self.experiment}] run {self.done_runs + 1}/{self.total}: {run_.folder}"
          f"{self._eta()}", flush=True)

  def finish(self, run_):
    self.spent_steps += self.left.pop(run_.folder, 0)
    self.done_runs += 1
    self.current = None

  def _eta(self):
    remaining = sum(self.left.values())
    if not self.spent_steps:
      return ""
    per_step = (time.time() - self.started) / self.spent_steps
    return f", experiment ETA {remaining * per_step / 60:.1f} min"

  def prefix(self, phase, step, total):
    """The prefix of the trainer's line at `step` of `total` of the current run."""
    del phase, total
    self.current_steps = step
    remaining = sum(self.left.values()) - step
    done = self.spent_steps + step
    eta = ""
    if done > 0:
      eta = f" ETA {remaining * (time.time() - self.started) / done / 60:.0f} min"
    return f"[{self.experiment} run {self.done_runs + 1}/{self.total}{eta}] "


def _load_data(cache, config, workdir):
  key = json.dumps({"data": config.data.to_dict(), "split": config.eval.split},
                   sort_keys=True)
  if key not in cache:
    cache[key] = data_lib.load(config, workdir)
  return cache[key]


def _link_baseline(study, run_):
  """The run's baseline/ folder: a relative link to its baseline run's phase folder; on a
  filesystem without links (gs://, ...), a copy of that folder, named when whole."""
  link = os.path.join(study, run_.folder, BASELINE)
  source = os.path.join(study, run_.baseline, BASELINE)
  if not files.supports_links(link):
    if not files.exists(link):
      files.makedirs(os.path.dirname(link), exist_ok=True)
      files.rmtree(link + ".partial", ignore_errors=True)
      files.copytree(source, link + ".partial")
      files.replace(link + ".partial", link)
    return
  target = files.relpath(source, os.path.dirname(link))
  if files.islink(link):
    if files.readlink(link) != target:
      raise ValueError(f"{link} links to {files.readlink(link)}, not {target}; move it away")
    return
  if files.exists(link):
    raise ValueError(f"{link} exists and is not a link to {target}; move it away")
  files.makedirs(os.path.dirname(link), exist_ok=True)
  files.symlink(target, link)


def extra_paths(study, run_, split):
  """{extra: file} of the run's extra measurements (the noise test does not depend on the
  split: it looks at noise)."""
  folder = os.path.join(study, run_.folder)
  names = {"noise_test": "noise_test.json", "pose_analyses": f"analysis_{split}.json"}
  return {extra: os.path.join(folder, names[extra]) for extra in run_.extras}


def is_complete(study, run_, split):
  return all(files.exists(p) for p in [results_path(study, run_, split),
                                         *extra_paths(study, run_, split).values()])


def execute(study, run_, split, data_cache, progress, analysis_inputs):
  """Trains (or resumes) and evaluates one run, writing its results_<split>.json, then the
  extra measurements its experiment asks for that it lacks."""
  config = run_.config
  workdir = os.path.join(study, run_.folder)
  trainer.check_train_config(config)
  if run_.baseline:
    baseline_done = os.path.join(study, run_.baseline, BASELINE, "done.json")
    if not files.exists(baseline_done):
      raise RuntimeError(f"{run_.folder} needs its baseline {run_.baseline}, which has not "
                         f"finished ({baseline_done} is missing)")
    files.makedirs(workdir, exist_ok=True)
    _link_baseline(study, run_)
  # As main.py: config.json is written only once the data is built and the inputs checked.
  unrecorded = run.guard_workdir(config, workdir, record=False)
  data = _load_data(data_cache, config, workdir)
  evaluate.checked_paths(config, data)
  if unrecorded:
    run.record_config(config, workdir)
  run.record_data(data, workdir)
  phase = trainer.train(config, data, workdir, log_prefix=progress.prefix)[run_.phase]
  lead = jax.process_index() == 0
  if not files.exists(results_path(study, run_, split)):
    results = evaluate.evaluate(config, data, phase.recognizer, phase.final_recognizer(),
                                label=f"[{run_.folder}]")
    if lead:
      files.write_json(results_path(study, run_, split), {run_.phase: results})
  for extra, path in extra_paths(study, run_, split).items():
    if files.exists(path):
      continue
    print(f"[{run_.folder}] {extra.replace('_', ' ')}", flush=True)
    if extra == "noise_test":
      value = _noise_test(config, data, phase)
    else:
      train_set, held_out = analysis_inputs(config, data)
      value = analyse.analyse_phase(config, data, phase, None, train_set, held_out,
                                    os.path.join(workdir, "analysis"))
    if lead:
      files.write_json(path, value)


def load_figures(study, run_, split):
  """figures() of a run: its benchmark results and extra measurements."""
  with files.open(results_path(study, run_, split)) as f:
    phase_results = json.load(f)[run_.phase]
  for extra, path in extra_paths(study, run_, split).items():
    with files.open(path) as f:
      phase_results["analysis" if extra == "pose_analyses" else extra] = json.load(f)
  return figures(phase_results)


def _noise_test(config, data, phase):
  """D's L1 to the mean face on uniform noise (the paper's Table 12 test)."""
  recognizer_variables, step = phase.saved_recognizer()
  disc_variables = analyse.saved_discriminator(phase, step)
  tap = config.aprn.tap
  predict = landmark_probe.predictor(((tap, phase.discriminator),), {tap: disc_variables},
                                     phase.recognizer, recognizer_variables,
                                     config.eval.batch_size)
  return noise_test.noise_test(lambda images: predict(images)[tap], data.mean_face,
                               num_images=config.analysis.noise_images,
                               image_size=config.data.image_size, seed=config.analysis.seed)


def _analysis_inputs():
  cache = {}

  def inputs(config, data):
    key = json.dumps({"data": config.data.to_dict(), "split": config.eval.split,
                      "analysis": config.analysis.to_dict()}, sort_keys=True)
    if key not in cache:
      held_out = landmark_probe.cfp_images(config, data, analyse.cfp_root(config, data))
      train_set = landmark_probe.train_images(config, data,
                                              config.analysis.probe_train_images)
      cache[key] = (train_set, held_out)
    return cache[key]
  return inputs


# ---------------------------------------------------------------------------- the summary

def figures(phase_results):
  """{figure name: value} of one phase's results: every accuracy, TAR, rank-1 (%), the
  rank-1 of each |yaw| (mean of +-yaw), the pose analyses, the noise test and the probes."""
  out = {}
  for bench, values in phase_results.items():
    if not isinstance(values, dict) or bench in ("analysis", "noise_test", "pose_analyses"):
      continue
    for key in ("accuracy", "tar_at_far", "rank1", "rank1_by_yaw"):
      if key not in values:
        continue
      if isinstance(values[key], dict):
        for sub, value in values[key].items():
          out[f"{bench} {key} {sub}"] = 100.0 * value
      else:
        out[f"{bench} {key}"] = 100.0 * values[key]
    if "rank1_by_yaw" in values:
      by_abs = {}
      for yaw, value in values["rank1_by_yaw"].items():
        by_abs.setdefault(abs(int(yaw)), []).append(100.0 * value)
      for yaw, both in sorted(by_abs.items()):
        out[f"{bench} rank1 |yaw|={yaw}"] = float(np.mean(both))
  pose = phase_results.get("pose_analyses", {})
  for key in ("pose_svm_val_accuracy", "centroid_distance_mean"):
    if key in pose:
      out[f"pose_analyses {key}"] = pose[key] * (100.0 if "accuracy" in key else 1.0)
  if "noise_test" in phase_results:
    out["noise_test l1_mean"] = phase_results["noise_test"]["l1_mean"]
  svm = phase_results.get("analysis", {}).get("pose_analyses", {})
  if "pose_svm_val_accuracy" in svm and "pose_analyses pose_svm_val_accuracy" not in out:
    out["pose_analyses pose_svm_val_accuracy"] = 100.0 * svm["pose_svm_val_accuracy"]
  probes = phase_results.get("analysis", {}).get("landmark_probes", {}).get("taps", {})
  for tap, values in probes.items():
    out[f"landmark_probe {tap} l1"] = values["l1"]
  return out


def _interval(values):
  return list(intervals.t_interval(values)) if len(values) >= 2 else None


def _paired(values, reference):
  """Differences to a reference paired by seed: per seed, mean, t interval, count > 0."""
  diff = values - reference
  return {"per_seed": diff.tolist(), "mean": float(diff.mean()), "ci": _interval(diff),
          "positive": int((diff > 0).sum())}


def summarize(study, experiment, split, variants, by_variant, config):
  """The summary dict (module docstring) from the runs' results_<split>.json."""
  per_variant = {}
  for variant in variants:
    per_variant[variant] = [load_figures(study, r, split) for r in by_variant[variant]]
  # A figure is summarised for the variants that have it in every seed (the baseline has no
  # D, so no noise test), if the control has it too.
  names = [n for n in per_variant[CONTROL][0] if all(n in r for r in per_variant[CONTROL])]
  out = {}
  for name in names:
    control = np.array([r[name] for r in per_variant[CONTROL]])
    out[name] = {}
    for variant in variants:
      if not all(name in r for r in per_variant[variant]):
        continue
      values = np.array([r[name] for r in per_variant[variant]])
      out[name][variant] = {
          "per_seed": values.tolist(), "mean": float(values.mean()), "ci": _interval(values),
          "vs_control": _paired(values, control)}
      if variant != BASELINE and BASELINE in out[name]:
        out[name][variant]["vs_baseline"] = _paired(values,
                                                    np.array(out[name][BASELINE]["per_seed"]))
  return {"experiment": experiment, "split": split,
          "seeds": [r.seed for r in by_variant[BASELINE]], "config": config.to_dict(),
          "variants": variants,
          "runs": {v: [r.folder for r in by_variant[v]] for v in variants},
          "figures": out}


# Columns of summary.md: (heading, figure).
MAIN_FIGURES = (("CFP-FF", "cfp_ff accuracy"), ("CFP-FP", "cfp_fp accuracy"),
                ("CFP-FP TAR@1e-3", "cfp_fp tar_at_far 0.001"),
                ("IJB-A TAR@1e-2", "ijba tar_at_far 0.01"),
                ("IJB-A TAR@1e-3", "ijba tar_at_far 0.001"),
                ("MegaFace rank-1", "megaface rank1"), ("Multi-PIE rank-1", "multipie rank1"),
                ("Multi-PIE +-90", "multipie rank1 |yaw|=90"),
                ("pose SVM", "pose_analyses pose_svm_val_accuracy"),
                ("noise test L1", "noise_test l1_mean"))


def _cell(entry, diff=None, digits=2):
  """A table cell: the mean over seeds, or with diff="vs_control" | "vs_baseline" the
  paired difference; +- the half-width of the 95% t interval."""
  if entry is None or (diff and diff not in entry):
    return "-"
  value = entry[diff] if diff else entry
  text = f"{value['mean']:+.{digits}f}" if diff else f"{value['mean']:.{digits}f}"
  if value["ci"] is not None:
    text += f" +- {(value['ci'][1] - value['ci'][0]) / 2:.{digits}f}"
  if diff:
    text += f" ({value['positive']}/{len(value['per_seed'])})"
  return text


def markdown(summary):
  """summary.md: the variants' means and their paired differences to the control."""
  figs = summary["figures"]
  columns = [(h, f) for h, f in MAIN_FIGURES if f in figs]
  probes = sorted((f for f in figs if f.startswith("landmark_probe")),
                  key=lambda f: (f.split()[1] != "stem", f))  # stem first, then by depth
  columns += [(f"probe L1 {f.split()[1]}", f) for f in probes]
  # L1s (normalised frame) differ in the third decimal; percentages in the first.
  digits = lambda f: 4 if f.startswith(("landmark_probe", "noise_test")) else 2
  seeds = len(summary["seeds"])
  head = "| variant | " + " | ".join(h for h, _ in columns) + " |"
  rule = "| --- " * (len(columns) + 1) + "|"
  lines = [f"# {summary['experiment']}: {seeds} seeds, {summary['split']} split", "",
           "Mean over seeds +- half-width of the 95% t interval (figures in %, L1 in the "
           "normalised landmark frame).", "", head, rule]
  for variant in summary["variants"]:
    lines.append(f"| {variant} | " + " | ".join(_cell(figs[f].get(variant), digits=digits(f))
                                                for _, f in columns) + " |")
  for diff, reference, what in (
      ("vs_control", CONTROL, f"the control ({CONTROL}: the same fine-tuning, D a probe only)"),
      ("vs_baseline", BASELINE, f"the {BASELINE} (the network every variant fine-tunes)")):
    lines += ["", f"Difference to {what}, paired by seed: mean +- half-width of the 95% t "
              f"interval (seeds where it is positive / seeds).", "", head, rule]
    for variant in summary["variants"]:
      if variant not in (reference, BASELINE):
        lines.append(f"| {variant} | " + " | ".join(
            _cell(figs[f].get(variant), diff=diff, digits=digits(f)) for _, f in columns)
                     + " |")
  return "\n".join(lines) + "\n"


def plots(summary, out_dir):
  """differences.png and rank1_by_yaw.png (matplotlib, no display needed)."""
  plt = analysis_figures.pyplot()
  figs = summary["figures"]
  variants = [v for v in summary["variants"] if v != CONTROL]
  columns = [(h, f) for h, f in MAIN_FIGURES if f in figs]
  written = []
  fig, axes = plt.subplots(1, len(columns), figsize=(2.6 * len(columns), 3.2 + 0.12 *
                                                      len(variants)), squeeze=False)
  for ax, (heading, name) in zip(axes[0], columns):
    shown = [i for i, v in enumerate(variants) if v in figs[name]]
    means = [figs[name][variants[i]]["vs_control"]["mean"] for i in shown]
    cis = [figs[name][variants[i]]["vs_control"]["ci"] for i in shown]
    errors = np.array([[m - c[0], c[1] - m] if c else [0, 0]
                       for m, c in zip(means, cis)]).reshape(-1, 2).T
    ax.errorbar(means, shown, xerr=errors, fmt="o", capsize=3)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(variants)))
    ax.set_yticklabels(variants if ax is axes[0][0] else [""] * len(variants))
    ax.invert_yaxis()
    ax.set_title(heading, fontsize=9)
  fig.suptitle(f"{summary['experiment']}: difference to the control, 95% t interval over "
               f"{len(summary['seeds'])} seeds", fontsize=10)
  fig.tight_layout()
  path = os.path.join(out_dir, "differences.png")
  analysis_figures.save_figure(fig, path, dpi=110)
  plt.close(fig)
  written.append(path)

  yaws = sorted(int(f.split("=")[1]) for f in figs if f.startswith("multipie rank1 |yaw|="))
  if yaws:
    series = []
    for variant in summary["variants"]:
      entries = [figs[f"multipie rank1 |yaw|={yaw}"][variant] for yaw in yaws]
      band = ([e["ci"][0] for e in entries], [e["ci"][1] for e in entries]) if all(
          e["ci"] for e in entries) else None
      series.append((variant, yaws, [e["mean"] for e in entries], band))
    written.append(analysis_figures.line_png(
        os.path.join(out_dir, "rank1_by_yaw.png"), series, xlabel="|yaw| (degrees)",
        ylabel="Multi-PIE-style rank-1 (%)", xticks=yaws,
        title=f"rank-1 by yaw, mean and 95% t interval over {len(summary['seeds'])} seeds"))
  return written


def run_experiment(config, study, experiment, seeds, split="test", spec=""):
  """Runs (or resumes) every run of the experiment; writes and returns its summary."""
  study = files.abspath(study)
  if split not in ("validation", "test"):
    raise ValueError(f"--split={split!r}; choose validation (to tune) or test (to report)")
  # One data build for the whole study (main.py's default would be one per seed folder).
  config = apply(config, (("eval.split", split),) + (
      () if config.data.data_dir else (("data.data_dir", os.path.join(study, "data")),)))
  variants, by_variant, runs = plan(config, experiment, seeds, spec)
  data_cache, inputs = {}, _analysis_inputs()
  steps_of = lambda r: _planned_steps(r, data_cache, study)
  progress = Progress(experiment, runs, steps_of)
  for run_ in runs:
    if is_complete(study, run_, split):
      progress.skip(run_)
      continue
    progress.start(run_)
    execute(study, run_, split, data_cache, progress, inputs)
    progress.finish(run_)
  summary = summarize(study, experiment, split, variants, by_variant, config)
  if jax.process_index() == 0:
    out_dir = summary_dir(study, experiment, split)
    files.makedirs(out_dir, exist_ok=True)
    files.write_json(os.path.join(out_dir, "summary.json"), summary)
    with files.open(os.path.join(out_dir, "summary.md"), "w") as f:
      f.write(markdown(summary))
    plots(summary, out_dir)
    print(markdown(summary), flush=True)
  return summary


def _planned_steps(run_, data_cache, study):
  """Training steps of a run (D's warm-up steps count a third: they skip R's backward)."""
  config = run_.config
  data = _load_data(data_cache, config, os.path.join(study, run_.folder))
  per_epoch, total = trainer.phase_steps(config, run_.phase, data.num_examples)
  warmup = trainer.warmup_steps(config, run_.phase)
  return total - warmup + math.ceil(warmup / 3)


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)
  f = flags.FLAGS
  run_experiment(f.config, f.workdir, f.experiment, f.seeds, f.split, f.variants)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "The study folder (see the module docstring).")
  flags.DEFINE_enum("experiment", None, list(EXPERIMENTS), "Which experiment.")
  flags.DEFINE_integer("seeds", 3, "Seeds 0..N-1.")
  flags.DEFINE_enum("split", "test", ["validation", "test"],
                    "Identities to evaluate on: tune on validation, report on test.")
  flags.DEFINE_string("variants", "", "--experiment=sweep: field=v1,v2;field2=v3 ...")
  flags.mark_flags_as_required(["config", "workdir", "experiment"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
