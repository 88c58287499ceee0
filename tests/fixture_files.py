"""Small writers of fixture files shared by the reader tests."""
import os

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
