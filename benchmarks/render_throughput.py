"""Synthetic face rendering throughput on this machine (one process); prints one JSON object.

    python benchmarks/render_throughput.py [--images 120 --sizes 64 112 --supersample 2]

For each size: images/s over `--images` renders of random identities and views (the builder's
view sampler, yaws uniform in -90..90), by wall clock and by this process's CPU time (the
latter is steadier on a shared machine); plus identity builds/s (geometry and landmark
anchors). The synthetic_faces builder renders with `workers` such processes in parallel.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from input_pipeline.synthetic import faces, renderer  # pylint: disable=g-import-not-at-top


def timed(fn, count):
  wall, cpu = time.perf_counter(), time.process_time()
  for i in range(count):
    fn(i)
  return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=120, help="renders per size")
  parser.add_argument("--sizes", type=int, nargs="+", default=[64, 112])
  parser.add_argument("--supersample", type=int, default=2)
  parser.add_argument("--identities", type=int, default=12)
  args = parser.parse_args(argv)
  if args.images < 1 or args.identities < 1:
    raise ValueError("--images and --identities must be positive")

  heads = []
  wall, cpu = timed(lambda i: heads.append(faces.build_head(faces.sample_identity(i))),
                    args.identities)
  record = {"benchmark": "render_throughput", "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "supersample": args.supersample,
            "identity_builds": args.identities,
            "identity_builds_per_s_wall": round(args.identities / wall, 1),
            "identity_builds_per_s_cpu": round(args.identities / cpu, 1)}
  rng = np.random.default_rng(0)
  for size in args.sizes:
    views = [renderer.sample_view(rng, rng.uniform(-90, 90)) for _ in range(args.images)]
    render = lambda i, size=size, views=views: renderer.render(
        heads[i % len(heads)], views[i], size, args.supersample)
    render(0)  # warm caches
    wall, cpu = timed(render, args.images)
    record[f"images_{size}"] = args.images
    record[f"images_per_s_{size}_wall"] = round(args.images / wall, 1)
    record[f"images_per_s_{size}_cpu"] = round(args.images / cpu, 1)
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()
