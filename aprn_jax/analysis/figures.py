"""Fig. 1: landmarks that D (or a probe) reads off the hidden maps, drawn on the faces.

Each image becomes one square tile: predicted landmarks in red, the truth in green and the
frontal mean face in yellow (the paper's colours: its APRN's predictions sit on the mean face).
A baseline whose maps hold pose puts red on green; an APRN whose maps do not, red on yellow.
"""
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from input_pipeline import landmarks as landmarks_lib

CAPTION = 16  # pixels of the title strip above the tiles
COLOURS = {"mean_face": (255, 220, 0), "truth": (0, 200, 0), "predicted": (230, 0, 0)}


def overlay_size(num_images, tile):
  """(width, height) of the PNG `overlay_png` writes."""
  return num_images * tile, tile + CAPTION


def overlay_png(images, truth, predicted, mean_face, path, *, tile=192, title=""):
  """Writes the tiles of `images` in a row to a PNG; returns its (width, height).

  images: (N, S, S, 3) float in [-1, 1]; truth, predicted: (N, M, 2) and mean_face (M, 2),
  normalised [-1, 1] over the image (x, y).
  """
  path = pathlib.Path(path)
  images = np.asarray(images, np.float32)
  size = overlay_size(len(images), tile)
  canvas = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(canvas)
  radius = max(1.5, tile / 110)
  for i, image in enumerate(images):
    pixels = np.clip(np.rint((image + 1.0) * 127.5), 0, 255).astype(np.uint8)
    canvas.paste(Image.fromarray(pixels).resize((tile, tile), Image.Resampling.BILINEAR),
                 (i * tile, CAPTION))
    layers = (("mean_face", mean_face), ("truth", truth[i]), ("predicted", predicted[i]))
    for name, points in layers:
      for x, y in landmarks_lib.denormalize(np.asarray(points, np.float32), tile, tile):
        x, y = x + i * tile, y + CAPTION
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=COLOURS[name])
  draw.text((4, 2), f"{title}  red: predicted, green: truth, yellow: mean face", fill="black")
  path.parent.mkdir(parents=True, exist_ok=True)
  canvas.save(path, format="PNG")
  return size
