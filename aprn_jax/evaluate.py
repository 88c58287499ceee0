"""Benchmarks of a recognizer on evaluation sets in their distributed layouts, plus the
embedding-level pose analyses (pose SVM, centroid distance), as one results dict.

Each benchmark is an evaluator in its own module of `aprn_jax/evaluation/benchmarks/`, found
through `aprn_jax.evaluation.registry`; this module resolves config.eval.paths, checks the
inputs, runs the configured evaluators with one streamed embedder and prints the table, so
adding a benchmark never edits it. The built-in ones (`config.eval.benchmarks`) and where
their files are (`config.eval.paths`; an empty path means the data set's own protocol files,
which the synthetic faces provide):
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
- `ijbb`, `ijbc`: IJB-B / IJB-C 1:1 (`paths.ijbb` / `paths.ijbc`: the folder holding `meta/`
  and `loose_crop/` in insightface's layout); faces aligned by their 5 points to the ArcFace
  template at the stored size, template pooling, TAR at FAR 1e-6..1e-1;
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

Images are streamed (`evaluation.embedder`: read, decoded and cropped a chunk ahead of the
one being embedded, so memory holds two chunks of images and the embeddings, whatever the
benchmark's size), read at the data set's stored size and put through the same centred crop
and resize as evaluation batches in training (`preprocess.eval_transform`). Embeddings are
L2-normalise(emb(image) + emb(mirrored image)) when `config.eval.flip`; an image is embedded
once however many benchmark copies hold its pixels.

Every accuracy, TAR and rank-1 comes with its 95% confidence interval (`intervals`), as
`<figure>_ci` = [low, high] beside it: k-fold accuracy by the t interval over folds; TAR at
FAR, rank-1 and per-yaw rank-1 by the percentile bootstrap over identities (CFP pairs belong
to the person of their first image, LFW's likewise; .bin packs name no people, so there each
pair is resampled alone); IJB-A's mean over splits by the same bootstrap, people drawn once
for all splits; IJB-B/C's TAR by the bootstrap over first templates (their files name no
people); the pose SVM's validation accuracy by Wilson's interval.
"""
import os

from aprn_jax.evaluation import intervals, registry
from aprn_jax.evaluation.embedder import Embedder
from input_pipeline import console
from input_pipeline import files as files_lib  # `files` names the parsed protocol files here


class BenchmarkFiles:
  """The protocol files of the benchmarks, each parsed once however many phases use them."""

  def __init__(self):
    self._parsed = {}

  def read(self, reader, *args):
    key = (reader.__module__, reader.__qualname__, args)
    if key not in self._parsed:
      self._parsed[key] = reader(*args)
    return self._parsed[key]


def benchmark_paths(config, data):
  """config.eval.paths with empty entries replaced by the data set's own files."""
  defaults = registry.default_paths()
  given = dict(config.eval.get("paths", {}))
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"config.eval.paths has unknown entries {unknown}; known: "
                     f"{sorted(defaults)}")
  paths = {}
  for name, default in defaults.items():
    if given.get(name):
      paths[name] = files_lib.abspath(os.path.expanduser(given[name]))  # a URI stays whole
    elif data.protocol_root and default is not None:
      paths[name] = os.path.join(data.protocol_root, default)
    else:
      paths[name] = None
  return paths


def checked_paths(config, data, open_files=True):
  """`benchmark_paths`, after checking that every configured benchmark has its files named
  and, with `open_files`, that each opens and parses as evaluation will read it.

  Runs before training too, so a missing or malformed evaluation file stops a run at its
  start, not at its end; the error names the config.eval.paths option and the file.
  """
  paths = benchmark_paths(config, data)
  allowed = registry.benchmark_names()
  for benchmark in config.eval.benchmarks:
    if benchmark not in allowed:
      hint = (" (on the command line a tuple is written "
              "--config.eval.benchmarks=\"('cfp_ff','cfp_fp')\")" if "," in benchmark else "")
      raise ValueError(
          f"config.eval.benchmarks holds {benchmark!r}; allowed: {allowed}{hint}")
  evaluators = registry.selected(config.eval.benchmarks)
  for evaluator in evaluators:
    for name in evaluator.paths:
      if paths[name] is None:
        raise ValueError(f"config.eval.benchmarks holds {evaluator.name!r} but "
                         f"config.eval.paths.{name} is empty and the data set has no files "
                         f"of its own for it")
  if open_files:
    context = registry.Context(config=config, paths=paths, stored_size=data.stored_size)
    checks = [check for evaluator in evaluators for check in evaluator.checks(context)]
    for names, check in checks:
      try:
        check()
      except (OSError, ValueError) as error:
        options = ", ".join(f"config.eval.paths.{name}={paths[name]}" for name in names)
        kind = FileNotFoundError if isinstance(error, FileNotFoundError) else ValueError
        raise kind(f"an evaluation input is unreadable ({options}): {error}") from None
  return paths


def evaluate(config, data, recognizer, variables, files=None, label="evaluate"):
  """{result name: figures} of config.eval.benchmarks and the analyses that run with them.

  data: what evaluation needs of the training data: its `stored_size` and `protocol_root`.
  files: a BenchmarkFiles shared by the phases evaluated one after the other.
  label: what each benchmark's progress starts with (run: the phase, `[aprn]`).
  """
  paths = checked_paths(config, data, open_files=False)  # the readers below check the files
  files = files or BenchmarkFiles()
  embed = Embedder(config, data.stored_size, recognizer, variables)
  results = {}
  for evaluator in registry.selected(config.eval.benchmarks):
    context = registry.Context(config=config, paths=paths, stored_size=data.stored_size,
                               embed=embed, files=files, results=results)
    # One progress per benchmark: the images the embedder embeds for it.
    with console.Progress(f"{label} {evaluator.name}", 0, "images") as embed.progress:
      results.update(evaluator.run(context))
    embed.progress = None
  return results


def _table_keys():
  """(the figures the table prints, in the evaluators' order; those printed plainly, not as
  percentages), over every registered evaluator."""
  keys, plain = {}, set()
  for evaluator in registry.evaluators().values():
    keys.update(dict.fromkeys(evaluator.table_keys))
    plain.update(evaluator.plain_keys)
  return tuple(keys), plain


def _cell(value, interval, percent):
  scale = 100.0 if percent else 1.0
  text = f"{value * scale:.2f}" if percent else f"{value:.3f}"
  if interval is not None:
    text += f" +- {intervals.half_width(interval) * scale:.2f}"
  return text


def _difference(values, percent):
  """The last phase's figure minus the first's, in the table's unit; '' when one lacks it."""
  if len(values) < 2 or any(not isinstance(v, (int, float)) for v in values):
    return ""
  difference = values[-1] - values[0]
  return f"{difference * 100:+.2f}" if percent else f"{difference:+.3f}"


def _lookup(results, bench, key, sub):
  """results[bench][key], or its [sub] entry; None where a phase lacks it."""
  value = results.get(bench, {}).get(key)
  return value.get(sub) if sub is not None and isinstance(value, dict) else value


def table_rows(results_by_phase):
  """[(benchmark, figure, cells of each phase, last phase - first)] of the figures the
  evaluators print, in their order: the one list the text and markdown tables draw."""
  phases = list(results_by_phase)
  rows = []
  table_keys, plain_keys = _table_keys()
  for bench, values in results_by_phase[phases[0]].items():
    for key in table_keys:
      if key not in values:
        continue
      percent = key not in plain_keys
      ci_key = f"{key}_ci"
      for sub in list(values[key]) if isinstance(values[key], dict) else [None]:
        found = [_lookup(results_by_phase[p], bench, key, sub) for p in phases]
        cells = ["-" if value is None else
                 _cell(value, _lookup(results_by_phase[p], bench, ci_key, sub), percent)
                 for p, value in zip(phases, found)]
        rows.append((bench, key if sub is None else f"{key} {sub}", cells,
                     _difference(found, percent)))
  return rows


def difference_heading(phases):
  return f"{phases[-1]} - {phases[0]}" if len(phases) > 1 else None


TABLE_NOTE = ("figures in %, centroid distance in cosine units; +- : half-width of the 95% "
              "interval (aprn_jax/evaluation/intervals.py)")


def table(results_by_phase):
  """A plain-text table grouped by benchmark: its name, then one row per figure, one column
  per phase (`value +- half-width` of the 95% interval where the figure has one) and, for
  two or more phases, the last phase's figure minus the first's."""
  phases = list(results_by_phase)
  rows = table_rows(results_by_phase)
  heading = difference_heading(phases)
  columns = phases + ([heading] if heading else [])
  body = [cells + ([diff] if heading else []) for _, _, cells, diff in rows]
  width = max([len(figure) + 2 for _, figure, _, _ in rows] + [len(b) for b, _, _, _ in rows])
  cell = max(16, max(len(c) for line in body + [columns] for c in line) + 2)
  lines = [TABLE_NOTE, " " * width + "".join(f"{c:>{cell}}" for c in columns)]
  previous = None
  for (bench, figure, _, _), cells in zip(rows, body):
    if bench != previous:
      lines.append(bench)
      previous = bench
    lines.append(f"  {figure}".ljust(width) + "".join(f"{c:>{cell}}" for c in cells))
  return "\n".join(lines)


def markdown_table(results_by_phase):
  """`table` as markdown (report.md): the benchmark named on its first row."""
  phases = list(results_by_phase)
  heading = difference_heading(phases)
  columns = ["benchmark", "figure"] + phases + ([heading] if heading else [])
  lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  previous = None
  for bench, figure, cells, diff in table_rows(results_by_phase):
    lines.append("| " + " | ".join([bench if bench != previous else "", figure] + cells
                                   + ([diff] if heading else [])) + " |")
    previous = bench
  return "\n".join(lines)
