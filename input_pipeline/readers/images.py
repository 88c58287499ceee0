"""File loading shared by the benchmark readers: images, landmark CSVs and protocol tables.

Images (files, or encoded bytes via `decode_image`): decoded with Pillow (any format it
reads), converted to RGB, cut to the centred square (the whole image when it is square) and
resized to `size` x `size` (bilinear, antialiased when shrinking), returned as uint8
[0, 255]. Encoded JPEGs that need no resize (YCbCr or grayscale, already `size` x `size`, the
benchmarks' aligned crops) are decoded by simplejpeg instead: the same libjpeg-turbo pixels
as Pillow's (tested), at about half Pillow's cost per small image, which is most of what
evaluating a large benchmark costs the host. Scaling to [-1, 1] and the crop the model saw in training are left to
`preprocess.eval_batches`, e.g. load at the stored training size 100 and let it centre-crop
96, so evaluation sees the training geometry.

Landmark CSV (`landmarks.csv`): one line per image, `relative/path.jpg,x1,y1,...,xM,yM`, no
header, paths relative to the CSV's folder, pixel coordinates of the image file
(convention of `input_pipeline.landmarks`), M = 51 or 68, the same M on every line.

Protocol tables: errors name the file and the 1-based line (`path:line: message`).
"""
import concurrent.futures
import contextlib
import dataclasses
import io
import math
import os

import numpy as np
from PIL import Image
import simplejpeg

from input_pipeline import files
from input_pipeline import landmarks as landmarks_lib


@dataclasses.dataclass(frozen=True)
class Row:
  """One non-blank line of a protocol file, split into fields."""
  path: str
  line_number: int
  fields: list[str]

  def error(self, message):
    return ValueError(f"{self.path}:{self.line_number}: {message}")

  def integer(self, index, name):
    try:
      return int(self.fields[index])
    except ValueError:
      raise self.error(f"{name} {self.fields[index]!r} is not an integer") from None

  def number(self, index, name):
    try:
      value = float(self.fields[index])
    except ValueError:
      raise self.error(f"{name} {self.fields[index]!r} is not a number") from None
    if not math.isfinite(value):
      raise self.error(f"{name} {self.fields[index]!r} is not finite")
    return value


def read_rows(path, num_fields=None, separator=None):
  """The non-blank lines of a text file as Rows, with `num_fields` fields each if given.

  `separator`: None splits on whitespace; otherwise fields are split on it and stripped.
  """
  path = os.fspath(path)
  if not files.isfile(path):
    raise FileNotFoundError(f"protocol file not found: {path}")
  rows = []
  with files.open(path, encoding="utf-8") as lines:
    for line_number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      fields = ([field.strip() for field in line.split(separator)] if separator
                else line.split())
      row = Row(path, line_number, fields)
      if num_fields is not None and len(fields) != num_fields:
        raise row.error(f"expected {num_fields} fields, got {len(fields)}: {line.strip()!r}")
      rows.append(row)
  return rows


def image_path(row, folder, relative_path):
  """`relative_path` resolved against `folder`; the row's error if no such file exists."""
  path = files.normpath(os.path.join(folder, relative_path))
  if not files.isfile(path):
    raise FileNotFoundError(f"{row.path}:{row.line_number}: image not found: {path}")
  return path


def read_landmarks_csv(path, image_paths):
  """float32 (len(image_paths), M, 2) landmarks from a landmark CSV, NaN where unannotated.

  `image_paths` are matched to the CSV's paths after both are made absolute and normalised.
  """
  folder = os.path.dirname(files.abspath(path))
  rows = read_rows(path, separator=",")
  if not rows:
    raise ValueError(f"{path}: no landmarks")
  num_numbers = len(rows[0].fields) - 1
  if num_numbers % 2 or num_numbers // 2 not in landmarks_lib.NUM_POINTS.values():
    raise rows[0].error(
        f"expected a path and 2 * 51 or 2 * 68 numbers, got {num_numbers} numbers")
  table = {}
  for row in rows:
    if len(row.fields) - 1 != num_numbers:
      raise row.error(f"expected a path and {num_numbers} numbers like line "
                      f"{rows[0].line_number}, got {len(row.fields) - 1} numbers")
    image = files.normpath(os.path.join(folder, row.fields[0]))
    if image in table:
      raise row.error(f"second entry for {row.fields[0]}")
    table[image] = [row.number(i, "coordinate") for i in range(1, num_numbers + 1)]
  points = np.full((len(image_paths), num_numbers), np.nan, np.float32)
  for i, image in enumerate(image_paths):
    points[i] = table.get(files.normpath(files.abspath(image)), np.nan)
  return points.reshape(len(image_paths), num_numbers // 2, 2)


def _square_box(width, height):
  """(left, top, side) of the centred square of a width x height image."""
  side = min(width, height)
  return (width - side) / 2, (height - side) / 2, side


def _decode(source, size, name):
  """(uint8 (size, size, 3) array, (width, height)) of an image file or file object.

  `name` says what the image is in the error raised when it does not decode.
  """
  try:
    with contextlib.ExitStack() as stack:
      if isinstance(source, (str, os.PathLike)):  # a path: opened through the file layer
        source = stack.enter_context(files.open(source, "rb"))
      with Image.open(source) as image:
        image = image.convert("RGB")
  except (OSError, SyntaxError, ValueError) as error:
    raise ValueError(f"cannot decode {name}: {error}") from None
  left, top, side = _square_box(*image.size)
  resized = image.resize((size, size), Image.Resampling.BILINEAR,
                         box=(left, top, left + side, top + side))
  return np.asarray(resized, np.uint8), image.size


def _load(path, size):
  """(uint8 (size, size, 3) array, (width, height) of the file's image)."""
  path = os.fspath(path)
  if not files.isfile(path):
    raise FileNotFoundError(f"image file not found: {path}")
  return _decode(path, size, f"image file {path}")


def _on_threads(fn, items, num_threads):
  """[fn(item) for item in items], computed on `num_threads` threads in contiguous chunks
  (one task per chunk: a task per image would cost more than decoding a small one)."""
  items = list(items)
  if not items:
    return []
  chunk = -(-len(items) // num_threads)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    parts = pool.map(lambda start: [fn(item) for item in items[start:start + chunk]],
                     range(0, len(items), chunk))
    return [value for part in parts for value in part]


def _load_all(paths, size, num_threads):
  """(uint8 (N, size, size, 3) images, [(width, height)] of the files) on threads."""
  loaded = _on_threads(lambda path: _load(path, size), paths, num_threads)
  images = np.zeros((len(loaded), size, size, 3), np.uint8)
  for i, (image, _) in enumerate(loaded):
    images[i] = image
  return images, [file_size for _, file_size in loaded]


def load_image(path, size):
  """One image file as a uint8 (size, size, 3) RGB array (see the module docstring)."""
  return _load(path, size)[0]


def _decode_jpeg_without_resize(data, size):
  """simplejpeg's RGB array of a `size` x `size` YCbCr or grayscale JPEG; None for any other
  image, and for any file libjpeg-turbo warns about (truncated, corrupt), which Pillow then
  decodes or rejects with its own error."""
  if data[:2] != b"\xff\xd8":
    return None
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    if (height, width) != (size, size) or colorspace not in ("YCbCr", "Gray"):
      return None
    return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
  except ValueError:
    return None


def decode_image(data, size, name="image bytes"):
  """Encoded image bytes (JPEG, PNG, ...) as `load_image` returns a file's image.

  `name` (e.g. `image 7 of lfw.bin`) goes into the error raised when they do not decode.
  """
  image = _decode_jpeg_without_resize(data, size)
  if image is not None:
    return image
  return _decode(io.BytesIO(data), size, name)[0]


def decode_images(encoded, size, names, num_threads=8):
  """Encoded images (bytes) as a uint8 (N, size, size, 3) array, as `decode_image` each;
  names[i] goes into the error of image i."""
  decoded = _on_threads(lambda item: decode_image(item[0], size, item[1]),
                        zip(encoded, names), num_threads)
  return np.stack(decoded) if decoded else np.zeros((0, size, size, 3), np.uint8)


def read_file_bytes(path):
  """The bytes of an image file, or FileNotFoundError naming it."""
  path = os.fspath(path)
  if not files.isfile(path):
    raise FileNotFoundError(f"image file not found: {path}")
  with files.open(path, "rb") as f:
    return f.read()


def read_files_bytes(paths, num_threads=8):
  """The bytes of each image file (`read_file_bytes`), read on `num_threads` threads."""
  return _on_threads(read_file_bytes, paths, num_threads)


def load_images(paths, size, num_threads=8):
  """Image files as a uint8 (N, size, size, 3) array, decoded on `num_threads` threads."""
  return _load_all(paths, size, num_threads)[0]


def load_images_and_landmarks(paths, points, size, num_threads=8):
  """Images as `load_images`, with their (N, M, 2) pixel landmarks moved to the loaded grid.

  The landmarks follow the centred-square crop and the resize: p -> (p - corner) * size /
  side. NaN landmarks stay NaN.
  """
  points = np.asarray(points, np.float32)
  if points.ndim != 3 or points.shape[0] != len(paths) or points.shape[2] != 2:
    raise ValueError(f"points must have shape ({len(paths)}, M, 2), got {points.shape}")
  images, file_sizes = _load_all(paths, size, num_threads)
  moved = np.empty_like(points)
  for i, (width, height) in enumerate(file_sizes):
    left, top, side = _square_box(width, height)
    moved[i] = (points[i] - np.float32([left, top])) * np.float32(size / side)
  return images, moved
