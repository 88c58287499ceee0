"""Landmark schemes, their mirror permutations and the coordinate convention.

Coordinates: (x, y) with x to the right and y down, in pixels of the image they belong to,
continuous: pixel (i, j) covers [i, i+1) x [j, j+1), so its centre is (i + 0.5, j + 0.5) and
an image of width W spans x in [0, W]. A horizontal flip maps x to W - x and swaps left and
right points by the scheme's permutation. The network sees landmarks normalised to [-1, 1]
over the input image (`normalize`), so losses do not depend on the image size.

Schemes:
- `ibug68`: the 68 points of iBUG 300-W / dlib (jaw 0-16, brows 17-26, nose 27-35,
  eyes 36-47, mouth 48-67).
- `ibug51`: the same without the 17 jaw points (brows, nose, eyes, mouth), the 51-point
  scheme of the paper; index i here is index i + 17 of `ibug68`.
"""
import numpy as np

# Mirror partner of each iBUG-68 point (0-based).
_IBUG68_MIRROR_PAIRS = (
    [(i, 16 - i) for i in range(8)]  # jaw
    + [(17, 26), (18, 25), (19, 24), (20, 23), (21, 22)]  # brows
    + [(31, 35), (32, 34)]  # nostrils
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    + [(60, 64), (61, 63), (65, 67)]  # inner lips
)


def _ibug68_flip():
  perm = np.arange(68)
  for a, b in _IBUG68_MIRROR_PAIRS:
    perm[a], perm[b] = b, a
  return perm


IBUG68_FLIP = _ibug68_flip()
IBUG51_FROM_68 = np.arange(17, 68)
IBUG51_FLIP = IBUG68_FLIP[17:] - 17

SCHEMES = {"ibug68": IBUG68_FLIP, "ibug51": IBUG51_FLIP}
NUM_POINTS = {name: len(perm) for name, perm in SCHEMES.items()}

# Index ranges of the facial parts in the 51-point scheme ("right" is the subject's right,
# which is on the image's left in a frontal view).
IBUG51_PARTS = {
    "right_brow": range(0, 5),
    "left_brow": range(5, 10),
    "nose_bridge": range(10, 14),
    "nose_base": range(14, 19),
    "right_eye": range(19, 25),
    "left_eye": range(25, 31),
    "outer_lips": range(31, 43),
    "inner_lips": range(43, 51),
}


def scheme_for(num_points):
  """The scheme name for a landmark count, or a ValueError naming the allowed counts."""
  for name, n in NUM_POINTS.items():
    if n == num_points:
      return name
  raise ValueError(
      f"no landmark scheme has {num_points} points; known: "
      + ", ".join(f"{k} ({v})" for k, v in NUM_POINTS.items()))


def flip_permutation(num_points):
  return SCHEMES[scheme_for(num_points)]


def ibug68_to_51(points68):
  """Drops the jaw: (..., 68, 2) -> (..., 51, 2)."""
  points68 = np.asarray(points68)
  if points68.shape[-2] != 68:
    raise ValueError(f"expected 68 points, got shape {points68.shape}")
  return points68[..., IBUG51_FROM_68, :]


def flip_horizontal(points, width):
  """Landmarks of the mirrored image: x -> width - x, left/right points swapped."""
  points = np.asarray(points)
  perm = flip_permutation(points.shape[-2])
  flipped = points[..., perm, :].copy()
  flipped[..., 0] = width - flipped[..., 0]
  return flipped


def normalize(points, width, height):
  """Pixel coordinates -> [-1, 1] over the image (works on numpy and jax arrays)."""
  scale = np.array([2.0 / width, 2.0 / height], np.float32)
  return points * scale - 1.0


def denormalize(points, width, height):
  scale = np.array([width / 2.0, height / 2.0], np.float32)
  return (points + 1.0) * scale
