"""Inference cost of the exported recognizer, APRN next to the baseline; prints one JSON object.

    python benchmarks/inference.py --config=configs/resnet101.py [--batch_size=64]
        [--steps=10] [--dtype=float32] [--out=results.jsonl] [--config.model.depth=152 ...]

APRN trains the pose discriminator D beside the recognizer R and drops it at export: the
deployed network is R's backbone (`inference.backbone_variables` + `Recognizer.embed`), so
APRN should cost nothing at inference. The script builds the train state of the config with
APRN on (phases baseline + aprn) and off (baseline only), exports each, and reports for both
the parameter count, XLA's FLOP count of the jitted embedding, its compile time and images/s
(the two alternate while timed; the batch is already on the device). `identical` is true when
the two exports have the same parameter tree (names, shapes, dtypes), the same FLOPs and the
same optimised XLA program; `exports_are_backbone_alone` when that tree is the backbone
module's own (neither the identity head nor D is left in it).
"""
import os
import sys

from absl import app, flags
import jax
import numpy as np
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aprn_jax import inference, models, train_state
from benchmarks import common
from input_pipeline import landmarks

FLAGS = flags.FLAGS
common.define_model_flags("Images per call (default: config.eval.batch_size).",
                          "calls of each export",
                          "Identities of the (dropped) classification head.")

PHASES = {"aprn": ("baseline", "aprn"), "baseline": ("baseline",)}


def export(config, phases, num_classes, num_landmarks):
  """(recognizer, exported variables, trained parameter count) of a fresh train state."""
  config = config.copy_and_resolve_references()
  config.train.phases = phases
  recognizer, disc = models.make_models(config, num_classes=num_classes,
                                        num_landmarks=num_landmarks)
  tx = train_state.make_optimizer(config.optim, steps_per_epoch=1000)
  state = train_state.create(recognizer, disc, tx, tx, jax.random.key(config.seed),
                             config.data.image_size, config.aprn.tap)
  trained = common.param_count(state.recognizer["params"])
  if "aprn" in phases:
    trained += common.param_count(state.discriminator["params"])
  return recognizer, inference.backbone_variables(state.recognizer), trained


def shapes(tree):
  """The tree's structure with (shape, dtype) leaves: what two exports must share."""
  return jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)


def backbone_alone_shapes(config):
  """`shapes` of the backbone's own variables, laid out as `backbone_variables` returns them.

  Built from the backbone module alone (no R head, no D), as an independent reference.
  """
  backbone = models.make_backbone(config.model)
  size = config.data.image_size
  variables = jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x, train=False),
                             jax.ShapeDtypeStruct((1, size, size, 3), np.float32))
  return shapes({kind: {"backbone": tree} for kind, tree in variables.items()})


def measure(config, *, batch_size, steps, warmup, num_classes, num_landmarks):
  """The benchmark's JSON record for `config` (see the module docstring)."""
  if batch_size < 1 or steps < 1 or warmup < 0:
    raise ValueError(f"--batch_size={batch_size} and --steps={steps} must be at least 1 and "
                     f"--warmup={warmup} at least 0")
  device = jax.local_devices()[0]
  size = config.data.image_size
  images = jax.device_put(np.random.RandomState(config.seed).uniform(
      -1, 1, (batch_size, size, size, 3)).astype(np.float32), device)

  record, calls, programs, trees = {}, {}, {}, {}
  for kind, phases in PHASES.items():
    recognizer, variables, trained = export(config, phases, num_classes, num_landmarks)
    embed = jax.jit(lambda v, x, r=recognizer: r.apply(v, x, method=models.Recognizer.embed))
    lowered, compiled, compile_s = common.compile_timed(embed, variables, images)
    calls[kind] = lambda c=compiled, v=variables: jax.block_until_ready(c(v, images))
    for _ in range(warmup):
      calls[kind]()
    programs[kind] = compiled.as_text()
    trees[kind] = shapes(variables)
    record[kind] = {
        "trained_params": trained,
        "exported_params": common.param_count(variables["params"]),
        "exported_batch_stats": common.param_count(variables.get("batch_stats", {})),
        "flops_per_image": common.flops(lowered, compiled) / batch_size,
        "compile_s": compile_s,
    }

  timings = common.time_interleaved(calls, steps)
  for kind, entry in record.items():
    seconds = timings[kind]["median_s"]
    achieved = entry["flops_per_image"] * batch_size / seconds
    entry.update(call_s=seconds, call_s_min=timings[kind]["min_s"],
                 images_per_s=batch_size / seconds, achieved_tflops=achieved / 1e12,
                 mfu=common.utilisation(achieved, device, config.model.dtype))

  same_tree = trees["aprn"] == trees["baseline"]
  same_flops = record["aprn"]["flops_per_image"] == record["baseline"]["flops_per_image"]
  same_program = programs["aprn"] == programs["baseline"]
  return {
      "benchmark": "inference",
      "model": common.model_summary(config), "batch_size": batch_size,
      "steps": steps, "warmup": warmup, **common.machine([device]),
      **record,
      "exports_are_backbone_alone": (trees["aprn"] == trees["baseline"]
                                     == backbone_alone_shapes(config)),
      "same_parameter_tree": same_tree, "same_flops": same_flops,
      "same_program": same_program,
      "identical": same_tree and same_flops and same_program,
      "aprn_over_baseline_time": record["aprn"]["call_s"] / record["baseline"]["call_s"],
      "peak_flops_source": common.PEAK_SOURCE if record["aprn"]["mfu"] is not None else None,
  }


def main(argv):
  config = common.model_config(argv)
  record = measure(config, batch_size=FLAGS.batch_size or config.eval.batch_size,
                   steps=FLAGS.steps, warmup=FLAGS.warmup, num_classes=FLAGS.num_classes,
                   num_landmarks=landmarks.NUM_POINTS[FLAGS.landmarks])
  record["config"] = config_flags.get_config_filename(FLAGS["config"])
  common.emit(record, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
