"""Streamed embedding of benchmark images with a fixed recognizer, in bounded memory.

Image files go through one pipeline in chunks of `chunk_images`: a background thread reads a
chunk's files, decodes the images it has not embedded yet (on `decode_threads` threads, at
the data set's stored size) and applies evaluation's centred crop and resize
(`network_inputs`: numpy matrix products with tf.image.resize's weights, as a per-image TF
resize costs about as much as a small network), while the caller's thread embeds the previous chunk. So at most two
chunks of images exist at any time, decoded or as network inputs, however many files a
benchmark lists (MegaFace's million distractors included); only the (N, D) embeddings grow.

Each path is read once and each distinct image is decoded and embedded once (files by their
bytes, in-memory images by their pixels), so the benchmark copies of one image (the LFW,
IJB-A and MegaFace layouts of the same faces) share it. A line with images/s and the ETA is
printed every `progress_every_s` seconds of a long call.
"""
import concurrent.futures
import hashlib
import sys
import time

import numpy as np

from aprn_jax import inference
from aprn_jax.evaluation import embeddings as embeddings_lib
from input_pipeline import preprocess
from input_pipeline.readers import images as images_lib


def network_inputs(images, crop_size, image_size):
  """uint8 (N, H, W, 3) -> float32 (N, S, S, 3) in [-1, 1]: evaluation's centred crop and
  resize (`preprocess.eval_images`, training's `eval_transform` in numpy)."""
  if not len(images):
    return np.zeros((0, image_size, image_size, 3), np.float32)
  return preprocess.eval_images(images, crop_size=crop_size, image_size=image_size)


def _digest(data):
  return hashlib.blake2b(data, digest_size=16).digest()


class Embedder:
  """embed(paths) -> (N, D) float32 unit-norm embeddings of image files, in order;
  embed.images(uint8 (N, stored, stored, 3)) -> those of decoded images.

  embed_fn: float32 (batch, S, S, 3) in [-1, 1] -> (batch, D); default the recognizer's
  backbone (`inference.make_embed_fn`).
  """

  def __init__(self, config, stored_size, recognizer=None, variables=None, embed_fn=None,
               chunk_images=None, decode_threads=8, progress_every_s=10.0):
    self.crop_size, self.image_size = config.data.crop_size, config.data.image_size
    self.batch_size, self.flip = config.eval.batch_size, config.eval.flip
    self.stored_size = stored_size
    self.embed_fn = embed_fn or inference.make_embed_fn(recognizer, variables)
    self.chunk_images = chunk_images or max(8 * self.batch_size, 1024)
    self.decode_threads = decode_threads
    self.progress_every_s = progress_every_s
    self.by_path, self.by_key = {}, {}
    self.num_decoded = 0  # distinct images decoded and embedded so far

  def __call__(self, paths):
    missing = [p for p in dict.fromkeys(paths) if p not in self.by_path]
    if missing:
      self._stream(missing)
    return np.stack([self.by_path[p] for p in paths]) if len(paths) else np.zeros((0, 0))

  def images(self, raw):
    """Embeddings of uint8 (N, stored, stored, 3) images."""
    raw = np.asarray(raw)
    keys = [b"pixels" + _digest(image.tobytes()) for image in raw]
    new = list({key: i for i, key in enumerate(keys) if key not in self.by_key}.values())
    for start in range(0, len(new), self.chunk_images):
      chunk = new[start:start + self.chunk_images]
      inputs = network_inputs(raw[chunk], self.crop_size, self.image_size)
      self.by_key.update(zip((keys[i] for i in chunk), self._embed(inputs)))
      self.num_decoded += len(chunk)
    return np.stack([self.by_key[key] for key in keys])

  def _prepare(self, paths, scheduled):
    """(keys of `paths`, keys of the new images, their network inputs) of one chunk.

    Runs on the background thread; `scheduled` (keys already embedded or on their way)
    is only touched here, so a duplicate in a later chunk is not decoded again.
    """
    contents = images_lib.read_files_bytes(paths, self.decode_threads)
    keys = [b"file" + _digest(data) for data in contents]
    new = {}
    for i, key in enumerate(keys):
      if key not in scheduled and key not in new:
        new[key] = i
    scheduled.update(new)
    raw = images_lib.decode_images([contents[i] for i in new.values()], self.stored_size,
                                   [f"image file {paths[i]}" for i in new.values()],
                                   num_threads=self.decode_threads)
    del contents
    return keys, list(new), network_inputs(raw, self.crop_size, self.image_size)

  def _stream(self, paths):
    chunks = [paths[i:i + self.chunk_images] for i in range(0, len(paths), self.chunk_images)]
    scheduled = set(self.by_key)
    start = last_report = time.monotonic()
    done = 0
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
      pending = reader.submit(self._prepare, chunks[0], scheduled)
      for index, chunk in enumerate(chunks):
        keys, new_keys, inputs = pending.result()
        if index + 1 < len(chunks):  # read the next chunk while this one is embedded
          pending = reader.submit(self._prepare, chunks[index + 1], scheduled)
        if new_keys:
          self.by_key.update(zip(new_keys, self._embed(inputs)))
          self.num_decoded += len(new_keys)
        del inputs
        self.by_path.update((p, self.by_key[k]) for p, k in zip(chunk, keys))
        done += len(chunk)
        now = time.monotonic()
        if (self.progress_every_s is not None and now - last_report >= self.progress_every_s
            and done < len(paths)):
          rate = done / (now - start)
          print(f"embed: {done}/{len(paths)} images, {rate:.0f} images/s, ETA "
                f"{(len(paths) - done) / rate / 60:.1f} min", file=sys.stderr, flush=True)
          last_report = now

  def _embed(self, inputs):
    return embeddings_lib.extract(self.embed_fn, inputs, self.batch_size, flip=self.flip,
                                  progress_every_s=None)
