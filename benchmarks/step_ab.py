"""One CPU change to the train step, on and off, timed in one process; prints one JSON object.

    python benchmarks/step_ab.py --change=onednn_split --config=configs/default.py
        [--kinds=baseline,aprn] [--rounds=6] [--steps=8] [--warmup=2] [--batch_size=...]
        [--out=results.jsonl]

Changes (each on by default in this project):
- `onednn_split`: oneDNN's calls on a batch of 8+ images per thread of XLA's pool run as one
  part per thread, oneDNN on one OpenMP thread in each (`onednn.split_batches`); off, every
  call runs on oneDNN's own OpenMP team.
- `bn_gradient`: BatchNorm's hand-written gradient on CPU (`layers.BN_GRADIENT`); off, XLA's
  derivative of flax's BatchNorm.
- `jaxlib_onednn`: the forward, input-gradient and max-pool calls on batches too small to split
  run on jaxlib's oneDNN, on XLA's own threads (`onednn.USE_JAXLIB`); off, on the oneDNN
  package's OpenMP team.

Both variants of each step kind are compiled (the batch already on the one device), then
`--rounds` rounds alternate them, each timing `--steps` calls of each. Between processes this
machine's step times moved by 15% and more (2 shared cores); within one, alternating rounds,
the paired ratio is steadier: `ratio` is the median over rounds of (on's median step seconds)
/ (off's), below 1 where the change makes the step faster.
"""
import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

from aprn_jax.models import layers, onednn
from benchmarks import common, compare_torch
from input_pipeline import landmarks

FLAGS = flags.FLAGS
KINDS = ("baseline", "aprn")


def _set_onednn_split(on):
  onednn.split_batches(on)


def _set_bn_gradient(on):
  layers.BN_GRADIENT = on


def _set_jaxlib_onednn(on):
  onednn.USE_JAXLIB = on


# change: (setter, whether it acts at trace time, so each variant is compiled with it set)
CHANGES = {"onednn_split": (_set_onednn_split, False), "bn_gradient": (_set_bn_gradient, True),
           "jaxlib_onednn": (_set_jaxlib_onednn, True)}


def define_flags():
  common.define_model_flags("Batch of the step (default: config.train.batch_size).",
                            "steps of each variant per round")
  flags.DEFINE_enum("change", None, list(CHANGES), "The change to time on and off.")
  flags.DEFINE_list("kinds", list(KINDS), "Step kinds: baseline, aprn.")
  flags.DEFINE_integer("rounds", 6, "Alternating rounds.")
  flags.mark_flag_as_required("change")


def measure(config, *, change, kinds, batch_size, rounds, steps, warmup, num_classes,
            num_landmarks):
  if batch_size < 1 or rounds < 1 or steps < 1 or warmup < 0:
    raise ValueError("--batch_size, --rounds and --steps must be at least 1, --warmup >= 0")
  if not set(kinds) <= set(KINDS):
    raise ValueError(f"--kinds={','.join(kinds)}: each must be one of {KINDS}")
  if jax.default_backend() != "cpu":
    raise ValueError(f"step_ab times CPU changes; this backend is {jax.default_backend()}")
  if change in ("onednn_split", "jaxlib_onednn") and not onednn.available():
    raise ValueError(f"--change={change} needs oneDNN: {onednn.unavailable_reason()}")
  if change == "jaxlib_onednn" and onednn.jaxlib_onednn_reason():
    raise ValueError(f"--change=jaxlib_onednn: {onednn.jaxlib_onednn_reason()}")
  setter, at_trace = CHANGES[change]
  host_batch, mean_face = compare_torch.random_batch(config, batch_size, num_classes,
                                                     num_landmarks)
  runs = {}
  try:
    for on in (False, True):
      setter(on)
      if at_trace or not runs:
        built, _, _ = compare_torch.jax_steps(config, host_batch, mean_face, num_classes,
                                              num_landmarks)
      runs[on] = {kind: built[kind]["run"] for kind in kinds}
    seconds = {kind: {False: [], True: []} for kind in kinds}
    for on in (False, True):
      setter(on)
      for kind in kinds:
        for _ in range(warmup):
          runs[on][kind]()
    for _ in range(rounds):
      for kind in kinds:
        for on in (False, True):
          setter(on)
          times = []
          for _ in range(steps):
            start = time.perf_counter()
            runs[on][kind]()
            times.append(time.perf_counter() - start)
          seconds[kind][on].append(statistics.median(times))
  finally:
    setter(True)
  results = {}
  for kind in kinds:
    off, on = seconds[kind][False], seconds[kind][True]
    results[kind] = {"off_step_s": statistics.median(off), "on_step_s": statistics.median(on),
                     "ratio": statistics.median(b / a for a, b in zip(off, on)),
                     "off_step_s_by_round": off, "on_step_s_by_round": on}
  return {"benchmark": "step_ab", "change": change, "model": common.model_summary(config),
          "layer_forms": config.model.layer_forms, "batch": batch_size, "rounds": rounds,
          "steps": steps, **common.machine(jax.local_devices()[:1]),
          "load_average": os.getloadavg(), "keeps_freed_memory": common.KEEPS_FREED_MEMORY,
          **results}


def main(argv):
  config = common.model_config(argv)
  common.emit(measure(config, change=FLAGS.change, kinds=FLAGS.kinds,
                      batch_size=FLAGS.batch_size or config.train.batch_size,
                      rounds=FLAGS.rounds, steps=FLAGS.steps, warmup=FLAGS.warmup,
                      num_classes=FLAGS.num_classes,
                      num_landmarks=landmarks.NUM_POINTS[FLAGS.landmarks]), FLAGS.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
