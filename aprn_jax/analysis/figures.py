"""The project's pictures: landmarks on faces (Pillow) and line plots (matplotlib, off-screen).

Fig. 1: landmarks that D (or a probe) reads off the hidden maps, drawn on the faces. Each
image becomes one square tile: predicted landmarks in red, the truth in green and the
frontal mean face in yellow (the paper's colours: its APRN's predictions sit on the mean face).
A baseline whose maps hold pose puts red on green; an APRN whose maps do not, red on yellow.
`overlay_png` draws a row of tiles, `contact_sheet_png` a grid (faces by yaw).

`line_png`: curves with optional 95% bands (ROC curves, rank-1 by yaw, training curves).
Every picture is written through input_pipeline/files.py (any filesystem it serves).
"""
import os

import numpy as np
from PIL import Image, ImageDraw

from input_pipeline import files
from input_pipeline import landmarks as landmarks_lib

CAPTION = 16  # pixels of the title strip above the tiles
COLOURS = {"mean_face": (255, 220, 0), "truth": (0, 200, 0), "predicted": (230, 0, 0)}


def overlay_size(num_images, tile):
  """(width, height) of the PNG `overlay_png` writes."""
  return num_images * tile, tile + CAPTION


def _tile(canvas, draw, image, layers, left, top, tile):
  """Pastes `image` ((S, S, 3) in [-1, 1]) as a tile at (left, top) with its landmark layers,
  ((colour name, (M, 2) points normalised over the image), ...), drawn in that order."""
  pixels = np.clip(np.rint((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255)
  canvas.paste(Image.fromarray(pixels.astype(np.uint8)).resize(
      (tile, tile), Image.Resampling.BILINEAR), (left, top))
  radius = max(1.5, tile / 110)
  for name, points in layers:
    for x, y in landmarks_lib.denormalize(np.asarray(points, np.float32), tile, tile):
      x, y = x + left, y + top
      draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=COLOURS[name])


def overlay_png(images, truth, predicted, mean_face, path, *, tile=192, title=""):
  """Writes the tiles of `images` in a row to a PNG; returns its (width, height).

  images: (N, S, S, 3) float in [-1, 1]; truth, predicted: (N, M, 2) and mean_face (M, 2),
  normalised [-1, 1] over the image (x, y).
  """
  size = overlay_size(len(images), tile)
  canvas = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(canvas)
  for i, image in enumerate(images):
    layers = (("mean_face", mean_face), ("truth", truth[i]), ("predicted", predicted[i]))
    _tile(canvas, draw, image, layers, i * tile, CAPTION, tile)
  draw.text((4, 2), f"{title}  red: predicted, green: truth, yellow: mean face", fill="black")
  save_png(canvas, path)
  return size


def contact_sheet_size(rows, columns, tile):
  """(width, height) of the PNG `contact_sheet_png` writes."""
  return columns * tile, rows * tile + 2 * CAPTION


def contact_sheet_png(images, predicted, mean_face, path, *, column_titles, tile=96,
                      title=""):
  """Writes a grid of faces with predicted landmarks (red) over the mean face (yellow), one
  column per title (yaws, say) under a caption; returns its (width, height).

  images: (R, C, S, S, 3) float in [-1, 1]; predicted: (R, C, M, 2); mean_face (M, 2).
  """
  rows, columns = np.shape(images)[:2]
  size = contact_sheet_size(rows, columns, tile)
  canvas = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(canvas)
  for r in range(rows):
    for c in range(columns):
      layers = (("mean_face", mean_face), ("predicted", predicted[r][c]))
      _tile(canvas, draw, images[r][c], layers, c * tile, 2 * CAPTION + r * tile, tile)
  draw.text((4, 2), f"{title}  red: predicted, yellow: mean face", fill="black")
  for c, text in enumerate(column_titles):
    draw.text((c * tile + 4, CAPTION + 2), str(text), fill="black")
  save_png(canvas, path)
  return size


def _parent_made(path):
  folder = os.path.dirname(os.fspath(path))
  if folder:
    files.makedirs(folder, exist_ok=True)


def save_png(image, path):
  """Writes the PIL image `image` as a PNG at `path`, its folder made if missing."""
  _parent_made(path)
  with files.open(path, "wb") as f:
    image.save(f, format="PNG")


def save_figure(fig, path, dpi=110):
  """Writes the matplotlib figure `fig` at `path` (its format from the extension, as
  savefig(path) picks it), its folder made if missing."""
  _parent_made(path)
  extension = os.path.splitext(os.fspath(path))[1][1:].lower()
  with files.open(path, "wb") as f:
    fig.savefig(f, format=extension or None, dpi=dpi)


def pyplot():
  """matplotlib's pyplot on the off-screen backend: no display needed."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def draw_lines(ax, series, *, xlabel, ylabel, title="", logx=False, xticks=None):
  """series: [(label, x, y, band or None)], band = (low, high) arrays shaded around y."""
  for label, x, y, band in series:
    line, = ax.plot(x, y, marker="o" if len(x) <= 20 else None, ms=3, label=label)
    if band is not None:
      ax.fill_between(x, band[0], band[1], color=line.get_color(), alpha=0.15)
  if logx:
    ax.set_xscale("log")
  if xticks is not None:
    ax.set_xticks(xticks)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  if any(label for label, *_ in series):
    ax.legend(fontsize=8)


def line_png(path, series, *, xlabel, ylabel, title="", logx=False, xticks=None,
             size=(6, 4)):
  """One plot of `series` (`draw_lines`) written to `path` at 110 dpi."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=size)
  draw_lines(ax, series, xlabel=xlabel, ylabel=ylabel, title=title, logx=logx, xticks=xticks)
  fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.93)  # tight_layout's, cheaper
  save_figure(fig, path, dpi=110)
  plt.close(fig)
  return path
