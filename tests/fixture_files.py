"""Small writers of fixture files shared by the reader tests."""
import os

import numpy as np
from PIL import Image


def write_text(path, text):
  """Writes `text` to `path`, making its folder."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_image(path, array):
  """Saves a uint8 array as an image file (format from the suffix), making its folder."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


class PixelEmbedder:
  """Stands in for evaluation's Embedder (evaluate.Embedder, monkeypatched): an image's
  embedding is its centred, L2-normalised pixels."""

  def __init__(self, *unused_args):
    pass

  def images(self, raw):
    x = np.asarray(raw, np.float64).reshape(len(raw), -1)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
