"""The ONNX export of a randomly initialised recognizer: its parameter count, its agreement
with JAX, and CPU images/s in onnxruntime against JAX; prints one JSON object.

    python benchmarks/onnx_inference.py --config=configs/resnet101.py [--batch_size=8]
        [--steps=5] [--warmup=1] [--out=results.jsonl] [--config.model.depth=152 ...]

The recognizer is exported as `python -m aprn_jax.export` exports a trained one
(`export.embedding_fn` + `export.onnx_model`: the backbone alone, BatchNorm in inference
mode, float32, a dynamic batch), without training: the weights are the config's
initialisation. Reported:
- `onnx.parameters`: scalars of the ONNX initializers that are layer parameters
  (`export.onnx_parameter_counts`; BatchNorm's running statistics and graph constants apart),
  against the backbone module's own count, built alone (`backbone_counts`) and, for
  configs/resnet101.py, the public code's ResNet-101 (PUBLIC_COUNTS);
- `agreement`: lowest cosine and largest component difference of onnxruntime's unit
  embeddings against JAX's of the same random batch in [-1, 1], with export.BOUNDS' bound;
- images/s of onnxruntime (CPU provider, all cores) and of jitted JAX (XLA:CPU, with the
  training code's CPU forms) on that batch, timed in turn (`common.time_interleaved`).
"""
import importlib.metadata
import os
import sys
import tempfile
import time

from absl import app, flags
import jax
import numpy as np
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aprn_jax import export, models
from benchmarks import common
from input_pipeline import landmarks

FLAGS = flags.FLAGS
common.define_model_flags("Images per call (default: 8).", "calls of each runtime",
                          "Identities of the (dropped) classification head.")
FLAGS.set_default("steps", 5)
FLAGS.set_default("warmup", 1)

# The public code's parameter counts (aprn_jax/models/resnet.py) by (depth, embedding size).
PUBLIC_COUNTS = {(101, 256): 68_182_848, (152, 256): 83_826_496}


def backbone_counts(config):
  """(parameters, BatchNorm statistics) of the backbone module built alone (no head, no D):
  the independent reference the ONNX count is checked against."""
  backbone = models.make_backbone(config.model)
  size = config.data.image_size
  variables = jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x, train=False),
                             jax.ShapeDtypeStruct((1, size, size, 3), np.float32))
  return tuple(common.param_count(variables.get(kind, {}))
               for kind in ("params", "batch_stats"))


def measure(config, *, batch_size, steps, warmup, num_classes, num_landmarks):
  """The benchmark's JSON record for `config` (see the module docstring)."""
  if batch_size < 1 or steps < 1 or warmup < 0:
    raise ValueError(f"--batch_size={batch_size} and --steps={steps} must be at least 1 and "
                     f"--warmup={warmup} at least 0")
  dtype = config.model.dtype
  size = config.data.image_size
  recognizer, _ = models.make_models(config, num_classes=num_classes,
                                     num_landmarks=num_landmarks)
  recognizer = export.recognizer_at(config, recognizer, dtype)  # as exported
  init = jax.jit(lambda key: recognizer.init(key, np.zeros((1, size, size, 3), np.float32),
                                             train=False))
  variables = jax.device_get(init(jax.random.key(config.seed)))
  fn = export.embedding_fn(recognizer, variables)
  images = np.random.RandomState(config.seed).uniform(
      -1, 1, (batch_size, size, size, 3)).astype(np.float32)

  start = time.perf_counter()
  model = export.onnx_model(fn, size)
  convert_s = time.perf_counter() - start
  counts = export.onnx_parameter_counts(model)
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "model.onnx")
    export._package("onnx").save_model(model, path)
    file_mib = os.path.getsize(path) / common.MIB
    del model
    start = time.perf_counter()
    onnx_embed = export.onnx_embed_fn(path, nchw=False)
    session_s = time.perf_counter() - start
  jax_embed = jax.jit(fn)
  _, compiled, compile_s = common.compile_timed(jax_embed, images)
  reference = np.asarray(compiled(images))
  agreement = export.verify(onnx_embed, reference, images, dtype, (batch_size,),
                            [f"random image {i}" for i in range(batch_size)])

  calls = {"onnxruntime": lambda: onnx_embed(images),
           "jax": lambda: jax.block_until_ready(compiled(images))}
  for _ in range(warmup):
    for call in calls.values():
      call()
  timings = common.time_interleaved(calls, steps)
  backbone_params, backbone_statistics = backbone_counts(config)
  public = PUBLIC_COUNTS.get((config.model.depth, config.model.embedding_dim)
                             if not config.model.get("stage_sizes") else None)
  record = {
      "benchmark": "onnx_inference",
      "model": common.model_summary(config), "batch_size": batch_size, "steps": steps,
      "warmup": warmup, **common.machine(jax.local_devices()[:1]),
      "versions": {name: importlib.metadata.version(name)
                   for name in ("jax2onnx", "onnx", "onnxruntime")},
      "onnx": {**counts, "file_mib": file_mib, "convert_s": convert_s, "session_s": session_s},
      "backbone_params": backbone_params, "backbone_statistics": backbone_statistics,
      "public_code_params": public,
      "agreement": {key: agreement[key] for key in ("min_cosine", "max_abs_difference",
                                                    "bounds")},
      "jax_compile_s": compile_s,
  }
  record["onnx_counts_equal_backbone"] = (counts["parameters"] == backbone_params
                                          and counts["statistics"] == backbone_statistics)
  record["onnx_params_equal_public_code"] = (None if public is None
                                             else counts["parameters"] == public)
  record["runtimes"] = {
      name: {"call_s": timing["median_s"], "call_s_min": timing["min_s"],
             "images_per_s": batch_size / timing["median_s"]}
      for name, timing in timings.items()}
  record["onnxruntime_over_jax_speed"] = (timings["jax"]["median_s"]
                                          / timings["onnxruntime"]["median_s"])
  return record


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config.copy_and_resolve_references()
  config.model.dtype = FLAGS.dtype or "float32"  # as python -m aprn_jax.export
  if config.model.dtype != "float32":
    raise app.UsageError(f"--dtype={config.model.dtype}: onnxruntime's CPU provider has no "
                         f"{config.model.dtype} convolution; the export is float32")
  record = measure(config, batch_size=FLAGS.batch_size or 8, steps=FLAGS.steps,
                   warmup=FLAGS.warmup, num_classes=FLAGS.num_classes,
                   num_landmarks=landmarks.NUM_POINTS[FLAGS.landmarks])
  record["config"] = config_flags.get_config_filename(FLAGS["config"])
  common.emit(record, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
