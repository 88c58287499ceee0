"""Reader and writer for insightface verification packs (`lfw.bin`, `cfp_fp.bin`, ...).

A pack is a pickle of (bins, issame_list): bins holds 2N encoded images (JPEG as insightface
writes them; anything Pillow reads), pair i being images 2i and 2i + 1; issame_list holds N
booleans. Every layout insightface's tools write is read:
- the faces_emore / MS1M-ArcFace packs: Python 2 pickles (protocol 2) of `str` images, loaded
  with encoding='bytes' as insightface loads them;
- `build_eval_pack.py`: the uint8 arrays `cv2.imencode` returns, shape (n, 1), pickled with
  pickle.HIGHEST_PROTOCOL (5 on Python 3.8+), which refers to numpy's `_frombuffer`
  (`numpy.core.numeric` under numpy 1, `numpy._core.numeric` under numpy 2);
- bytes, bytearrays and 1-D uint8 arrays, at protocols 2 to 5.
Folds are insightface's: 10 contiguous blocks of pairs in file order (KFold without shuffle),
the first N % 10 blocks one pair longer; a pack of fewer pairs than folds has every pair in
fold 0, and `aprn_jax.evaluate` reports it without k-fold figures.

Only the types a pack holds are unpickled (numpy arrays, bytes, lists, booleans): the names a
pickle refers to are looked up in a fixed table, never imported, so a pickle that names
anything else (os.system, ...) is refused before anything runs.
"""
import codecs
import dataclasses
import importlib
import io
import os
import pickle

import numpy as np
from PIL import Image

from input_pipeline import files
from input_pipeline.readers import cfp
from input_pipeline.readers import images as images_lib
from input_pipeline.readers.folds import contiguous_folds  # insightface's KFold

NUM_FOLDS = 10
FORMATS = ("jpeg", "png")


def _numpy_attribute(submodule, name):
  """numpy's `_core.<submodule>.<name>` (numpy 2), or `core.<submodule>.<name>` (numpy 1)."""
  for package in ("numpy._core", "numpy.core"):
    try:
      module = importlib.import_module(f"{package}.{submodule}")
    except ImportError:
      continue
    if hasattr(module, name):
      return getattr(module, name)
  raise ImportError(f"numpy has no {submodule}.{name}")


def _allowed_globals():
  """{(module, name): object} of every name a pickled pack may refer to.

  numpy 1 and numpy 2 spell the module paths differently (numpy.core / numpy._core); both
  spellings map to the installed numpy's object, so a pack reads under either numpy.
  """
  allowed = {("_codecs", "encode"): codecs.encode,  # bytes at protocol <= 2
             ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
  for submodule, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                          ("numeric", "_frombuffer")):  # _frombuffer: protocol 5 arrays
    value = _numpy_attribute(submodule, name)
    for package in ("numpy.core", "numpy._core"):
      allowed[(f"{package}.{submodule}", name)] = value
  return allowed


_ALLOWED_GLOBALS = _allowed_globals()


@dataclasses.dataclass(frozen=True)
class Pack:
  """A verification pack: its decoded images and the pairs over them.

  images: uint8 (2N, size, size, 3), in file order.
  pairs: `cfp.VerificationPairs` with paths `<pack path>#<i>` (names of the images, not
    files), index_a = 0, 2, 4, ..., index_b = index_a + 1, the pack's is_same, contiguous
    folds and no landmarks.
  """
  images: np.ndarray
  pairs: cfp.VerificationPairs


class _PackUnpickler(pickle.Unpickler):
  """An unpickler that builds only the types a verification pack holds."""

  def find_class(self, module, name):
    # Looked up, not imported: nothing outside the table is ever touched.
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError(
          f"it refers to {module}.{name}, which a verification pack does not hold")
    return _ALLOWED_GLOBALS[(module, name)]


def _unpickle(path):
  """The unpickled contents of `path`; Python 2 `str` comes back as bytes.

  encoding='bytes' changes nothing for Python 3 pickles, so one setting reads both.
  """
  with files.open(path, "rb") as f:
    try:
      return _PackUnpickler(f, encoding="bytes").load()
    except Exception as error:  # pylint: disable=broad-except
      raise ValueError(f"{path}: not a verification pack pickle: "
                       f"{type(error).__name__}: {error}") from None


def _encoded(path, index, item):
  """The bytes of image `index` of the pack, from bytes or a uint8 array: 1-D, or the (n, 1)
  that cv2.imencode returns (any shape with one axis longer than 1)."""
  if isinstance(item, (bytes, bytearray, memoryview)):
    return bytes(item)
  if (isinstance(item, np.ndarray) and item.dtype in (np.uint8, np.int8)
      and item.size == max(item.shape, default=0) and item.ndim <= 2):
    return item.tobytes()
  shape = getattr(item, "shape", "")
  raise ValueError(f"{path}: image {index} is a {type(item).__name__}{shape}, not encoded "
                   f"image bytes")


def _is_same(path, issame):
  """bool (N,) from the pack's issame_list, which must hold booleans (or 0/1)."""
  values = np.asarray(issame)
  if values.shape == (0,):  # an empty list is float64 to numpy
    return np.zeros(0, bool)
  if values.ndim != 1 or not (values.dtype == bool or (
      values.dtype.kind in "iu" and np.all((values == 0) | (values == 1)))):
    raise ValueError(f"{path}: issame_list must be a list of N booleans, got "
                     f"{type(issame).__name__} of dtype {values.dtype} and shape "
                     f"{values.shape}")
  return values.astype(bool)


def _folds(num_pairs, num_folds):
  """Contiguous folds; all pairs in fold 0 when there are fewer pairs than folds."""
  if num_pairs < num_folds:
    return np.zeros(num_pairs, np.int32)
  return contiguous_folds(num_pairs, num_folds).astype(np.int32)


def _pack_contents(path):
  """(encoded images as bytes, is_same (N,)) of the pack at `path`, its structure checked."""
  path = os.fspath(path)
  if not files.isfile(path):
    raise FileNotFoundError(f"verification pack not found: {path}")
  contents = _unpickle(path)
  if not isinstance(contents, (tuple, list)) or len(contents) != 2:
    raise ValueError(f"{path}: expected a pickled pair (bins, issame_list), got "
                     f"{type(contents).__name__}"
                     + (f" of length {len(contents)}" if hasattr(contents, "__len__") else ""))
  bins, issame = contents
  if not isinstance(bins, (tuple, list, np.ndarray)):
    raise ValueError(f"{path}: bins must be a list of encoded images, got "
                     f"{type(bins).__name__}")
  is_same = _is_same(path, issame)
  if len(bins) % 2:
    raise ValueError(f"{path}: {len(bins)} images, an odd number; pairs need 2 each")
  if len(bins) != 2 * len(is_same):
    raise ValueError(f"{path}: {len(bins)} images make {len(bins) // 2} pairs, but "
                     f"issame_list has {len(is_same)} entries")
  return [_encoded(path, i, item) for i, item in enumerate(bins)], is_same


def check_bin(path):
  """The number of pairs of the pack at `path`, after checking its pickle and layout and
  decoding its first image (what runs before training; `read_bin` decodes them all)."""
  encoded, is_same = _pack_contents(path)
  if encoded:
    images_lib.decode_images(encoded[:1], 8, [f"image 0 of {os.fspath(path)}"], 1)
  return len(is_same)


def read_bin(path, size, num_folds=NUM_FOLDS, num_threads=8):
  """The pack at `path`, its images decoded at `size` x `size` (see `readers.images`)."""
  path = os.fspath(path)
  encoded, is_same = _pack_contents(path)
  decoded = images_lib.decode_images(encoded, size,
                                     [f"image {i} of {path}" for i in range(len(encoded))],
                                     num_threads)
  num_pairs = len(is_same)
  index_a = np.arange(0, 2 * num_pairs, 2, dtype=np.int32)
  return Pack(
      images=decoded,
      pairs=cfp.VerificationPairs(
          paths=[f"{path}#{i}" for i in range(len(encoded))],
          index_a=index_a,
          index_b=index_a + 1,
          is_same=is_same,
          fold=_folds(num_pairs, num_folds),
          landmarks=None))


def encode_image(image, image_format="jpeg", quality=95):
  """A uint8 (H, W, 3) image as JPEG or PNG bytes (Pillow; quality applies to JPEG)."""
  if image_format not in FORMATS:
    raise ValueError(f"image_format must be one of {FORMATS}, got {image_format!r}")
  buffer = io.BytesIO()
  options = {"quality": quality} if image_format == "jpeg" else {}
  Image.fromarray(image).save(buffer, format=image_format.upper(), **options)
  return buffer.getvalue()


def write_bin(path, images, issame, image_format="jpeg", quality=95):
  """Writes a pack of uint8 (2N, H, W, 3) `images` (pair i = images 2i, 2i + 1) and N flags.

  Pickled as Python 3 bytes and a list of bools (protocol 4), which insightface's loader and
  `read_bin` both read.
  """
  images = np.asarray(images)
  issame = [bool(flag) for flag in np.asarray(issame, bool).ravel()]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images: expected uint8 (2N, H, W, 3), got {images.dtype} "
                     f"{images.shape}")
  if len(images) != 2 * len(issame):
    raise ValueError(f"{len(images)} images for {len(issame)} pairs; need 2 per pair")
  write_encoded_bin(path, [encode_image(image, image_format, quality) for image in images],
                    issame)


def write_encoded_bin(path, bins, issame):
  """Writes a pack of 2N encoded images (bytes, pair i = 2i, 2i + 1) and N flags, pickled as
  `write_bin` does."""
  issame = [bool(flag) for flag in np.asarray(issame, bool).ravel()]
  if len(bins) != 2 * len(issame):
    raise ValueError(f"{len(bins)} images for {len(issame)} pairs; need 2 per pair")
  files.makedirs(os.path.dirname(files.abspath(path)), exist_ok=True)
  with files.open(path, "wb") as f:
    pickle.dump(([bytes(b) for b in bins], issame), f, protocol=4)
