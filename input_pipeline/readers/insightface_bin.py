"""Reader and writer for insightface verification packs (`lfw.bin`, `cfp_fp.bin`, ...).

A pack is a pickle of (bins, issame_list): bins holds 2N encoded images (JPEG as insightface
writes them; anything Pillow reads), pair i being images 2i and 2i + 1, each as bytes or a
1-D uint8 numpy array; issame_list holds N booleans. Packs pickled by Python 2 hold the
images as `str` and are loaded with encoding='bytes', as insightface loads them. Folds are
insightface's: 10 contiguous blocks of pairs in file order (KFold without shuffle), the first
N % 10 blocks one pair longer.

Only the types a pack holds are unpickled (numpy arrays, bytes, lists, booleans); a pickle
that names anything else is refused, so a pack cannot run code when read.
"""
import dataclasses
import io
import os
import pickle

import numpy as np
from PIL import Image

from aprn_jax.evaluation.verification import contiguous_folds  # insightface's KFold
from input_pipeline.readers import cfp
from input_pipeline.readers import images as images_lib

NUM_FOLDS = 10
FORMATS = ("jpeg", "png")
# What numpy arrays and scalars (numpy 1 and 2 names) and Python 3 bytes pickled at protocol
# <= 2 need.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


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
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError(
          f"it refers to {module}.{name}, which a verification pack does not hold")
    return super().find_class(module, name)


def _unpickle(path):
  """The unpickled contents of `path`; Python 2 `str` comes back as bytes.

  encoding='bytes' changes nothing for Python 3 pickles, so one setting reads both.
  """
  with open(path, "rb") as f:
    try:
      return _PackUnpickler(f, encoding="bytes").load()
    except Exception as error:  # pylint: disable=broad-except
      raise ValueError(f"{path}: not a verification pack pickle: "
                       f"{type(error).__name__}: {error}") from None


def _encoded(path, index, item):
  """The bytes of image `index` of the pack, from bytes or a 1-D uint8 array."""
  if isinstance(item, (bytes, bytearray, memoryview)):
    return bytes(item)
  if isinstance(item, np.ndarray) and item.ndim == 1 and item.dtype in (np.uint8, np.int8):
    return item.tobytes()
  shape = getattr(item, "shape", "")
  raise ValueError(f"{path}: image {index} is a {type(item).__name__}{shape}, not encoded "
                   f"image bytes")


def _is_same(path, issame):
  """bool (N,) from the pack's issame_list, which must hold booleans (or 0/1)."""
  values = np.asarray(issame)
  if values.ndim != 1 or not (values.dtype == bool or (
      values.dtype.kind in "iu" and np.all((values == 0) | (values == 1)))):
    raise ValueError(f"{path}: issame_list must be a list of N booleans, got "
                     f"{type(issame).__name__} of dtype {values.dtype} and shape "
                     f"{values.shape}")
  return values.astype(bool)


def read_bin(path, size, num_folds=NUM_FOLDS, num_threads=8):
  """The pack at `path`, its images decoded at `size` x `size` (see `readers.images`)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
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
  encoded = [_encoded(path, i, item) for i, item in enumerate(bins)]
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
          fold=contiguous_folds(num_pairs, num_folds).astype(np.int32),
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
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    pickle.dump(([bytes(b) for b in bins], issame), f, protocol=4)
