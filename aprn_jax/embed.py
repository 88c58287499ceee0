"""Embeddings of every image file in a folder (recursively), by an exported model or a run.

    python -m aprn_jax.embed --model=PATH.onnx --images=FOLDER --out=FILE.npy
    python -m aprn_jax.embed --workdir=DIR [--phase=aprn|baseline] [--step=N] \\
        --images=FOLDER --out=FILE.npy

--model is a file written by `python -m aprn_jax.export` (ONNX or StableHLO) with its card
beside it; --workdir runs the phase's checkpoint in JAX, as evaluation does. Images are read
exactly as evaluation reads benchmark images (`evaluation.embedder.Embedder`: decoded at the
data set's stored size, centred crop and resize, the flip when config.eval.flip).

FILE.npy holds float32 (N, D) L2-normalised embeddings; FILE.json (`embeddings.save`) lists
`images`, the files of the rows in order (relative to `folder`), and `skipped`: every file
that did not decode, with the reason, so none is dropped unsaid. Every regular file under the
folder is tried, whatever its name.
"""
import concurrent.futures
import os
import sys

from aprn_jax.evaluation import embeddings as embeddings_lib
from input_pipeline import files
from input_pipeline.readers import images as images_lib


def image_files(folder):
  """The regular files under `folder`, sorted by their path relative to it."""
  if not files.isdir(folder):
    raise FileNotFoundError(f"--images={folder}: no such folder")
  found = []
  for root, dirs, names in files.walk(folder):
    dirs.sort()
    found += [os.path.join(root, name) for name in sorted(names)
              if files.isfile(os.path.join(root, name))]
  return found


def _problem(path, stored_size):
  """None if `path` decodes as evaluation decodes it, else the reason it does not."""
  try:
    images_lib.load_image(path, stored_size)
  except (OSError, ValueError) as error:
    return str(error)
  return None


def split_readable(paths, stored_size, num_threads=8):
  """(the paths that decode, [(path, reason)] of those that do not), each in order."""
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    problems = list(pool.map(lambda path: _problem(path, stored_size), paths))
  good = [path for path, problem in zip(paths, problems) if problem is None]
  bad = [(path, problem) for path, problem in zip(paths, problems) if problem is not None]
  return good, bad


def embed_folder(embedder, stored_size, folder):
  """(embeddings (N, D), the N image paths, [(path, reason)] skipped) of the folder's files."""
  paths = image_files(folder)
  good, bad = split_readable(paths, stored_size)
  if not good:
    raise ValueError(f"--images={folder}: none of its {len(paths)} files is a readable "
                     f"image" + (f" (first: {bad[0][1]})" if bad else ""))
  return embedder(good), good, bad


def main(argv):
  from absl import flags
  from absl import logging as absl_logging
  from aprn_jax import export
  del argv
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax logs every restore
  f = flags.FLAGS
  try:
    if (f.model is None) == (f.workdir is None):
      raise ValueError("give one of --model (an exported model) and --workdir (a run)")
    if f.model is not None and (f.phase is not None or f.step is not None):
      raise ValueError("--phase and --step choose a checkpoint of --workdir; an exported "
                       "--model holds one already")
    out_dir = os.path.dirname(files.abspath(f.out))
    if not f.out.endswith(".npy"):
      raise ValueError(f"--out={f.out}: embedding files end in .npy")
    if not files.isdir(out_dir):
      raise FileNotFoundError(f"--out={f.out}: the folder {out_dir} does not exist")
    if f.model is not None:
      model = export.load_model(f.model)
      embedder, stored_size = model.embedder(), model.card["preprocessing"]["stored_size"]
      source = {"model": files.abspath(f.model)}
    else:
      restored = export.restore(f.workdir, f.phase, f.step)
      embedder, stored_size = restored.embedder(), restored.data.stored_size
      source = {"workdir": files.abspath(f.workdir), "phase": restored.phase.name,
                "step": restored.step}
    embeddings, good, bad = embed_folder(embedder, stored_size, f.images)
  except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
    sys.exit(f"embed: {error}")
  folder = files.abspath(f.images)
  relative = lambda path: files.relpath(path, folder)
  embeddings_lib.save(f.out, embeddings, folder=folder, images=[relative(p) for p in good],
                      skipped=[{"image": relative(p), "reason": reason} for p, reason in bad],
                      **source)
  for path, reason in bad:
    print(f"skipped {relative(path)}: {reason}", file=sys.stderr)
  print(f"{f.out}: {len(good)} embeddings of size {embeddings.shape[1]} "
        f"({len(bad)} files skipped); {f.out[:-4]}.json lists the images in order")


def _define_flags():
  from absl import flags
  from aprn_jax import trainer
  flags.DEFINE_string("model", None, "An exported model (python -m aprn_jax.export).")
  flags.DEFINE_string("workdir", None, "Or a training workdir, run in JAX.")
  flags.DEFINE_enum("phase", None, list(trainer.PHASES),
                    "--workdir: the phase (default: the last one saved).")
  flags.DEFINE_integer("step", None, "--workdir: the checkpoint step (default: the last).")
  flags.DEFINE_string("images", None, "The folder of image files (searched recursively).")
  flags.DEFINE_string("out", None, "FILE.npy; the image list goes to FILE.json.")
  flags.mark_flags_as_required(["images", "out"])


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
