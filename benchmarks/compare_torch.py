"""This project's train step next to the PyTorch reference's, on one device; prints one JSON.

    python benchmarks/compare_torch.py --config=configs/resnet101.py [--batch_size=4]
        [--rounds=3] [--steps=10] [--warmup=2] [--dtype=float32] [--torch_form=both]
        [--torch_compile] [--frameworks=jax,torch] [--out=results.jsonl]

Both frameworks run the baseline step (R alone) and the APRN step (Eq. 2) of the config on the
same random batch: JAX the pmapped `aprn_jax.train_step` on one device (as
benchmarks/train_step.py), PyTorch `benchmarks/torch_reference.ReferenceStep` (parameter
counts asserted equal to the JAX models') in a process of its own (`TorchProcess`). After
compiling and --warmup untimed steps of each, --rounds rounds alternate the frameworks: JAX's
steps, then PyTorch's, each round timing --steps calls of each step kind in turn
(`common.time_interleaved`), so load from other processes falls on both alike. A framework's images/s is the median over rounds of
batch / (the round's median step seconds); `jax_over_torch` is the ratio of those medians.

FLOPs are counted the same way for both, from the layer shapes (benchmarks/flop_count.py,
`flops.definition` in the JSON): `model_flops_per_step` is the matmul count (convolutions,
dense layers, optimizer) of the step as Eq. 2 needs it (D's forward once), the same for both
frameworks; PyTorch's two-forward form also reports its `executed_flops_per_step`. On GPUs
whose peak is in PEAK_TFLOPS, MFU = model FLOPs per second over the dense peak of the
step's precision. XLA's own count of the JAX steps is recorded too (`flops.xla`): on CPU the
compiled programs' (`common.flops`), and everywhere the baseline step lowered for the CPU
backend (no compile), since on GPUs XLA's count leaves out cuDNN's convolutions.

PyTorch is optional (requirements-bench.txt); `--frameworks=jax` times this project alone.
"""
import os
import statistics
import sys
import time

# On a GPU both frameworks share the device: JAX takes this share of its memory, PyTorch's
# caching allocator the rest (JAX's default, 75%, leaves too little for ResNet-101).
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aprn_jax import models, train_state, train_step
from aprn_jax.models import layers
from benchmarks import common, flop_count
from input_pipeline import landmarks

FLAGS = flags.FLAGS
FRAMEWORKS = ("jax", "torch")
TORCH_FORMS = ("once", "two_forward", "both")

# Dense (no 2:4 sparsity) peak TFLOP/s by device name, from NVIDIA's datasheets for the SXM
# parts: H100 and H200 (the same compute) bf16 tensor cores 989.4, fp32 without tensor cores
# 66.9, TF32 tensor cores 494.7; A100 bf16 312, fp32 19.5, TF32 156. Both frameworks' default
# float32 convolutions on these GPUs may run on TF32 tensor cores (XLA's default precision;
# PyTorch's cuDNN default, and its matmuls with --torch_tf32), so float32 MFU against the
# plain fp32 peak can pass 1: `mfu_tf32` is against the TF32 peak.
PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.4, "float32": 66.9, "tf32": 494.7},
    "H200": {"bfloat16": 989.4, "float32": 66.9, "tf32": 494.7},
    "A100": {"bfloat16": 312.0, "float32": 19.5, "tf32": 156.0},
}
PEAK_SOURCE = ("NVIDIA datasheets (SXM, dense): H100/H200 bf16 989.4, fp32 66.9, TF32 494.7 "
               "TFLOP/s; A100 bf16 312, fp32 19.5, TF32 156")


def define_flags():
  common.define_model_flags("Batch of both frameworks' steps (default: "
                            "config.train.batch_size).", "steps of each kind per round")
  flags.DEFINE_integer("rounds", 3, "Alternating rounds (JAX, then PyTorch).")
  flags.DEFINE_list("frameworks", list(FRAMEWORKS), "Frameworks to time: jax, torch.")
  flags.DEFINE_enum("torch_form", "once", TORCH_FORMS, "PyTorch APRN step: D's forward once "
                    "(autograd to D's parameters, then R's one backward), the public code's "
                    "two forwards, or both timed.")
  flags.DEFINE_bool("torch_compile", False, "torch.compile the PyTorch backbone.")
  flags.DEFINE_bool("channels_last", True, "PyTorch channels-last memory format.")
  flags.DEFINE_bool("torch_tf32", True, "On GPU, let PyTorch's float32 convolutions and "
                    "matmuls use TF32, as XLA's default precision does.")
  flags.DEFINE_integer("torch_threads", None, "torch.set_num_threads (default: PyTorch's).")
  flags.DEFINE_bool("xla_cpu_count", True, "Also count the JAX baseline step's FLOPs with "
                    "XLA's CPU cost analysis of its lowered program.")


def peak_tflops(device_kind):
  for name, peaks in PEAK_TFLOPS.items():
    if name in device_kind:
      return peaks
  return None


def random_batch(config, batch_size, num_classes, num_landmarks):
  """Numpy arrays of one device's batch (images NHWC) and a mean face, from config.seed."""
  rng = np.random.RandomState(config.seed)
  size = config.data.image_size
  return dict(
      image=rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
      label=rng.randint(0, num_classes, (batch_size,)).astype(np.int32),
      landmarks=rng.uniform(-0.8, 0.8, (batch_size, num_landmarks, 2)).astype(np.float32),
  ), rng.uniform(-0.5, 0.5, (num_landmarks, 2)).astype(np.float32)


def jax_steps(config, host_batch, mean_face, num_classes, num_landmarks):
  """{'baseline', 'aprn'}: (run_once, lowered, compiled, compile_s) of the pmapped step on one
  device, and the abstract arguments (for a CPU lowering)."""
  size, tap = config.data.image_size, config.aprn.tap
  recognizer, disc = models.make_models(config, num_classes=num_classes,
                                        num_landmarks=num_landmarks, axis_name=train_step.AXIS)
  r_tx = train_state.make_optimizer(config.optim, steps_per_epoch=1000)
  d_tx = train_state.make_optimizer(config.aprn.d_optim, steps_per_epoch=1000,
                                    option="config.aprn.d_optim")
  state = train_state.create(recognizer, disc, r_tx, d_tx, jax.random.key(config.seed), size,
                             tap)
  batch = jax.pmap(lambda x: x)(jax.tree.map(lambda a: a[None], host_batch))
  mean_face = jnp.asarray(mean_face)
  static = dict(recognizer=recognizer, discriminator=disc, r_tx=r_tx, d_tx=d_tx, tap=tap,
                variant=config.aprn.loss, alpha=config.aprn.alpha,
                d_period=config.aprn.d_period, adv_period=config.aprn.adv_period)
  steps = {}
  for kind, with_pose in (("baseline", False), ("aprn", True)):
    fn = train_step.pmap_train_step(with_pose=with_pose, **static)
    lowered, compiled, compile_s = common.compile_timed(fn, state, batch, mean_face)
    run_once = lambda c=compiled: jax.block_until_ready(c(state, batch, mean_face))
    steps[kind] = dict(run=run_once, lowered=lowered, compiled=compiled, compile_s=compile_s)
  args = (state, batch, mean_face)
  return steps, static, args


def xla_cpu_lowered_flops(static, args, with_pose=False):
  """XLA's CPU cost analysis of the step lowered (not compiled) for the CPU backend."""
  step = lambda state, batch, mean_face: train_step.train_step(
      state, batch, mean_face, with_pose=with_pose, **static)
  fn = jax.pmap(step, axis_name=train_step.AXIS, in_axes=(None, 0, None),
                out_axes=(None, None), devices=jax.devices("cpu")[:1])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
  return common.flop_count(fn.lower(*abstract))


def torch_step(config, host_batch, mean_face, num_classes, num_landmarks, *, device, form,
               compile, channels_last, tf32, threads):
  import torch
  from benchmarks import torch_reference
  if threads:
    torch.set_num_threads(threads)
  step = torch_reference.ReferenceStep(
      config, num_classes=num_classes, num_landmarks=num_landmarks, device=device,
      mean_face=mean_face, form=form, channels_last=channels_last, compile=compile, tf32=tf32,
      seed=config.seed)
  batch = step.make_batch(host_batch["image"], host_batch["label"], host_batch["landmarks"],
                          mean_face)
  return step, batch


def _torch_worker(connection, config, host_batch, mean_face, num_classes, num_landmarks,
                  options):
  """The PyTorch side, in its own process: builds the step, sends its figures, then times a
  round of --steps calls of each step kind whenever asked, until sent None."""
  import torch  # first, so PyTorch runs with its own OpenMP runtime, as it does alone
  try:
    device = "cuda" if options["gpu"] else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
      raise RuntimeError("JAX runs on a GPU but this PyTorch has no CUDA: install a CUDA "
                         "build of torch==2.13.0, or pass --frameworks=jax")
    torch_form = options["form"]
    first_form = "two_forward" if torch_form == "two_forward" else "once"
    start = time.perf_counter()
    step, batch = torch_step(config, host_batch, mean_face, num_classes, num_landmarks,
                             device=device, form=first_form, compile=options["compile"],
                             channels_last=options["channels_last"], tf32=options["tf32"],
                             threads=options["threads"])
    build_s = time.perf_counter() - start
    forms = ("once", "two_forward") if torch_form == "both" else (first_form,)
    calls = {"baseline": lambda: (step.baseline(batch), step.synchronize())}
    for form in forms:
      calls[f"aprn_{form}"] = (lambda f=form: (step.aprn(batch, form=f), step.synchronize()))
    first_s = {}
    for kind, call in calls.items():  # the first call of each compiles, with torch_compile
      start = time.perf_counter()
      call()
      first_s[kind] = time.perf_counter() - start
      for _ in range(options["warmup"]):
        call()
    losses = step.aprn(batch, form=forms[0])
    counts = flop_count.param_counts(config, num_classes, num_landmarks)
    connection.send({
        "version": torch.__version__, "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else None,
        "threads": torch.get_num_threads(), "forms": list(forms),
        "process": "own", "keeps_freed_memory": common.KEEPS_FREED_MEMORY,
        "compile": bool(options["compile"]),
        "channels_last": bool(options["channels_last"]),
        "autocast": config.model.dtype if config.model.dtype == "bfloat16" else None,
        "tf32": bool(options["tf32"]) if device == "cuda" else None,
        "build_s": build_s, "first_call_s": first_s,
        "finite_losses": bool(all(torch.isfinite(v).item() for v in losses.values())),
        "param_counts_equal_jax": step.counts == counts,
    })
    while (steps := connection.recv()) is not None:
      timings = common.time_interleaved(calls, steps)
      if device == "cuda":
        timings["peak_memory_mib"] = torch.cuda.max_memory_allocated() / common.MIB
      connection.send(timings)
  except Exception as error:  # the parent re-raises it with the worker's traceback
    import traceback
    connection.send(RuntimeError(f"PyTorch side: {error}\n{traceback.format_exc()}"))


class TorchProcess:
  """The PyTorch step in a process of its own (`_torch_worker`), timed on request.

  In this process, after JAX's steps had run, PyTorch's CPU step took 1.3 to 1.45x as long
  as alone (page faults on every freshly allocated tensor, system time); in its own process
  each framework has its own allocator, threads and OpenMP runtime, as a user's would, and
  the rounds still alternate, so load from other processes falls on both alike."""

  def __init__(self, config, host_batch, mean_face, num_classes, num_landmarks, **options):
    import multiprocessing
    from benchmarks import compare_torch  # by its import name, when this file runs as main
    context = multiprocessing.get_context("spawn")
    self._connection, child = context.Pipe()
    self._process = context.Process(target=compare_torch._torch_worker, daemon=True, args=(
        child, config, host_batch, mean_face, num_classes, num_landmarks, options))
    self._process.start()
    self.info = self._receive()
    self.peak_memory_mib = None

  def _receive(self):
    if not self._connection.poll(3600):
      raise RuntimeError("the PyTorch process sent nothing for an hour")
    message = self._connection.recv()
    if isinstance(message, Exception):
      raise message
    return message

  def time_round(self, steps):
    self._connection.send(steps)
    timings = self._receive()
    self.peak_memory_mib = timings.pop("peak_memory_mib", None)
    return timings

  def close(self):
    if self._process.is_alive():
      self._connection.send(None)
      self._process.join(30)
    if self._process.is_alive():
      self._process.kill()


def _entry(seconds_by_round, batch_size, model_flops, peaks, dtype):
  """A framework's figures for one step kind from its per-round median seconds."""
  per_round = [batch_size / s for s in seconds_by_round]
  images_per_s = statistics.median(per_round)
  achieved = model_flops * images_per_s / batch_size
  entry = dict(images_per_s=images_per_s, step_s=batch_size / images_per_s,
               images_per_s_by_round=per_round, model_flops_per_step=model_flops,
               achieved_tflops=achieved / 1e12, mfu=None)
  if peaks:
    entry["mfu"] = achieved / (peaks[dtype] * 1e12)
    if dtype == "float32":
      entry["mfu_tf32"] = achieved / (peaks["tf32"] * 1e12)
  return entry


def measure(config, *, batch_size, rounds, steps, warmup, num_classes, num_landmarks,
            frameworks=FRAMEWORKS, torch_form="once", torch_compile=False, channels_last=True,
            torch_tf32=True, torch_threads=None, xla_cpu_count=True):
  """The JSON record (see the module docstring)."""
  frameworks = tuple(frameworks)
  unknown = set(frameworks) - set(FRAMEWORKS)
  if unknown or not frameworks:
    raise ValueError(f"--frameworks={','.join(frameworks)}: choose from {FRAMEWORKS}")
  if torch_form not in TORCH_FORMS:
    raise ValueError(f"--torch_form={torch_form!r}: one of {TORCH_FORMS}")
  if batch_size < 1 or rounds < 1 or steps < 1 or warmup < 0:
    raise ValueError("--batch_size, --rounds and --steps must be at least 1, --warmup >= 0")
  device = jax.local_devices()[0]
  dtype = config.model.dtype
  peaks = peak_tflops(device.device_kind) if device.platform == "gpu" else None
  host_batch, mean_face = random_batch(config, batch_size, num_classes, num_landmarks)
  counts = flop_count.param_counts(config, num_classes, num_landmarks)
  analytic = {"baseline": flop_count.step_flops(config, batch_size, num_classes, num_landmarks,
                                                "baseline"),
              "aprn": flop_count.step_flops(config, batch_size, num_classes, num_landmarks,
                                            "aprn"),
              "aprn_two_forward": flop_count.step_flops(config, batch_size, num_classes,
                                                        num_landmarks, "aprn", d_forwards=2)}
  machine = common.machine([device])
  machine["jax_version"] = machine.pop("jax")  # "jax" and "torch" hold each one's figures
  record = {"benchmark": "compare_torch", "model": common.model_summary(config),
            "tap": config.aprn.tap, "loss": config.aprn.loss, "head": config.model.head,
            "num_classes": num_classes, "num_landmarks": num_landmarks,
            "batch": batch_size, "rounds": rounds, "steps": steps, "warmup": warmup,
            **machine, "params": counts,
            "flops": {"definition": flop_count.DEFINITION,
                      **{k: {f: v[f] for f in ("matmul", "elementwise", "total",
                                               "dense_conv_flops")}
                         for k, v in analytic.items()}}}
  record["load_average"] = {"start": os.getloadavg()[0]}  # 1-minute: is the machine quiet?
  record["keeps_freed_memory"] = common.KEEPS_FREED_MEMORY  # aprn_jax/host.py
  calls = {}

  if "jax" in frameworks:
    jsteps, static, args = jax_steps(config, host_batch, mean_face, num_classes, num_landmarks)
    for s in jsteps.values():
      for _ in range(warmup):
        s["run"]()
    xla = {}
    if device.platform == "cpu":
      # XLA's cost analysis leaves out FFI calls (the oneDNN layers): it counts the same step
      # in XLA's own layer forms.
      counted = config.copy_and_resolve_references()
      if layers.cpu_forms(config.model.layer_forms) == "onednn":
        counted.model.layer_forms = "xla"
      counted_steps = (jax_steps(counted, host_batch, mean_face, num_classes, num_landmarks)[0]
                       if counted.model.layer_forms != config.model.layer_forms else jsteps)
      for kind, s in counted_steps.items():
        xla[kind] = {"compiled": common.flops(s["lowered"], s["compiled"]),
                     "unoptimised": common.flop_count(s["lowered"]),
                     "layer_forms": counted.model.layer_forms}
    if xla_cpu_count and device.platform != "cpu":
      xla["baseline"] = {"cpu_unoptimised": xla_cpu_lowered_flops(static, args)}
    for kind, entry in xla.items():
      count = entry.get("compiled") or entry.get("unoptimised") or entry.get("cpu_unoptimised")
      entry["analytic_total_over_xla"] = analytic[kind]["total"] / count if count else None
      entry["analytic_matmul_over_xla"] = analytic[kind]["matmul"] / count if count else None
    record["flops"]["xla"] = xla
    record["jax_compile_s"] = {kind: s["compile_s"] for kind, s in jsteps.items()}
    calls["jax"] = {kind: s["run"] for kind, s in jsteps.items()}

  if "torch" in frameworks:
    torch_side = TorchProcess(
        config, host_batch, mean_face, num_classes, num_landmarks, warmup=warmup,
        gpu=device.platform == "gpu", form=torch_form, compile=torch_compile,
        channels_last=channels_last, tf32=torch_tf32, threads=torch_threads)
    record["torch"] = torch_side.info
    calls["torch"] = torch_side

  seconds = {fw: {} for fw in calls}
  try:
    for _ in range(rounds):
      for fw, fw_calls in calls.items():
        timings = (fw_calls.time_round(steps) if fw == "torch"
                   else common.time_interleaved(fw_calls, steps))
        for kind, timing in timings.items():
          seconds[fw].setdefault(kind, []).append(timing["median_s"])
  finally:
    if "torch" in calls:
      calls["torch"].close()
  record["load_average"]["end"] = os.getloadavg()[0]
  model_flops = {kind: analytic[kind]["matmul"] for kind in ("baseline", "aprn")}
  for fw, by_kind in seconds.items():
    for kind, s in by_kind.items():
      base_kind = "baseline" if kind == "baseline" else "aprn"
      entry = _entry(s, batch_size, model_flops[base_kind], peaks, dtype)
      if kind == "aprn_two_forward":
        entry["executed_flops_per_step"] = analytic["aprn_two_forward"]["matmul"]
      record.setdefault(fw, {})[kind] = entry
  if "torch" in record:  # PyTorch's APRN figure: its faster form
    tforms = {k: v for k, v in record["torch"].items() if k.startswith("aprn_")}
    best = max(tforms, key=lambda k: tforms[k]["images_per_s"])
    record["torch"]["aprn"] = dict(tforms[best], form=best[len("aprn_"):])
  if "jax" in record and "torch" in record:
    record["jax_over_torch"] = {
        kind: record["jax"][kind]["images_per_s"] / record["torch"][kind]["images_per_s"]
        for kind in ("baseline", "aprn")}
    for kind in record["torch"]:
      if kind.startswith("aprn_"):
        record["jax_over_torch"][kind] = (record["jax"]["aprn"]["images_per_s"]
                                          / record["torch"][kind]["images_per_s"])
  if device.platform == "gpu":
    record["peak_tflops"] = peaks
    record["peak_source"] = PEAK_SOURCE if peaks else None
    if "torch" in calls and record["torch"]["device"] == "cuda":
      record["torch"]["peak_memory_mib"] = calls["torch"].peak_memory_mib
  return record


def main(argv):
  config = common.model_config(argv)
  record = measure(config, batch_size=FLAGS.batch_size or config.train.batch_size,
                   rounds=FLAGS.rounds, steps=FLAGS.steps, warmup=FLAGS.warmup,
                   num_classes=FLAGS.num_classes,
                   num_landmarks=landmarks.NUM_POINTS[FLAGS.landmarks],
                   frameworks=FLAGS.frameworks, torch_form=FLAGS.torch_form,
                   torch_compile=FLAGS.torch_compile, channels_last=FLAGS.channels_last,
                   torch_tf32=FLAGS.torch_tf32, torch_threads=FLAGS.torch_threads,
                   xla_cpu_count=FLAGS.xla_cpu_count)
  record["config"] = config_flags.get_config_filename(FLAGS["config"])
  record["layer_forms"] = config.model.layer_forms
  common.emit(record, FLAGS.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
