"""Inference: the backbone alone (D and the identity head are not used), L2-normalised."""
import functools

import jax
import numpy as np

from aprn_jax.models import Recognizer


def backbone_variables(recognizer_variables):
  """The part of R's variables that inference needs: the backbone's params and statistics."""
  return {kind: {"backbone": tree["backbone"]} for kind, tree in recognizer_variables.items()}


@functools.lru_cache(maxsize=8)
def _pmapped_embed(recognizer):
  """One pmapped (so compiled once) embedding per recognizer architecture: the phases of a
  run, and every evaluation in one process, share it (modules compare by their fields)."""
  return jax.pmap(lambda v, x: recognizer.apply(v, x, method=Recognizer.embed),
                  in_axes=(None, 0))


def make_embed_fn(recognizer, variables):
  """images (B, H, W, 3) float32 in [-1, 1] -> (B, D) unit-norm float32 embeddings.

  Batches are split over the local devices (B must be divisible by their count, which the
  evaluation's fixed-size padded batches guarantee).
  """
  variables = backbone_variables(variables)
  devices = jax.local_devices()
  apply = _pmapped_embed(recognizer)

  def embed(images):
    images = np.asarray(images, np.float32)
    n = len(devices)
    if images.shape[0] % n:
      raise ValueError(f"batch of {images.shape[0]} images is not divisible by the "
                       f"{n} local devices")
    out = apply(variables, images.reshape((n, -1) + images.shape[1:]))
    return np.asarray(out).reshape((images.shape[0], -1))

  return embed
