"""What main.py runs: the workdir's config guard, training phases, evaluation and the table.

Training records the config (config.json) and the training data's description (data.json,
`data_lib.DataInfo`) in the workdir; eval and analyse of the user's own faces read the latter
and the checkpoints, so they run without the training images or their build.
"""
import json
import os

import jax

from aprn_jax import data as data_lib
from aprn_jax import evaluate, report, saved_config, trainer
from aprn_jax.analysis import analyse
from input_pipeline import files


def _flatten(tree, prefix=""):
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  out = {}
  for key, value in tree.items():
    out.update(_flatten(value, f"{prefix}{key}."))
  return out


def _has_trained(workdir):
  """Whether training ever started in `workdir`: a phase folder (or link) is there."""
  return any(files.lexists(os.path.join(workdir, phase)) for phase in trainer.PHASES)


def guard_workdir(config, workdir, record=True):
  """Refuses a workdir that holds a run of another config (its checkpoints stay untouched).

  Only `config.eval` and `config.analysis` may differ: they change what is measured, not
  what is trained. Fields missing from the saved config count as their default value. A
  config.json beside no phase folder is from a run that never trained (its data build
  failed, say): it guards nothing, so another config replaces it rather than being refused.
  record: write config.json when absent or replaced; with record=False, returns whether it
  is yet to be written (`record_config`: main.py records it only once the data is built and
  the evaluation inputs are checked, right before training).
  """
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json())
  if files.exists(path):
    with files.open(path) as f:
      try:
        saved = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not readable JSON ({e}); move it away to start over") from e
    # A field added to the project after the run started is absent from its config.json;
    # it is the same run when the field holds the value it had before it existed.
    flat_saved, flat_current = _flatten(saved_config.complete(saved)), _flatten(current)
    differ = sorted(k for k in set(flat_saved) | set(flat_current)
                    if not k.startswith(("eval.", "analysis."))
                    and flat_saved.get(k) != flat_current.get(k))
    if not differ:
      return False
    if _has_trained(workdir):
      raise ValueError(
          f"workdir {workdir} holds a run of another config (differs in: {', '.join(differ)}); "
          f"use a new --workdir, or the saved config ({path}) to resume that run")
    print(f"{path}: a run that never trained (no {' or '.join(trainer.PHASES)} folder) had "
          f"another config (differs in: {', '.join(differ)}); this config replaces it",
          flush=True)
  if not record:
    return True
  record_config(config, workdir)
  return False


def record_config(config, workdir):
  """Writes the workdir's config.json (once `guard_workdir` has let the config in)."""
  if jax.process_index() == 0:
    files.makedirs(workdir, exist_ok=True)
    files.write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))


def record_data(data, workdir):
  """Writes <workdir>/data.json: what eval and analyse need of the training data."""
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "data.json"), data.to_json())


def saved_data(workdir):
  """The `data_lib.DataInfo` training saved in `workdir`; None if it has none (a run
  trained before data.json was written)."""
  path = os.path.join(workdir, "data.json")
  if not files.exists(path):
    return None
  with files.open(path) as f:
    try:
      return data_lib.DataInfo.from_json(json.load(f))
    except (ValueError, TypeError, KeyError) as e:
      raise ValueError(f"{path} is not a readable data description ({e}); move it away to "
                       f"open the training data instead (--mode=train writes it again)") from e


def load_data(config, workdir, mode):
  """What `mode` needs of the training data (export asks as "eval"): the data, or for eval
  and analyse of the user's own faces its saved description, so they need neither
  manual_dir nor the build. analyse still opens the data when manual_dir is there and probes
  are configured (they train on its images). The synthetic faces are
  always opened: their build writes the benchmark files of config.eval.split. A run trained
  before data.json was written opens its data as well."""
  if mode == "train" or config.data.name == "synthetic_faces":
    return data_lib.load(config, workdir)
  saved = saved_data(workdir)
  wants_images = (mode == "analyse" and analyse.probe_taps(config)
                  and files.isdir(config.data.get("manual_dir", "")))
  if saved is None or wants_images:
    return data_lib.load(config, workdir)
  return saved


def _evaluate_phases(config, data, phases_and_variables, out_name, workdir, steps):
  """Evaluates each phase's recognizer, prints the table, writes `out_name` and the report
  (`report`; also without benchmarks: the training figures). steps: {phase: its step}."""
  results, parsed = {}, evaluate.BenchmarkFiles()
  for name, (recognizer, variables) in phases_and_variables.items():
    if config.eval.benchmarks:
      results[name] = evaluate.evaluate(config, data, recognizer, variables, parsed,
                                        label=f"[{name}]")
  if results and jax.process_index() == 0:  # one table and one file for a whole job
    print(evaluate.table(results), flush=True)
    files.write_json(os.path.join(workdir, out_name), results)
  written = report.write(config, data, workdir, results, steps, phases_and_variables,
                         out_name)
  if written:
    print(f"report: {written} (figures in {os.path.join(workdir, report.FIGURES)})",
          flush=True)
  return results


def main(config, workdir, mode, step=None):
  files.local_path(workdir)  # orbax keeps the checkpoints there: a scheme it lacks fails now
  if mode == "train":
    trainer.check_train_config(config)  # before the data set is built
  unrecorded = guard_workdir(config, workdir, record=False)  # a failed build leaves none
  if mode != "train":
    saved = trainer.saved_phases(workdir)  # a workdir without checkpoints is named first
  data = load_data(config, workdir, mode)
  evaluate.checked_paths(config, data)  # a bad evaluation file stops the run before training
  if mode == "train":
    if unrecorded:
      record_config(config, workdir)  # from here on the workdir holds this config's run
    record_data(data, workdir)
  if mode == "analyse":
    return analyse.analyse(config, data, workdir, step)
  if mode == "train":
    phases = trainer.train(config, data, workdir)
    finished = {name: (phase.recognizer, phase.final_recognizer())
                for name, phase in phases.items()}
    return _evaluate_phases(config, data, finished, "results.json", workdir,
                            {name: phase.num_steps for name, phase in phases.items()})
  finished, steps = {}, {}
  for name in saved:
    phase = trainer.PhaseCheckpoints(config, data, workdir, name)
    variables, restored = phase.saved_recognizer(step)
    print(f"[{name}] restored the recognizer of step {restored}", flush=True)
    finished[name], steps[name] = (phase.recognizer, variables), int(restored)
  return _evaluate_phases(config, data, finished, "eval.json", workdir, steps)
