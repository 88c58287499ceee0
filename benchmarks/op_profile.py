"""Where the train step's time goes on XLA:CPU, by operation kind; prints one JSON object.

    python benchmarks/op_profile.py --config=configs/default.py [--kind=baseline]
        [--steps=10] [--warmup=2] [--batch_size=...] [--top=20] [--out=results.jsonl]

The step (`--kind`: baseline or aprn; built as benchmarks/compare_torch.py builds it, the batch
already on the one device) runs --steps times under `jax.profiler.trace`, with XLA:CPU asked
to mark each of its operations in the trace (`--xla_cpu_enable_xprof_traceme`, added to
XLA_FLAGS before JAX starts). The spans named after an instruction of the compiled program
are summed per instruction and divided by --steps (the runtime's own spans and waits, and
Python's frames, are left out). `kinds` sums the instructions of one kind (the name XLA gave
it, its trailing `.N` dropped): `ynn_fusion` for YNNPACK's matrix products and reductions,
`dot` and `conv_general_dilated` for XLA's own, `transpose_copy_fusion` and
`copy_bitcast_fusion` for layout copies, the elementwise fusions named by their first
operations. `top` lists the largest single instructions with the shape each produces.
`ops_ms_per_step` is their sum: it can pass `step_s` where XLA runs two operations at once on
the two cores, and falls short of it by the time between operations.
"""
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

from absl import app, flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_enable_xprof_traceme=true").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

from benchmarks import common, compare_torch
from input_pipeline import landmarks

FLAGS = flags.FLAGS


def define_flags():
  common.define_model_flags("Batch of the step (default: config.train.batch_size).",
                            "steps profiled")
  flags.DEFINE_enum("kind", "baseline", ["baseline", "aprn"], "The step to profile.")
  flags.DEFINE_integer("top", 20, "Single operations listed in `top`.")


def op_times(trace_events, instructions):
  """{operation name: summed microseconds} of the complete ('X') spans named after one of the
  program's `instructions` (Python frames, the runtime's own spans and waits left out)."""
  totals = collections.Counter()
  for event in trace_events:
    if event.get("ph") == "X" and event["name"] in instructions:
      totals[event["name"]] += event.get("dur", 0)
  return totals


def kind_of(name):
  return re.sub(r"\.\d+$", "", name)


def shapes_of(hlo_text):
  """{instruction name: the shape it produces} from the optimised HLO text."""
  return dict(re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)(?:\{[\d,]*\})? ", hlo_text, re.M))


def measure(config, *, kind, batch_size, steps, warmup, num_classes, num_landmarks, top):
  if batch_size < 1 or steps < 1 or warmup < 0 or top < 0:
    raise ValueError("--batch_size and --steps must be at least 1, --warmup and --top >= 0")
  if jax.default_backend() != "cpu":
    raise ValueError(f"op_profile reads XLA:CPU's operation marks; this backend is "
                     f"{jax.default_backend()}")
  host_batch, mean_face = compare_torch.random_batch(config, batch_size, num_classes,
                                                     num_landmarks)
  built, _, _ = compare_torch.jax_steps(config, host_batch, mean_face, num_classes,
                                        num_landmarks)
  run, compiled = built[kind]["run"], built[kind]["compiled"]
  for _ in range(warmup):
    run()
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      start = time.perf_counter()
      for _ in range(steps):
        run()
      step_s = (time.perf_counter() - start) / steps
    trace, = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(trace, "rt") as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  shapes = shapes_of(compiled.as_text())
  ops = op_times(events, shapes)
  if not ops:
    raise ValueError("the trace holds no XLA:CPU operation; this jaxlib may not mark them "
                     "(--xla_cpu_enable_xprof_traceme)")
  kinds = collections.Counter()
  for name, microseconds in ops.items():
    kinds[kind_of(name)] += microseconds
  total = sum(ops.values())
  ms = lambda us: us / 1e3 / steps
  return {"benchmark": "op_profile", "kind": kind, "model": common.model_summary(config),
          "layer_forms": config.model.layer_forms, "batch": batch_size, "steps": steps,
          **common.machine(jax.local_devices()[:1]), "load_average": os.getloadavg()[0],
          "step_s": step_s, "ops_ms_per_step": ms(total),
          "kinds": [{"kind": k, "ms_per_step": ms(v), "share": v / total}
                    for k, v in kinds.most_common()],
          "top": [{"op": n, "shape": shapes[n], "ms_per_step": ms(v), "share": v / total}
                  for n, v in ops.most_common(top)]}


def main(argv):
  config = common.model_config(argv)
  record = measure(config, kind=FLAGS.kind,
                   batch_size=FLAGS.batch_size or config.train.batch_size, steps=FLAGS.steps,
                   warmup=FLAGS.warmup, num_classes=FLAGS.num_classes,
                   num_landmarks=landmarks.NUM_POINTS[FLAGS.landmarks], top=FLAGS.top)
  common.emit(record, FLAGS.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
