"""Offline 51-point landmark annotation of real face images with dlib.

    python -m input_pipeline.annotate --input=DIR_OR_REC [--out=DIR] [--num_workers=N]
        [--upsample_below=PIXELS]

Needs the optional extra: `pip install -r requirements-annotate.txt` (dlib's HOG face
detector and its 68-point iBUG predictor; the predictor's training data is licensed for
non-commercial use only).

Inputs:
- an image folder (one subfolder per identity, searched recursively): writes
  `<out>/landmarks.csv` in the format of `readers.images` (`relative/path.jpg,x1,y1,...`,
  paths relative to `<out>`, which defaults to the folder itself);
- an insightface RecordIO pair `train.rec` + `train.idx`, given as `.../train` or
  `.../train.rec`: writes `<out>/landmarks.csv` lines `<record index>,x1,y1,...`, `<out>`
  defaulting to the folder of the .rec.
The points are the 68 iBUG points less the jaw (`landmarks.ibug68_to_51`), in pixels of the
decoded image as stored (no EXIF rotation, as `readers.images` loads it), following the
convention of `input_pipeline.landmarks` (dlib's integer pixel indices + 0.5).

Detection: an image whose shorter side is below `--upsample_below` pixels (default 100) is
first enlarged (bilinear) by the smallest whole factor that brings it there, and detected and
fitted at that size, the points scaled back: dlib's detector finds faces down to about 80
pixels, so on 48x48 or 32x30 images (UCI's CMU faces) it finds nothing as they are. The HOG
detector then runs on the image as is and, when it finds nothing, once more on the image
upsampled 2x (faces down to about 40 pixels, e.g. 112x112 aligned crops). The
largest face wins, among detections scoring at least half the best score (on the test photo
a mission patch scored 0.05 against the face's 1.2, with a larger box). Aligned crops
(`--aligned`, default for .rec) where it still finds nothing are fitted in the box where the
detector puts an ArcFace-aligned face (`template_box`), unless the image is blank. Not the
whole image as the box: on 96-160 px aligned crops of a real face, the points fitted in the
whole-image box were about 9 px (at 112 px) from those fitted on the uncropped photo, in the
template box 0.4 px, as in a detected box.

Resumable: lines are appended and flushed as results come in; a restart keeps the lines
already written (dropping a torn last line) and skips their images, and those in
`<out>/unannotated.txt` (lines `<path or record index><TAB><reason>`, every image that got
no landmarks). Delete that file to retry them. Progress goes to stderr; when no face is
found in most images, the likely cause and the flags to try are printed there too.
"""
import argparse
import contextlib
import functools
import importlib.util
import io
import itertools
import multiprocessing
import os
import sys

import numpy as np
from PIL import Image

from input_pipeline import console, files
from input_pipeline import landmarks as landmarks_lib
from input_pipeline import recordio
from input_pipeline.readers import images as images_lib

INSTALL_HINT = "pip install -r requirements-annotate.txt"
LANDMARKS_FILE = "landmarks.csv"
UNANNOTATED_FILE = "unannotated.txt"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm")

# Where dlib's detector puts its box on an ArcFace-aligned crop, as fractions of the width
# and height (left, top, right, bottom): the mean of its boxes on 112-160 px crops of a real
# face.
_TEMPLATE_BOX = (0.17, 0.31, 0.83, 0.98)
# Below this grey-level standard deviation an image is blank: nothing to fit.
_BLANK_STD = 2.0
# Detections scoring below this fraction of the best one are ignored (see `detect`).
_CONFIDENT_FRACTION = 0.5
# Images with a shorter side below this are enlarged before detection (see the docstring).
DEFAULT_UPSAMPLE_BELOW = 100
# dlib's HOG detector: the smallest face it finds as is, in pixels.
_SMALLEST_FACE = 80
NO_FACE = "no face detected"
_REPORT_SECONDS = 10.0


def _predictor_path(path=None):
  """The 68-point model file: `path`, or the one face-recognition-models ships."""
  if path is None:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
      raise RuntimeError("the 68-point landmark model is not installed (package "
                         f"face-recognition-models); run `{INSTALL_HINT}`")
    path = os.path.join(spec.submodule_search_locations[0], "models",
                        "shape_predictor_68_face_landmarks.dat")
  if not os.path.isfile(path):  # dlib reads a local file; not a user path of the layer
    raise RuntimeError(f"landmark model file not found: {path}; run `{INSTALL_HINT}`")
  return path


def template_box(width, height):
  """(left, top, right, bottom) pixel box of the face in an aligned width x height crop."""
  left, top, right, bottom = _TEMPLATE_BOX
  return (round(left * width), round(top * height), round(right * width) - 1,
          round(bottom * height) - 1)


@functools.lru_cache(maxsize=None)
def _models(predictor_path):
  """(dlib, detector, predictor), loaded once per process (the predictor takes ~1 s)."""
  try:
    import dlib  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise RuntimeError(f"dlib is not installed; run `{INSTALL_HINT}`") from None
  return (dlib, dlib.get_frontal_face_detector(),
          dlib.shape_predictor(_predictor_path(predictor_path)))


class Annotator:
  """dlib's HOG face detector and 68-point predictor, giving 51 points per image."""

  def __init__(self, aligned=False, predictor_path=None,
               upsample_below=DEFAULT_UPSAMPLE_BELOW):
    self._dlib, self._detector, self._predictor = _models(predictor_path)
    self.aligned = aligned
    self.upsample_below = upsample_below

  def upsample_factor(self, image):
    """The whole factor that brings the image's shorter side to `upsample_below` (1: none)."""
    side = min(image.shape[:2])
    if not self.upsample_below or side >= self.upsample_below or side < 1:
      return 1
    return -(-self.upsample_below // side)

  def detect(self, image):
    """The face box (left, top, right, bottom) in a uint8 RGB array, or None.

    The largest of the detections scoring at least half the best score: weak false
    positives (scores near 0) can be larger than the face (scores near 1).
    """
    for upsample in (0, 1):
      boxes, scores, _ = self._detector.run(image, upsample, 0.0)
      if boxes:
        confident = [box for box, score in zip(boxes, scores)
                     if score >= _CONFIDENT_FRACTION * max(scores)]
        best = max(confident, key=lambda box: box.area())
        return best.left(), best.top(), best.right(), best.bottom()
    return None

  def fit(self, image, box):
    """float32 (51, 2) landmarks of the face in `box` (left, top, right, bottom)."""
    shape = self._predictor(image, self._dlib.rectangle(*(int(v) for v in box)))
    points = np.array([(p.x, p.y) for p in shape.parts()], np.float32) + 0.5
    return landmarks_lib.ibug68_to_51(points)

  def annotate(self, image):
    """(points or None, how): how is 'detected', 'template box' or why there are none.

    Small images are detected and fitted enlarged (`upsample_factor`); the points are in
    pixels of `image` as given (continuous coordinates scale by the factor exactly).
    """
    factor = self.upsample_factor(image)
    if factor > 1:
      height, width = image.shape[:2]
      image = np.asarray(Image.fromarray(image).resize((width * factor, height * factor),
                                                       Image.Resampling.BILINEAR))
    points, how = self._annotate(image)
    return (None if points is None else points / np.float32(factor)), how

  def _annotate(self, image):
    box = self.detect(image)
    if box is not None:
      return self.fit(image, box), "detected"
    if not self.aligned:
      return None, NO_FACE
    if image.mean(axis=2).std() < _BLANK_STD:
      return None, f"{NO_FACE} and the image is blank"
    return self.fit(image, template_box(image.shape[1], image.shape[0])), "template box"


def decode(source):
  """A uint8 (H, W, 3) RGB array from a file path or encoded bytes."""
  with contextlib.ExitStack() as stack:
    file = (io.BytesIO(source) if isinstance(source, bytes)
            else stack.enter_context(files.open(source, "rb")))
    with Image.open(file) as image:
      return np.ascontiguousarray(np.asarray(image.convert("RGB"), np.uint8))


def annotate_one(annotator, source):
  """(points or None, how) for one image; decoding errors become the reason."""
  if source is None:
    return None, "record missing from the .idx"
  try:
    image = decode(source)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
    return None, " ".join(f"cannot decode the image: {error}".split())
  return annotator.annotate(image)


def rec_prefix(path):
  """`path` without a .rec or .idx suffix."""
  root, extension = os.path.splitext(path)
  return root if extension in (".rec", ".idx") else path


def _folder_images(folder):
  """Absolute paths of the image files under `folder`, sorted."""
  paths = []
  for root, dirs, names in files.walk(folder):
    dirs.sort()
    paths.extend(os.path.join(root, name) for name in sorted(names)
                 if name.lower().endswith(IMAGE_EXTENSIONS))
  return paths


def _keep_whole_lines(path):
  """Cuts a torn last line (from a killed run) off `path`, if the file exists."""
  if not files.isfile(path):
    return
  data = files.read_bytes(path)
  if data and not data.endswith(b"\n"):
    files.truncate(path, data.rfind(b"\n") + 1)


def done_keys(out):
  """The keys (paths or record indices) in `out`'s landmark table or unannotated list.

  Streams the table (it can have millions of lines) rather than keeping its fields.
  """
  keys = set()
  table = os.path.join(out, LANDMARKS_FILE)
  if files.isfile(table):
    expected = 1 + 2 * landmarks_lib.NUM_POINTS["ibug51"]
    with files.open(table, encoding="utf-8") as lines:
      for line_number, line in enumerate(lines, 1):
        if not line.strip():
          continue
        if line.count(",") != expected - 1:
          raise images_lib.Row(table, line_number, []).error(
              f"expected a key and {expected - 1} numbers, got {line.count(',') + 1} "
              "fields; not a 51-point table of this command")
        keys.add(line[:line.index(",")])
  skipped = os.path.join(out, UNANNOTATED_FILE)
  if files.isfile(skipped):
    keys.update(row.fields[0] for row in images_lib.read_rows(skipped, separator="\t"))
  return keys


# One annotator per worker process (dlib objects do not pickle).
_worker_annotator = None


def _init_worker(aligned, predictor_path, upsample_below):
  global _worker_annotator
  _worker_annotator = Annotator(aligned, predictor_path, upsample_below)


def _work(item):
  key, source = item
  return key, *annotate_one(_worker_annotator, source)


def _batches(iterable, size):
  iterator = iter(iterable)
  while batch := list(itertools.islice(iterator, size)):
    yield batch


class _Progress:
  """Counts per outcome on a console.Progress to `log`: every few seconds and at the end."""

  def __init__(self, total, log):
    self.counts = {"detected": 0, "template box": 0, "unannotated": 0}
    self._progress = console.Progress("annotate:", total, "images", every_s=_REPORT_SECONDS,
                                      stream=log)

  def _summary(self):
    return "(" + ", ".join(f"{count} {name}" for name, count in self.counts.items()) + ")"

  def add(self, outcome):
    self.counts[outcome] += 1
    self._progress.advance(note=self._summary())

  def done(self):
    self._progress.close(note=self._summary())


def no_face_hint(no_face, total, upsample_below, aligned):
  """The likely cause of finding no face in most images, and the flags; None otherwise."""
  if not total or no_face * 2 <= total:
    return None
  larger = 2 * max(upsample_below, DEFAULT_UPSAMPLE_BELOW)
  return (f"annotate: no face detected in {no_face} of {total} images. dlib's detector finds "
          f"faces of about {_SMALLEST_FACE} pixels or more (40 after its own 2x pass): the "
          f"faces are likely too small. Images under --upsample_below={upsample_below} "
          f"pixels are enlarged first; try --upsample_below={larger}"
          + ("" if aligned else ", or --aligned if the images are aligned face crops (the "
             "template box is then fitted where no face is found)")
          + f"; delete {UNANNOTATED_FILE} in the output folder to retry those images.")


def annotate(input_path, out=None, aligned=None, num_workers=1, predictor_path=None,
             log=sys.stderr, upsample_below=DEFAULT_UPSAMPLE_BELOW):
  """Annotates a folder or .rec into `out` (see the module docstring); returns counts."""
  with contextlib.ExitStack() as stack:
    if files.isdir(input_path):
      folder = files.abspath(input_path)
      out = files.abspath(out or folder)
      paths = {files.relpath(path, out).replace(os.sep, "/"): path
               for path in _folder_images(folder)}
      keys, source = list(paths), paths.get
      aligned = bool(aligned)
    else:
      prefix = rec_prefix(input_path)
      for suffix in (".rec", ".idx"):
        if not files.isfile(prefix + suffix):
          raise FileNotFoundError(f"--input is neither a folder nor a RecordIO pair: "
                                  f"{prefix + suffix} not found")
      out = files.abspath(out or os.path.dirname(files.abspath(prefix)))
      rec = stack.enter_context(recordio.Reader(prefix + ".rec", prefix + ".idx"))
      keys = [str(key) for key in recordio.image_keys(rec, require_all=False)]
      def source(key, rec=rec):
        return rec.read_unpacked(int(key))[1] if int(key) in rec else None
      aligned = True if aligned is None else aligned
    annotator = Annotator(aligned, predictor_path, upsample_below)  # fails early without dlib
    files.makedirs(out, exist_ok=True)
    table_path = os.path.join(out, LANDMARKS_FILE)
    skipped_path = os.path.join(out, UNANNOTATED_FILE)
    _keep_whole_lines(table_path)
    _keep_whole_lines(skipped_path)
    done = done_keys(out)
    todo = [key for key in keys if key not in done]
    print(f"annotate: {len(keys)} images, {len(keys) - len(todo)} already done in {out}",
          file=log)
    progress = _Progress(len(todo), log)
    table = stack.enter_context(files.open(table_path, "a", encoding="utf-8"))
    skipped = stack.enter_context(files.open(skipped_path, "a", encoding="utf-8"))
    pool, no_face = None, 0
    if num_workers > 1:
      pool = multiprocessing.get_context("spawn").Pool(
          num_workers, _init_worker, (aligned, predictor_path, upsample_below))
      stack.callback(pool.terminate)
    for batch in _batches(((key, source(key)) for key in todo), 64 * num_workers):
      if pool:
        results = pool.map(_work, batch, chunksize=16)
      else:
        results = ((key, *annotate_one(annotator, item)) for key, item in batch)
      for key, points, how in results:
        if "," in key or "\n" in key or "\t" in key:
          points, how = None, "the path holds a comma, tab or newline"
        if points is None:
          no_face += how.startswith(NO_FACE)
          skipped.write(f"{key}\t{how}\n")
          skipped.flush()
          progress.add("unannotated")
        else:
          table.write(key + "".join(f",{v:.1f}" for v in points.reshape(-1)) + "\n")
          table.flush()
          progress.add(how)
    progress.done()
    hint = no_face_hint(no_face, len(todo), upsample_below, aligned)
    if hint:
      print(hint, file=log, flush=True)
    return progress.counts


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", required=True,
                      help="image folder, or insightface RecordIO prefix (.../train)")
  parser.add_argument("--out", help="output folder (default: the image folder, or the "
                      "folder of the .rec)")
  parser.add_argument("--aligned", action=argparse.BooleanOptionalAction, default=None,
                      help="images are aligned face crops: fit the template box where no "
                      "face is detected (default: on for .rec, off for folders)")
  parser.add_argument("--num_workers", type=int, default=1, help="processes")
  parser.add_argument("--upsample_below", type=int, default=DEFAULT_UPSAMPLE_BELOW,
                      help="enlarge images whose shorter side is below this many pixels "
                      "before detection (dlib finds faces of about 80 px and up); 0: never")
  parser.add_argument("--predictor", help="a shape_predictor_68_face_landmarks.dat "
                      "(default: the one face-recognition-models installs)")
  args = parser.parse_args(argv)
  if args.num_workers < 1:
    parser.error(f"--num_workers must be at least 1, got {args.num_workers}")
  if args.upsample_below < 0:
    parser.error(f"--upsample_below must be >= 0, got {args.upsample_below}")
  try:
    annotate(args.input, args.out, args.aligned, args.num_workers, args.predictor,
             upsample_below=args.upsample_below)
  except (RuntimeError, FileNotFoundError, ValueError) as error:
    sys.exit(f"annotate: {error}")


if __name__ == "__main__":
  main()
