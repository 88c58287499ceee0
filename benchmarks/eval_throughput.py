"""Evaluation numerics throughput on this machine; prints one JSON object.

    python benchmarks/eval_throughput.py [--distractors 100000 --probes 300 ...]

Measures: 10-fold verification on 7,000 pairs (pairs/s); MegaFace-style rank-1 and CMC with
100k distractors (seconds, and the peak memory allocated during the call, inputs excluded,
by tracemalloc); and float32 matmul GFLOP/s in the same run, so that numbers from different
machines can be compared.
"""
import argparse
import json
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aprn_jax.evaluation import identification
from aprn_jax.evaluation import verification


def unit_rows(rng, num, dim):
  x = rng.standard_normal((num, dim), dtype=np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def matmul_gflops(size=2048, repeats=3):
  """Best-of-repeats float32 (size x size) @ (size x size) throughput."""
  a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
  a @ a  # warm-up
  best = min(_seconds(lambda: a @ a) for _ in range(repeats))
  return 2 * size**3 / best / 1e9


def _seconds(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def verification_throughput(rng, num_pairs, dim, repeats=5):
  first = unit_rows(rng, num_pairs, dim)
  issame = rng.random(num_pairs) < 0.5
  second = np.where(issame[:, None], first + 8.0 * unit_rows(rng, num_pairs, dim),
                    unit_rows(rng, num_pairs, dim))
  second /= np.linalg.norm(second, axis=1, keepdims=True)
  folds = verification.contiguous_folds(num_pairs)
  run = lambda: verification.evaluate(first, second, issame, folds)
  seconds = float(np.median([_seconds(run) for _ in range(repeats)]))
  return {"pairs": num_pairs, "dim": dim, "thresholds": len(verification.THRESHOLDS),
          "seconds": seconds, "pairs_per_s": num_pairs / seconds,
          "accuracy": run().accuracy}


def identification_cost(rng, num_probes, num_distractors, dim, chunk_size):
  identities = num_probes // 5
  labels = np.repeat(np.arange(identities), 5)
  centres = unit_rows(rng, identities, dim)
  probes = centres[labels] + 0.07 * rng.standard_normal((len(labels), dim), dtype=np.float32)
  probes /= np.linalg.norm(probes, axis=1, keepdims=True)
  distractors = unit_rows(rng, num_distractors, dim)
  run = lambda: identification.identify_with_distractors(probes, labels, distractors,
                                                         chunk_size=chunk_size)
  result = run()
  seconds = min(_seconds(run) for _ in range(2))
  tracemalloc.start()  # numpy reports its buffers to tracemalloc
  run()
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  return {"probes": len(labels), "distractors": num_distractors, "dim": dim,
          "chunk_size": chunk_size, "seconds": seconds,
          "distractors_per_s": num_distractors / seconds,
          "peak_working_memory_mib": peak / 2**20,
          "distractor_array_mib": distractors.nbytes / 2**20,
          "pairs": result.num_pairs, "rank1": result.rank1}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", type=int, default=7000)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--probes", type=int, default=300)
  parser.add_argument("--distractors", type=int, default=100_000)
  parser.add_argument("--chunk-size", type=int, default=identification.DEFAULT_CHUNK_SIZE)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  report = {
      "matmul_float32_gflops": matmul_gflops(),
      "verification": verification_throughput(rng, args.pairs, args.dim),
      "identification": identification_cost(rng, args.probes, args.distractors, args.dim,
                                            args.chunk_size),
      "cpu_count": os.cpu_count(),
  }
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
