"""Streamed embedding of benchmark images with a fixed recognizer, in bounded memory.

Image files go through one pipeline in chunks of `chunk_images`: a background thread reads a
chunk's files and decodes the images it has not embedded yet (on `decode_threads` threads, at
the data set's stored size) while the caller's thread embeds the previous chunk. So at most
two chunks of decoded images exist at any time, however many files a benchmark lists
(MegaFace's million distractors included); only the (N, D) embeddings grow.

With the recognizer itself, evaluation's centred crop, resize and scaling and the flip run on
the device with the network (`inference.make_image_embed_fn`), so the host only reads and
decodes: the numpy form of the same resize costs more than decoding a small JPEG. With any
other embedding function (an exported model), the host computes the network inputs
(`network_inputs`, the same crop and resize in numpy).

Each path is read once and each distinct image is decoded and embedded once (files by their
bytes, in-memory images by their pixels), so the benchmark copies of one image (the LFW,
IJB-A and MegaFace layouts of the same faces) share it. Progress (`console.Progress`: a bar
on a terminal, else a line every `progress_every_s` seconds and one at the end) counts the
images of the caller's stage (`progress`: evaluation opens one per benchmark) or of one call.
"""
import concurrent.futures
import hashlib
import os

import numpy as np

from aprn_jax import inference
from aprn_jax.evaluation import embeddings as embeddings_lib
from input_pipeline import console, preprocess
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

  embed_fn: float32 (batch, S, S, 3) in [-1, 1] -> (batch, D), for models other than the
  recognizer; without it, the recognizer's backbone embeds uint8 images with the
  preprocessing on the device (`inference.make_image_embed_fn`).
  """

  def __init__(self, config, stored_size, recognizer=None, variables=None, embed_fn=None,
               chunk_images=None, decode_threads=None, progress_every_s=10.0):
    self.crop_size, self.image_size = config.data.crop_size, config.data.image_size
    self.batch_size, self.flip = config.eval.batch_size, config.eval.flip
    self.stored_size = stored_size
    self.embed_fn = embed_fn
    self.image_embed_fn = None if embed_fn else inference.make_image_embed_fn(
        recognizer, variables, crop_size=self.crop_size, image_size=self.image_size,
        flip=self.flip)
    self.chunk_images = chunk_images or max(8 * self.batch_size, 1024)
    # As many decoding threads as cores, at most 8: more only take cores from the device's
    # work on a CPU host (measured: 2 threads 1.1-1.4x faster than 8 on 2 cores).
    self.decode_threads = decode_threads or min(8, os.cpu_count() or 1)
    self.progress_every_s = progress_every_s
    self.by_path, self.by_key = {}, {}
    self.num_decoded = 0  # distinct images decoded and embedded so far
    # A console.Progress the caller opened for a stage (evaluation: one per benchmark),
    # counting the images embedded while it is set; its total grows as they are asked for.
    self.progress = None

  def __call__(self, paths):
    missing = [p for p in dict.fromkeys(paths) if p not in self.by_path]
    if missing and (self.progress is not None or self.progress_every_s is None):
      self._stream(missing, self.progress)
    elif missing:  # a call outside the caller's stages is a stage of its own
      with console.Progress("embed", 0, "images", every_s=self.progress_every_s) as bar:
        self._stream(missing, bar)
    return np.stack([self.by_path[p] for p in paths]) if len(paths) else np.zeros((0, 0))

  def images(self, raw):
    """Embeddings of uint8 (N, stored, stored, 3) images."""
    raw = np.asarray(raw)
    keys = [b"pixels" + _digest(image.tobytes()) for image in raw]
    new = list({key: i for i, key in enumerate(keys) if key not in self.by_key}.values())
    if self.progress:
      self.progress.add_total(len(new))
    for start in range(0, len(new), self.chunk_images):
      chunk = new[start:start + self.chunk_images]
      self.by_key.update(zip((keys[i] for i in chunk), self._embed(self._inputs(raw[chunk]))))
      self.num_decoded += len(chunk)
      if self.progress:
        self.progress.advance(len(chunk))
    return np.stack([self.by_key[key] for key in keys])

  def _inputs(self, raw):
    """What the embedding function takes of decoded images: themselves (on the device's
    preprocessing) or the host's network inputs."""
    if self.image_embed_fn:
      return raw
    return network_inputs(raw, self.crop_size, self.image_size)

  def _prepare(self, paths, scheduled):
    """(keys of `paths`, keys of the new images, their `_inputs`) of one chunk.

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
    return keys, list(new), self._inputs(raw)

  def _stream(self, paths, bar):
    chunks = [paths[i:i + self.chunk_images] for i in range(0, len(paths), self.chunk_images)]
    scheduled = set(self.by_key)
    if bar:
      bar.add_total(len(paths))
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
        if bar:
          bar.advance(len(chunk))

  def _embed(self, inputs):
    if not self.image_embed_fn:
      return embeddings_lib.extract(self.embed_fn, inputs, self.batch_size, flip=self.flip,
                                    progress_every_s=None)
    # Fixed-size batches (the last zero-padded), so the device function compiles once; all
    # are dispatched before the first result is read, so the device never waits on the host.
    size = self.batch_size
    padded = np.zeros((-(-len(inputs) // size) * size,) + inputs.shape[1:], np.uint8)
    padded[:len(inputs)] = inputs
    outputs = [self.image_embed_fn(padded[i:i + size]) for i in range(0, len(padded), size)]
    outputs = np.concatenate([np.asarray(out) for out in outputs])
    return embeddings_lib.l2_normalize(outputs[:len(inputs)])
