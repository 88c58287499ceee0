"""Train-step throughput: the baseline step next to the APRN step; prints one JSON object.

    python benchmarks/train_step.py --config=configs/default.py [--batch_size=64]
        [--devices=4] [--steps=10] [--dtype=bfloat16] [--config.model.layer_forms=flax]
        [--out=results.jsonl]
        [--config.model.depth=101 ...]

Both steps are the pmapped `aprn_jax.train_step` on random data of the config's shapes (no
data set), with the batch already on the devices. For each: lower + compile seconds, median
seconds of the timed steps after warm-up, images/s, XLA's FLOP count of the compiled step,
XLA's static memory figure and the measured memory peak; on an H100/H200 also model FLOPs
utilisation. Then the measured APRN/baseline step-time ratio next to the FLOP ratio.

To tell wasted work from slow work, D is also compiled and timed alone on one device's share
of the tap: its forward, and its update (forward, backward to its parameters and to the tap,
optimizer). The APRN step should add D's update and nothing more: `extra_over_d_update`
near 1 (about 3 D forwards, `extra_over_d_forward`), and in time `aprn_over_baseline_plus_d_time`
near 1. The baseline step, the APRN step and D's update alternate while timed, so load from
other processes spreads over all three alike. --devices on CPU makes that many host devices.
"""
import os
import sys

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aprn_jax import losses, models, train_state, train_step
from benchmarks import common
from input_pipeline import landmarks

FLAGS = flags.FLAGS
common.define_model_flags("Global batch (default: config.train.batch_size).",
                          "steps of each kind")
flags.DEFINE_integer("devices", None, "Local devices to use (default: all). On CPU, makes "
                     "this many fake host devices.")


def random_batch(rng, num_devices, per_device, image_size, num_classes, num_landmarks):
  """A batch of the step's shapes, with a leading device axis, and a mean face."""
  lead = (num_devices, per_device)
  batch = dict(
      image=rng.uniform(-1, 1, lead + (image_size, image_size, 3)).astype(np.float32),
      label=rng.randint(0, num_classes, lead).astype(np.int32),
      landmarks=rng.uniform(-0.8, 0.8, lead + (num_landmarks, 2)).astype(np.float32))
  return batch, rng.uniform(-0.5, 0.5, (num_landmarks, 2)).astype(np.float32)


def discriminator_probe(config, state, tx, images, labels, targets, num_classes,
                        num_landmarks):
  """D alone on a random tap of one device's batch: (forward FLOPs, update FLOPs, update call).

  The update is D's share of the APRN step: forward, backward to D's parameters and to the
  tap, and D's optimizer update. The call runs it once, so its time is D's own cost.
  """
  recognizer, disc = models.make_models(config, num_classes=num_classes,
                                        num_landmarks=num_landmarks)
  tap = jax.eval_shape(
      lambda v, x, y: recognizer.apply(v, x, y, train=False)["taps"][config.aprn.tap],
      state.recognizer, images, labels)
  features = jnp.asarray(np.random.RandomState(0).uniform(0, 1, tap.shape), tap.dtype)
  params, stats = state.discriminator["params"], state.discriminator["batch_stats"]

  def pose_loss(params, features):
    y, _ = disc.apply({"params": params, "batch_stats": stats}, features, train=True,
                      mutable=["batch_stats"])
    return losses.l1(y, targets)

  def update(params, opt_state, features):
    grads, tap_grads = jax.grad(pose_loss, (0, 1))(params, features)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, tap_grads

  args = (params, state.discriminator_opt, features)
  forward = common.compile_timed(jax.jit(pose_loss), params, features)[:2]
  lowered, compiled, _ = common.compile_timed(jax.jit(update), *args)
  run_once = lambda: jax.block_until_ready(compiled(*args))
  return common.flops(*forward), common.flops(lowered, compiled), run_once


def measure(config, *, batch_size, num_devices, steps, warmup, num_classes, num_landmarks):
  """The benchmark's JSON record for `config` (see the module docstring)."""
  devices = jax.local_devices()
  if num_devices is None:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f"--devices={num_devices}: this host has {len(devices)} local devices")
  if batch_size < num_devices or batch_size % num_devices:
    raise ValueError(f"--batch_size={batch_size} is not a positive multiple of the "
                     f"{num_devices} devices")
  if steps < 1 or warmup < 0:
    raise ValueError(f"--steps={steps} must be at least 1 and --warmup={warmup} at least 0")
  devices = devices[:num_devices]
  per_device = batch_size // num_devices
  size, tap = config.data.image_size, config.aprn.tap

  recognizer, disc = models.make_models(config, num_classes=num_classes,
                                        num_landmarks=num_landmarks, axis_name=train_step.AXIS)
  tx = train_state.make_optimizer(config.optim, steps_per_epoch=1000)
  state = train_state.create(recognizer, disc, tx, tx, jax.random.key(config.seed), size, tap)
  host_batch, mean_face = random_batch(np.random.RandomState(config.seed), num_devices,
                                       per_device, size, num_classes, num_landmarks)
  batch = jax.pmap(lambda x: x)(host_batch)  # device-resident: no host transfer is timed
  mean_face = jnp.asarray(mean_face)

  static = dict(recognizer=recognizer, discriminator=disc, r_tx=tx, d_tx=tx, tap=tap,
                variant=config.aprn.loss, alpha=config.aprn.alpha,
                d_period=config.aprn.d_period, adv_period=config.aprn.adv_period)
  calls, record = {}, {}
  for kind, with_pose in (("baseline", False), ("aprn", True)):
    step_fn = train_step.pmap_train_step(with_pose=with_pose, **static)
    lowered, compiled, compile_s = common.compile_timed(step_fn, state, batch, mean_face)
    run_once = lambda c=compiled: jax.block_until_ready(c(state, batch, mean_face))
    for _ in range(warmup):
      run_once()
    peak, peak_source = common.peak_memory_bytes(devices[0])
    calls[kind] = run_once
    unoptimised = common.flop_count(lowered)
    record[kind] = {
        "compile_s": compile_s,
        "flops_per_step": common.flops(lowered, compiled) * num_devices,
        "flops_per_step_unoptimised": unoptimised and unoptimised * num_devices,
        "xla_memory_mib_per_device": common.xla_memory_mib(compiled),
        "peak_memory_mib": peak / common.MIB,
        "peak_memory_source": peak_source,
    }

  d_forward, d_update, calls["discriminator"] = discriminator_probe(
      config, state, tx, host_batch["image"][0], host_batch["label"][0],
      host_batch["landmarks"][0], num_classes, num_landmarks)
  for _ in range(warmup):
    calls["discriminator"]()

  timings = common.time_interleaved(calls, steps)
  for kind in ("baseline", "aprn"):
    entry, seconds = record[kind], timings[kind]["median_s"]
    achieved = entry["flops_per_step"] / num_devices / seconds
    entry.update(step_s=seconds, step_s_min=timings[kind]["min_s"],
                 images_per_s=batch_size / seconds,
                 achieved_tflops_per_device=achieved / 1e12,
                 mfu=common.utilisation(achieved, devices[0], config.model.dtype))
  d_seconds = timings["discriminator"]["median_s"]
  base, aprn = record["baseline"], record["aprn"]
  extra = aprn["flops_per_step"] - base["flops_per_step"]
  time_ratio = aprn["step_s"] / base["step_s"]
  flops_ratio = aprn["flops_per_step"] / base["flops_per_step"]
  return {
      "benchmark": "train_step",
      "model": common.model_summary(config), "tap": tap, "loss": config.aprn.loss,
      "num_classes": num_classes, "num_landmarks": num_landmarks,
      "global_batch": batch_size, "per_device_batch": per_device,
      "steps": steps, "warmup": warmup, **common.machine(devices),
      "recognizer_params": common.param_count(state.recognizer["params"]),
      "discriminator_params": common.param_count(state.discriminator["params"]),
      **record,
      # D alone, one device's share: forward, backward to its parameters and to the tap,
      # optimizer update.
      "discriminator": {
          "forward_flops": d_forward * num_devices,
          "update_flops": d_update * num_devices,
          "update_s": d_seconds,
          "achieved_tflops_per_device": d_update / d_seconds / 1e12,
      },
      "aprn_extra_flops": extra,
      "extra_over_d_forward": extra / (d_forward * num_devices),
      "extra_over_d_update": extra / (d_update * num_devices),
      "aprn_over_baseline_time": time_ratio,
      "aprn_over_baseline_time_min": aprn["step_s_min"] / base["step_s_min"],
      "flops_ratio": flops_ratio,
      "time_ratio_over_flops_ratio": time_ratio / flops_ratio,
      "aprn_over_baseline_plus_d_time": aprn["step_s"] / (base["step_s"] + d_seconds),
      "peak_flops_source": common.PEAK_SOURCE if aprn["mfu"] is not None else None,
  }


def main(argv):
  if FLAGS.devices is not None:
    common.set_host_device_count(FLAGS.devices)  # before JAX first lists its devices
  config = common.model_config(argv)
  record = measure(config, batch_size=FLAGS.batch_size or config.train.batch_size,
                   num_devices=FLAGS.devices, steps=FLAGS.steps, warmup=FLAGS.warmup,
                   num_classes=FLAGS.num_classes,
                   num_landmarks=landmarks.NUM_POINTS[FLAGS.landmarks])
  record["config"] = config_flags.get_config_filename(FLAGS["config"])
  record["layer_forms"] = config.model.layer_forms
  common.emit(record, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
