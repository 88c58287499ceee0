"""Memory and step time of the identity classifier: dense, sharded, sharded with Partial FC
sampling, at 100k to 10M identities on several fake CPU devices; prints one JSON object.

    python benchmarks/classifier.py [--devices=4,8] [--num_classes=100000,1000000,10000000]
        [--variants=dense,sharded_1.0,sharded_0.1] [--embedding_dim=64]
        [--per_device_batch=4] [--head=arcface] [--steps=3] [--memory_budget_mib=10240]
        [--out=results.jsonl]

Each (device count, identities, variant) runs in a subprocess of its own, since XLA's count of
fake host devices is fixed when JAX starts (XLA_FLAGS=--xla_force_host_platform_device_count).
The step is the pmapped baseline step of `aprn_jax.train_step` (no discriminator) on
configs/tiny.py's backbone (32x32 input, width 4) with a `--embedding_dim` embedding and the
`--head` margin, on random data of the step's shapes, the global batch `--per_device_batch`
x devices. For each: XLA's memory figure of the compiled step for one device (arguments +
outputs + temporaries - aliased; `common.xla_memory_mib`; the step does not donate its
state, as the trainer runs it, so the rows and their optimizer state count as input and
again as updated output), the bytes of the classifier's parameters and optimizer state one
device holds, and, when the step fits, its median time.
`classifier_mib_per_device` is the step's figure minus that of the same step with a
classifier of one class per device (the `backbone` run): what the classifier adds. Fake
devices share this host's memory, so a step whose figure times the device count exceeds
`--memory_budget_mib` is compiled but not run (`skipped` says why). On a GPU or TPU host
`--devices=1` (or the chip count) measures the real device (benchmarks/gpu_check.sh).
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # imports jax, which lists no devices before main

FLAGS = flags.FLAGS
flags.DEFINE_list("devices", ["4", "8"], "Device counts (fake CPU devices on a CPU host).")
flags.DEFINE_list("num_classes", ["100000", "1000000", "10000000"], "Identities.")
flags.DEFINE_list("variants", ["dense", "sharded_1.0", "sharded_0.1"],
                  "dense, or sharded_<sample rate>.")
flags.DEFINE_integer("embedding_dim", 64, "Embedding size.")
flags.DEFINE_integer("per_device_batch", 4, "Images per device and step.")
flags.DEFINE_enum("head", "arcface", ["softmax", "cosface", "arcface"], "Margin head.")
flags.DEFINE_integer("steps", 3, "Timed steps.")
flags.DEFINE_integer("warmup", 1, "Untimed steps after compiling.")
flags.DEFINE_integer("memory_budget_mib", 10240, "Run a step only if XLA's figure times the "
                     "device count is within this (fake devices share the host's memory).")
flags.DEFINE_string("child", None, "Internal: measure one JSON-encoded configuration.")
flags.DEFINE_string("out", None, "Also append the JSON line to this file.")


def variant_settings(variant):
  """(classifier, sample_rate) of a variant name."""
  if variant in ("dense", "backbone"):
    return "dense", 1.0
  if variant.startswith("sharded_"):
    return "sharded", float(variant[len("sharded_"):])
  raise ValueError(f"--variants: {variant!r} is not dense or sharded_<sample rate>")


def make_config(run):
  from configs import tiny
  config = tiny.get_config()
  classifier, rate = variant_settings(run["variant"])
  config.model.update(embedding_dim=run["embedding_dim"], head=run["head"], s=64.0, m=0.5,
                      classifier=classifier, sample_rate=rate)
  return config


def tree_bytes(tree):
  import jax
  import numpy as np
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def measure(run):
  """One configuration's record (in a process with `run['num_devices']` devices)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from aprn_jax import models, train_state, train_step
  from aprn_jax.models import partial_fc

  devices = jax.local_devices()
  n = run["num_devices"]
  if len(devices) != n:
    raise ValueError(f"--devices={n}: this host has {len(devices)} local devices")
  config = make_config(run)
  classes = n if run["variant"] == "backbone" else run["num_classes"]
  recognizer, disc = models.make_models(config, num_classes=classes, num_landmarks=51,
                                        axis_name=train_step.AXIS)
  tx = train_state.make_optimizer(config.optim, steps_per_epoch=1000)
  size, tap, dim = config.data.image_size, config.aprn.tap, run["embedding_dim"]
  b = run["per_device_batch"]

  # Abstract state and batch: XLA's figure needs no arrays, so sizes that cannot run here
  # are compiled too.
  r_vars, d_vars = train_state.variable_shapes(recognizer, disc, size, tap)
  classifier = None
  if partial_fc.is_sharded(recognizer):
    classifier = jax.eval_shape(
        lambda key: partial_fc.init(recognizer.head, key, dim, tx, devices), jax.random.key(0))
  abstract = train_state.TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32), rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
      recognizer=r_vars, discriminator=d_vars,
      recognizer_opt=jax.eval_shape(tx.init, r_vars["params"]),
      discriminator_opt=jax.eval_shape(tx.init, d_vars["params"]), classifier=classifier)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  batch_shapes = {"image": f32(n, b, size, size, 3), "label": jax.ShapeDtypeStruct((n, b),
                  jnp.int32), "landmarks": f32(n, b, 51, 2)}
  step_fn = train_step.pmap_train_step(recognizer=recognizer, discriminator=disc, r_tx=tx,
                                       d_tx=tx, tap=tap, with_pose=False)
  _, compiled, compile_s = common.compile_timed(step_fn, abstract, batch_shapes, f32(51, 2))
  stats = compiled.memory_analysis()
  xla_mib = common.xla_memory_mib(compiled)
  if classifier is not None:
    state_bytes = tree_bytes(classifier) / n  # one device's rows and their optimizer state
  else:
    head = {"p": r_vars["params"].get("head", {})}
    state_bytes = 2 * tree_bytes(head)  # the head and its momentum, on every device
  record = dict(run, classifier=variant_settings(run["variant"])[0],
                sample_rate=variant_settings(run["variant"])[1], num_classes=classes,
                global_batch=n * b, compile_s=compile_s, xla_memory_mib_per_device=xla_mib,
                xla_memory_mib={k: getattr(stats, f"{k}_size_in_bytes") / common.MIB
                                for k in ("argument", "output", "temp", "alias")},
                classifier_state_mib_per_device=state_bytes / common.MIB,
                **common.machine(devices))
  if classifier is not None:
    rows = partial_fc.shard_rows(classes, n)
    record.update(rows_per_device=rows,
                  sample_size=partial_fc.sample_size(rows, recognizer.head.sample_rate, n * b))
  if xla_mib * n > run["memory_budget_mib"]:
    record.update(ran=False, skipped=(
        f"XLA's figure {xla_mib:.0f} MiB x {n} devices exceeds --memory_budget_mib="
        f"{run['memory_budget_mib']}: the fake devices share this host's memory"))
    return record

  rng = np.random.RandomState(0)
  host_batch = {"image": rng.uniform(-1, 1, (n, b, size, size, 3)).astype(np.float32),
                "label": rng.randint(0, classes, (n, b)).astype(np.int32),
                "landmarks": rng.uniform(-0.8, 0.8, (n, b, 51, 2)).astype(np.float32)}
  batch = jax.pmap(lambda x: x)(host_batch)
  mean_face = jnp.zeros((51, 2), jnp.float32)
  state = train_step.replicate(train_state.create(recognizer, disc, tx, tx, jax.random.key(0),
                                                  size, tap))
  run_once = lambda: jax.block_until_ready(compiled(state, batch, mean_face))
  for _ in range(run["warmup"]):
    run_once()
  seconds = []
  for _ in range(run["steps"]):
    start = time.perf_counter()
    run_once()
    seconds.append(time.perf_counter() - start)
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's
  record.update(ran=True, skipped=None, step_s=statistics.median(seconds),
                step_s_min=min(seconds), peak_rss_mib=peak_mib)
  return record


def run_child(run):
  """Measures `run` in a subprocess with its own device count; its record."""
  env = dict(os.environ)
  kept = [f for f in env.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(kept + [
      f"--xla_force_host_platform_device_count={run['num_devices']}"])
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), f"--child={json.dumps(run)}"], env=env,
      capture_output=True, text=True)
  if proc.returncode != 0:
    return dict(run, ran=False, skipped=f"failed (exit {proc.returncode}): "
                f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(records):
  """classifier_mib_per_device and the ratios the docs quote, per (devices, identities)."""
  backbone = {r["num_devices"]: r["xla_memory_mib_per_device"] for r in records
              if r["variant"] == "backbone" and "xla_memory_mib_per_device" in r}
  for r in records:
    if (r["variant"] != "backbone" and "xla_memory_mib_per_device" in r
        and r["num_devices"] in backbone):
      r["classifier_mib_per_device"] = r["xla_memory_mib_per_device"] - backbone[r["num_devices"]]
  ratios = []
  by_key = {(r["num_devices"], r["num_classes"], r["variant"]): r for r in records}
  for (n, classes, variant), r in sorted(by_key.items()):
    dense, full = by_key.get((n, classes, "dense")), by_key.get((n, classes, "sharded_1.0"))
    if variant == "sharded_1.0" and dense and "classifier_mib_per_device" in dense:
      ratios.append({"num_devices": n, "num_classes": classes,
                     "sharded_1.0_over_dense": r["classifier_mib_per_device"]
                     / dense["classifier_mib_per_device"]})
    if variant.startswith("sharded_") and variant != "sharded_1.0" and full:
      ratios.append({"num_devices": n, "num_classes": classes,
                     f"{variant}_over_sharded_1.0": r["classifier_mib_per_device"]
                     / full["classifier_mib_per_device"]})
  return ratios


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.child:
    print(json.dumps(measure(json.loads(FLAGS.child))), flush=True)
    return
  for variant in FLAGS.variants:
    variant_settings(variant)  # a bad name fails before any run
  common_run = dict(embedding_dim=FLAGS.embedding_dim, per_device_batch=FLAGS.per_device_batch,
                    head=FLAGS.head, steps=FLAGS.steps, warmup=FLAGS.warmup,
                    memory_budget_mib=FLAGS.memory_budget_mib)
  records = []
  for n in map(int, FLAGS.devices):
    runs = [dict(common_run, variant="backbone", num_devices=n, num_classes=n)]
    runs += [dict(common_run, variant=v, num_devices=n, num_classes=int(c))
             for c in FLAGS.num_classes for v in FLAGS.variants]
    for run in runs:
      records.append(run_child(run))
      print(json.dumps({k: records[-1].get(k) for k in (
          "num_devices", "num_classes", "variant", "xla_memory_mib_per_device", "step_s",
          "skipped")}), file=sys.stderr, flush=True)
  common.emit({"benchmark": "classifier", "cpu_model": common.cpu_model(),
               "host_cpus": os.cpu_count(), "ratios": summarise(records), "runs": records},
              FLAGS.out)


if __name__ == "__main__":
  app.run(main)
