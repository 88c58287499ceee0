"""Helpers shared by the benchmarks: JSON output, timing, XLA cost and memory figures.

Every benchmark prints one JSON object per run (and appends it as one line to --out), so runs
on different machines can be collected into one JSON-lines file and compared.
"""
import json
import os
import resource
import statistics
import time

from absl import app, flags
import jax
import numpy as np
from ml_collections import config_flags

from aprn_jax import host, models
from input_pipeline import landmarks

# Every benchmark (and compare_torch's PyTorch process) runs with glibc keeping freed memory,
# as main.py does (aprn_jax/host.py); imported before any JAX computation starts XLA's threads.
KEEPS_FREED_MEMORY = host.keep_freed_memory()

MIB = 2**20

# Dense (no sparsity) peak throughput of the NVIDIA Hopper SXM parts the device tool lends,
# in TFLOP/s, from NVIDIA's H100/H200 datasheets: BF16 tensor cores 989.4 (1,979 with
# 2:4 sparsity), plain FP32 66.9. The H200 has the H100's compute, only more memory.
PEAK_TFLOPS = {"bfloat16": 989.4, "float32": 66.9}
PEAK_SOURCE = (
    "NVIDIA H100/H200 SXM datasheet, dense: bf16 tensor core 989.4 TFLOP/s, fp32 (no tensor "
    "core) 66.9 TFLOP/s. XLA's default float32 precision may run convolutions and matmuls on "
    "TF32 tensor cores (494.7 TFLOP/s dense), so fp32 utilisation can exceed 1.")


def define_model_flags(batch_help, timed, num_classes_help="Identities of the classification "
                       "head."):
  """The flags of every model benchmark: --config, --batch_size, --steps, --warmup, --dtype,
  --num_classes, --landmarks, --out. `timed` names what --steps counts ("steps of each kind")."""
  config_flags.DEFINE_config_file("config", "configs/default.py", "Config file (configs/*.py).",
                                  lock_config=True)
  flags.DEFINE_integer("batch_size", None, batch_help)
  flags.DEFINE_integer("steps", 10, f"Timed {timed}.")
  flags.DEFINE_integer("warmup", 2, f"Untimed {timed} after compiling.")
  flags.DEFINE_enum("dtype", None, list(models.DTYPES), "Overrides config.model.dtype.")
  flags.DEFINE_integer("num_classes", 1000, num_classes_help)
  flags.DEFINE_enum("landmarks", "ibug51", list(landmarks.SCHEMES), "Landmark scheme of D.")
  flags.DEFINE_string("out", None, "Also append the JSON line to this file.")


def model_config(argv):
  """The --config of a model benchmark, its --dtype applied; extra arguments are an error."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config.copy_and_resolve_references()
  if flags.FLAGS.dtype:
    config.model.dtype = flags.FLAGS.dtype
  return config


def emit(record, out_path=None):
  """Prints `record` as one JSON line, and appends that line to `out_path` when given."""
  line = json.dumps(record)
  print(line, flush=True)
  if out_path:
    with open(out_path, "a") as f:
      f.write(line + "\n")


def set_host_device_count(count):
  """Asks XLA for `count` CPU devices. Takes effect only before JAX first lists devices."""
  if count < 1:
    raise ValueError(f"--devices={count} must be at least 1")
  kept = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
          if not flag.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(kept + [f"--xla_force_host_platform_device_count={count}"])


def compile_timed(fn, *args):
  """(lowered, compiled, seconds to lower and compile) for a jitted or pmapped `fn`."""
  start = time.perf_counter()
  lowered = fn.lower(*args)
  compiled = lowered.compile()
  return lowered, compiled, time.perf_counter() - start


def flop_count(stage):
  """FLOPs of one call of a lowered or compiled program (one device's) by XLA, or None."""
  cost = stage.cost_analysis()
  return float(cost["flops"]) if cost and cost.get("flops") else None


def flops(lowered, compiled):
  """FLOPs of one call by XLA's cost analysis (one device's program).

  Counted on the compiled program, after XLA removed dead code (so work the program does not
  need is not counted), or on the lowered one where the backend counts nothing compiled.
  """
  count = flop_count(compiled) or flop_count(lowered)
  if count is None:
    raise ValueError("XLA's cost analysis gives no FLOP count for this program")
  return count


def xla_memory_mib(compiled):
  """MiB of device memory one call holds by XLA's count (arguments, outputs, temporaries)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes
          + stats.temp_size_in_bytes - stats.alias_size_in_bytes) / MIB


def peak_memory_bytes(device):
  """(bytes, source): the allocator's peak on GPU/TPU, else the process's peak resident set.

  Both are peaks over the process's life so far, so a figure read after a second workload
  covers the first one too.
  """
  stats = device.memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"], "device peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


def time_interleaved(calls, steps):
  """Median and min seconds of each call, `steps` rounds of one call each, in turn.

  Interleaving spreads load changes on a shared machine over all calls alike, so their ratio
  is fairer than from back-to-back runs. Each call must block until its result is ready.
  """
  seconds = {name: [] for name in calls}
  for _ in range(steps):
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      seconds[name].append(time.perf_counter() - start)
  return {name: {"median_s": statistics.median(s), "min_s": min(s)}
          for name, s in seconds.items()}


def utilisation(flops_per_s, device, dtype):
  """Achieved FLOP/s over the chip's dense peak for `dtype` (None off H100/H200)."""
  if not any(name in device.device_kind for name in ("H100", "H200")):
    return None
  return flops_per_s / (PEAK_TFLOPS[dtype] * 1e12)


def param_count(tree):
  """Number of scalars in a pytree of arrays."""
  return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))


def model_summary(config):
  """The config fields that decide a model's cost."""
  summary = {key: config.model.get(key) for key in
             ("backbone", "depth", "stage_sizes", "width", "embedding_dim", "dtype")}
  return dict(summary, image_size=config.data.image_size)


def machine(devices):
  """The figures that say where a number was measured."""
  return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
          "num_devices": len(devices), "host_cpus": os.cpu_count(), "cpu_model": cpu_model(),
          "jax": jax.__version__}


def cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return None
