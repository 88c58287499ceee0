"""Input pipeline throughput next to what the train step consumes; prints one JSON object.

    python benchmarks/input_pipeline.py --config=configs/default.py [--batches=30]
        [--jpeg_images=2000] [--steps=5] [--out=results.jsonl]

Three figures, measured in one run on the config's shapes:
- `synthetic`: `preprocess.train_batches` over the config's synthetic_faces build (stored
  PNGs decoded by TFDS, random crop, resize, flip, landmark moves, batching to devices);
- `jpeg_folder`: the same pipeline over a `face_folder` data set of JPEG files: the first
  `--jpeg_images` synthetic training images written as `<identity>/<n>.jpg` with a
  `landmarks.csv`, then built by the face_folder builder, so decoding JPEG files is timed;
- `train_step`: images/s of the config's baseline and APRN steps (random data on the device,
  `benchmarks/train_step.py`).
`*_over_aprn_step` above 1 means the pipeline outruns the step. Both share this machine's
cores when training, so on a CPU the ratio must be well above 1 for the pipeline to stay out of
the way; on an accelerator host the step runs elsewhere.
"""
import os
import sys
import tempfile
import time

from absl import app, flags
import jax
from ml_collections import config_flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aprn_jax import data as data_lib
from benchmarks import common
from benchmarks import train_step as train_step_benchmark
from input_pipeline import preprocess

# --config, --steps, --out and the other step flags are train_step.py's (defined on import).
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where the synthetic data is built (default: a temporary "
                    "folder; pass a run's workdir to reuse its build at <workdir>/../data).")
flags.DEFINE_integer("batches", 30, "Timed batches per pipeline, after 3 untimed ones.")
flags.DEFINE_integer("jpeg_images", 2000, "Images of the JPEG folder data set.")

WARMUP_BATCHES = 3


def pipeline_throughput(config, data, batches):
  """{images_per_s, batch_s} of `train_batches` over `data` with the config's shapes."""
  iterator = preprocess.train_batches(
      data.dataset_fn, num_examples=data.num_examples,
      global_batch_size=config.train.batch_size, crop_size=config.data.crop_size,
      image_size=config.data.image_size, seed=config.seed,
      num_landmarks=data.num_landmarks)
  for _ in range(WARMUP_BATCHES):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = time.perf_counter() - start
  return {"images_per_s": batches * config.train.batch_size / seconds,
          "batch_s": seconds / batches, "num_examples": data.num_examples}


def write_jpeg_folder(data, folder, count):
  """The first `count` training images of `data` as a face_folder tree with landmarks.csv."""
  lines = []
  for example in data.dataset_fn().take(count).as_numpy_iterator():
    relative = f"{int(example['label']):05d}/{len(lines):06d}.jpg"
    os.makedirs(os.path.join(folder, os.path.dirname(relative)), exist_ok=True)
    Image.fromarray(example["image"]).save(os.path.join(folder, relative), quality=95)
    lines.append(",".join([relative] + [f"{v:.3f}" for v in example["landmarks"].reshape(-1)]))
  with open(os.path.join(folder, "landmarks.csv"), "w") as f:
    f.write("\n".join(lines) + "\n")


def measure(config, workdir, batches, jpeg_images, steps):
  record = {"benchmark": "input_pipeline", "model": common.model_summary(config),
            "global_batch": config.train.batch_size, "batches": batches,
            **common.machine(jax.local_devices())}
  synthetic = data_lib.load(config, workdir)
  record["synthetic"] = pipeline_throughput(config, synthetic, batches)
  with tempfile.TemporaryDirectory() as folder:
    images_dir = os.path.join(folder, "images")
    write_jpeg_folder(synthetic, images_dir, jpeg_images)
    jpeg_config = config.copy_and_resolve_references()
    with jpeg_config.unlocked():
      jpeg_config.data.name = "face_folder"
      jpeg_config.data.manual_dir = images_dir
      jpeg_config.data.stored_size = synthetic.stored_size  # the JPEGs' own size: no resize
      jpeg_config.data.data_dir = os.path.join(folder, "tfds")
    record["jpeg_folder"] = pipeline_throughput(
        jpeg_config, data_lib.load(jpeg_config, os.path.join(folder, "wd")), batches)
  step = train_step_benchmark.measure(
      config, batch_size=config.train.batch_size, num_devices=None, steps=steps, warmup=1,
      num_classes=synthetic.num_classes, num_landmarks=synthetic.num_landmarks)
  record["train_step"] = {kind: {"images_per_s": step[kind]["images_per_s"]}
                          for kind in ("baseline", "aprn")}
  for name in ("synthetic", "jpeg_folder"):
    record[f"{name}_over_aprn_step"] = (record[name]["images_per_s"]
                                        / step["aprn"]["images_per_s"])
  return record


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config.copy_and_resolve_references()
  with tempfile.TemporaryDirectory() as scratch:
    workdir = FLAGS.workdir or os.path.join(scratch, "wd")
    record = measure(config, workdir, FLAGS.batches, FLAGS.jpeg_images, FLAGS.steps)
  record["config"] = config_flags.get_config_filename(FLAGS["config"])
  common.emit(record, FLAGS.out)


if __name__ == "__main__":
  preprocess.hide_gpus_from_tensorflow()
  app.run(main)
