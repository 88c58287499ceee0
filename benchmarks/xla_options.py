"""XLA compiler options against XLA's defaults on this project's train step; prints one JSON.

    python benchmarks/xla_options.py --config=configs/default.py [--kind=baseline]
        [--variants=cpu] [--options='{"name": {"xla_option": "value", ...}, ...}']
        [--steps=12] [--warmup=2] [--batch_size=...] [--out=results.jsonl]

The step (`--kind`: baseline or aprn; the pmapped `aprn_jax.train_step` on one device, the
batch already there, as benchmarks/compare_torch.py builds it) is lowered once and compiled
once per variant, each variant's options passed to XLA as `compile(compiler_options)`, so all
variants run in this one process, on the same arguments, timed in turn
(`common.time_interleaved`): load from other processes falls on all of them alike, which
separate runs with different XLA_FLAGS would not give. `speedup` is the default compile's
median step seconds over the variant's (above 1: the variant is faster).

`--variants=cpu` is the set of XLA:CPU library choices this project was measured with
(docs/benchmarks.md, "PyTorch side by side", "On this CPU"): no YNNPACK fusions, YNNPACK for
dots only, YNNPACK for dots and convolutions, and oneDNN. `--options` adds (or, by name, replaces)
variants, each a dict of XLA debug options (the names of XLA_FLAGS without the leading --;
repeated enum options as comma-separated proto names).
"""
import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

from benchmarks import common, compare_torch
from input_pipeline import landmarks

FLAGS = flags.FLAGS

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_TYPE = "LIBRARY_FUSION_TYPE_"
VARIANT_SETS = {
    "cpu": {
        "no_ynnpack": {_YNN: ""},
        "ynnpack_dots_only": {_YNN: f"{_TYPE}INDIVIDUAL_DOT"},
        "ynnpack_dots_and_convolutions": {
            _YNN: f"{_TYPE}INDIVIDUAL_DOT,{_TYPE}INDIVIDUAL_CONVOLUTION"},
        "onednn": {"xla_cpu_use_onednn": True},
    },
    "none": {},
}


def define_flags():
  common.define_model_flags("Batch of the step (default: config.train.batch_size).",
                            "steps of each variant")
  flags.DEFINE_enum("kind", "baseline", ["baseline", "aprn"], "The step to compile.")
  flags.DEFINE_enum("variants", "cpu", list(VARIANT_SETS), "Built-in variants to time.")
  flags.DEFINE_string("options", "{}", "JSON: more variants, name -> {XLA option: value}.")


def parse_options(text):
  """--options as {name: {option: value}}, or a ValueError naming what is wrong."""
  try:
    variants = json.loads(text)
  except json.JSONDecodeError as error:
    raise ValueError(f"--options is not JSON: {error}") from None
  if not isinstance(variants, dict) or not all(
      isinstance(v, dict) for v in variants.values()):
    raise ValueError("--options must be a JSON object of name -> {XLA option: value}")
  if "default" in variants:
    raise ValueError("--options: 'default' is XLA's defaults, the baseline of every speedup")
  return variants


def measure(config, *, kind, variants, batch_size, steps, warmup, num_classes, num_landmarks):
  if batch_size < 1 or steps < 1 or warmup < 0:
    raise ValueError("--batch_size and --steps must be at least 1, --warmup >= 0")
  host_batch, mean_face = compare_torch.random_batch(config, batch_size, num_classes,
                                                     num_landmarks)
  built, _, args = compare_torch.jax_steps(config, host_batch, mean_face, num_classes,
                                           num_landmarks)
  lowered = built[kind]["lowered"]
  variants = {"default": {}, **variants}
  calls, compile_s = {}, {}
  for name, options in variants.items():
    if name == "default":  # compiled (and timed) when the step was built
      compiled, compile_s[name] = built[kind]["compiled"], built[kind]["compile_s"]
    else:
      compiled, compile_s[name] = _compile(lowered, options, name)
    calls[name] = lambda c=compiled: jax.block_until_ready(c(*args))
    for _ in range(warmup):
      calls[name]()
  timed = common.time_interleaved(calls, steps)
  base = timed["default"]["median_s"]
  device = jax.local_devices()[0]
  return {"benchmark": "xla_options", "kind": kind, "model": common.model_summary(config),
          "layer_forms": config.model.layer_forms, "batch": batch_size, "steps": steps,
          **common.machine([device]), "load_average": os.getloadavg()[0],
          "variants": {name: dict(options=variants[name], compile_s=compile_s[name],
                                  median_s=t["median_s"], min_s=t["min_s"],
                                  images_per_s=batch_size / t["median_s"],
                                  speedup=base / t["median_s"])
                       for name, t in timed.items()}}


def _compile(lowered, options, name):
  """(compiled, seconds) of `lowered` with XLA debug `options` (the variant `name`'s)."""
  start = time.perf_counter()
  try:
    compiled = lowered.compile(options)
  except Exception as error:  # an option XLA does not know, or a value it refuses
    raise ValueError(f"variant {name!r} ({options}): XLA refused it: {error}") from None
  return compiled, time.perf_counter() - start


def main(argv):
  config = common.model_config(argv)
  variants = dict(VARIANT_SETS[FLAGS.variants], **parse_options(FLAGS.options))
  record = measure(config, kind=FLAGS.kind, variants=variants,
                   batch_size=FLAGS.batch_size or config.train.batch_size, steps=FLAGS.steps,
                   warmup=FLAGS.warmup, num_classes=FLAGS.num_classes,
                   num_landmarks=landmarks.NUM_POINTS[FLAGS.landmarks])
  common.emit(record, FLAGS.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
