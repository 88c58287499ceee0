"""Memory and speed of evaluation at MegaFace's scale, through the real path; prints JSON.

    python benchmarks/eval_memory.py [--sizes=10000,30000,100000] [--work=/tmp/aprn_eval_memory]
        [--config=configs/default.py] [--out=results.jsonl]

Writes max(--sizes) distractor JPEGs (112x112, smooth random colour fields, each distinct)
and 100 probe identities of 4 images in the MegaFace / FaceScrub list layouts (once; kept in
--work for the next run), then, for each N in --sizes, in a fresh process (so its peak RSS is
its own): builds the config's recognizer with random weights and runs `evaluate.evaluate`
with config.eval.benchmarks=("megaface",) on the first N distractors: the streamed embedder,
the chunked identification and the table's figures, exactly as main.py evaluates.

Per N it prints the peak RSS of the process, the images/s of the whole evaluation (files
read, decoded, cropped, embedded with the flip, and identified), and, measured in the same
process before and after, the images/s of the embedding function alone on a batch already in
memory (what benchmarks/inference.py times; both compiled before they are timed); `pipeline_over_embedding` is the ratio of the
evaluation's network images/s (x2 with the flip) to that. The last line compares the sizes:
`rss_ratio` = peak RSS at the largest N over the smallest.

The images are read at stored size 112 and the whole image is the crop
(config.data.crop_size=112), resized to config.data.image_size as in evaluation.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STORED_SIZE = 112
PROBE_IDENTITIES, PROBE_IMAGES = 100, 4


def _jpeg(grid, path):
  """A smooth STORED_SIZE^2 JPEG: the 6x6 colour grid, enlarged bicubically."""
  from PIL import Image
  image = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8))
  image.resize((STORED_SIZE, STORED_SIZE), Image.Resampling.BICUBIC).save(path, quality=90)


def write_images(work, num_distractors):
  """The distractor and probe JPEGs and lists under `work` (only what is not there yet)."""
  folder = os.path.join(work, "megaface")
  names = [f"{i // 1000:04d}/{i:07d}.jpg" for i in range(num_distractors)]
  for i, name in enumerate(names):
    path = os.path.join(folder, name)
    if i % 1000 == 0:
      os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):  # image i is a function of i, so a rerun adds the rest
      _jpeg(np.random.default_rng(i).integers(0, 256, (6, 6, 3)), path)
  probes = os.path.join(work, "facescrub")
  ids, paths = [], []
  rng = np.random.default_rng(10**9)
  for person in range(PROBE_IDENTITIES):  # a person: one grid, lightly varied per image
    os.makedirs(os.path.join(probes, f"p{person:03d}"), exist_ok=True)
    base = rng.integers(0, 256, (6, 6, 3))
    for k in range(PROBE_IMAGES):
      name = f"p{person:03d}/{k}.jpg"
      _jpeg(base + rng.integers(-20, 21, (6, 6, 3)), os.path.join(probes, name))
      ids.append(f"p{person:03d}")
      paths.append(name)
  with open(os.path.join(work, "facescrub_features_list.json"), "w") as f:
    json.dump({"id": ids, "path": paths}, f)
  return names


def _raw_images_per_s(embed_fn, batch, repeats=5):
  """Median images/s of the embedding function on a batch already in memory."""
  embed_fn(batch)  # compiled already; one untimed call
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    embed_fn(batch)
    seconds.append(time.perf_counter() - start)
  return len(batch) / float(np.median(seconds))


def measure_one(config_file, work, num_distractors):
  """The record of one size, run in this (fresh) process."""
  import importlib.util
  from aprn_jax import evaluate, inference
  from benchmarks import common
  from benchmarks import inference as inference_bench

  spec = importlib.util.spec_from_file_location("bench_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data.crop_size = STORED_SIZE
  list_path = os.path.join(work, f"megaface_features_list.json_{num_distractors}_1")
  with open(os.path.join(work, "distractors.json")) as f:
    names = json.load(f)[:num_distractors]
  with open(list_path, "w") as f:
    json.dump({"path": names}, f)
  config.eval.benchmarks = ("megaface",)
  config.eval.paths.megaface_probes = os.path.join(work, "facescrub_features_list.json")
  config.eval.paths.megaface_probe_images = os.path.join(work, "facescrub")
  config.eval.paths.megaface_distractors = list_path
  config.eval.paths.megaface_distractor_images = os.path.join(work, "megaface")
  recognizer, variables, _ = inference_bench.export(config, ("baseline",), 1000, 51)
  embed_fn = inference.make_embed_fn(recognizer, variables)
  size = config.data.image_size
  batch = np.random.default_rng(0).uniform(
      -1, 1, (config.eval.batch_size, size, size, 3)).astype(np.float32)
  # Compile the evaluation's device programs (shared by every Embedder of this recognizer)
  # on a few probe files first: the embedding alone is timed compiled too.
  with open(config.eval.paths.megaface_probes) as f:
    probe_paths = [os.path.join(work, "facescrub", p) for p in json.load(f)["path"]]
  evaluate.Embedder(config, STORED_SIZE, recognizer, variables)(probe_paths[:8])
  raw_before = _raw_images_per_s(embed_fn, batch)
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  data = types.SimpleNamespace(stored_size=STORED_SIZE, protocol_root="")
  start = time.perf_counter()
  results = evaluate.evaluate(config, data, recognizer, variables)
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  raw_after = _raw_images_per_s(embed_fn, batch)
  num_images = num_distractors + PROBE_IDENTITIES * PROBE_IMAGES
  images_per_s = num_images / seconds
  network_per_s = images_per_s * (2 if config.eval.flip else 1)
  raw = float(np.median([raw_before, raw_after]))
  return {"benchmark": "eval_memory", "num_distractors": num_distractors,
          "num_images": num_images, "seconds": seconds, "images_per_s": images_per_s,
          "flip": bool(config.eval.flip), "network_images_per_s": network_per_s,
          "embedding_alone_images_per_s": raw, "embedding_alone_before_after": [raw_before,
                                                                              raw_after],
          "pipeline_over_embedding": network_per_s / raw,
          "peak_rss_mib": peak / common.MIB, "rss_before_eval_mib": rss_before / common.MIB,
          "embeddings_mib": num_images * config.model.embedding_dim * 4 / common.MIB,
          "rank1": results["megaface"]["rank1"], "batch_size": config.eval.batch_size,
          "model": common.model_summary(config), "stored_size": STORED_SIZE,
          "cpu_model": common.cpu_model(), "host_cpus": os.cpu_count(),
          "config": config_file}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="10000,30000,100000")
  parser.add_argument("--work", default="/tmp/aprn_eval_memory")
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--out", default=None)
  parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one is not None:
    print(json.dumps(measure_one(args.config, args.work, args.one)), flush=True)
    return
  try:
    sizes = sorted({int(n) for n in args.sizes.split(",")})
  except ValueError:
    raise SystemExit(f"--sizes={args.sizes!r}: expected comma-separated integers") from None
  if not sizes or sizes[0] < 1:
    raise SystemExit(f"--sizes={args.sizes!r}: sizes must be positive")
  if not os.path.isfile(args.config):
    raise SystemExit(f"--config={args.config}: no such file")
  os.makedirs(args.work, exist_ok=True)
  start = time.perf_counter()
  names = write_images(args.work, sizes[-1])
  with open(os.path.join(args.work, "distractors.json"), "w") as f:
    json.dump(names, f)
  print(f"images ready in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
  from benchmarks import common
  records = []
  for n in sizes:
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", str(n),
                           "--work", args.work, "--config", args.config],
                          check=True, stdout=subprocess.PIPE, text=True)
    records.append(json.loads(done.stdout.strip().splitlines()[-1]))
    common.emit(records[-1], args.out)
  common.emit({"benchmark": "eval_memory_summary", "sizes": sizes,
               "peak_rss_mib": [r["peak_rss_mib"] for r in records],
               "rss_ratio": records[-1]["peak_rss_mib"] / records[0]["peak_rss_mib"],
               "images_per_s": [r["images_per_s"] for r in records],
               "pipeline_over_embedding": [r["pipeline_over_embedding"] for r in records]},
              args.out)


if __name__ == "__main__":
  main()
