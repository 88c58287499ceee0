"""Synthetic identities: face geometry and appearance sampled from a seed, built into heads.

An identity is a set of anthropometric parameters (centimetres, head frame of `renderer`) and
albedos. Most of what tells identities apart is geometry that looks different from the front
and from the side (nose length and protrusion, chin, brow ridge, eye and mouth shape, ears,
hair line and volume) plus local marks (moles, freckles, beards); skin and hair colours vary
only moderately, so colour alone does not identify anyone across lighting changes.

`build_head` turns an identity into clipped ellipsoids and places the 51 landmark anchors
(iBUG-68 order without the jaw) on the surface: contour points (eye corners and lids, outer
lips) where the feature's outline meets the skin in the frontal view, the others where a
frontal ray meets the surface. "Right" is the subject's right, negative x.
"""
import dataclasses

import numpy as np

from input_pipeline.synthetic import renderer

_HAIR_COLOURS = np.array([
    [0.05, 0.045, 0.04], [0.16, 0.1, 0.06], [0.3, 0.19, 0.11], [0.45, 0.32, 0.19],
    [0.66, 0.52, 0.32], [0.42, 0.19, 0.09], [0.55, 0.54, 0.52]])
_IRIS_COLOURS = np.array([
    [0.25, 0.14, 0.07], [0.4, 0.3, 0.13], [0.28, 0.42, 0.27], [0.27, 0.42, 0.62],
    [0.42, 0.47, 0.52]])
_HAIR_MEAN = _HAIR_COLOURS.mean(0)
# Hair shows in every pose: its colour is pulled towards the mean so that it cannot carry
# identity across poses on its own.
_HAIR_SPREAD = 0.7
_LIGHT_SKIN = np.array([0.86, 0.68, 0.56])
_DARK_SKIN = np.array([0.6, 0.42, 0.31])
HAIR_STYLES = ("bald", "shaved", "short", "medium", "long")


@dataclasses.dataclass(frozen=True)
class Identity:
  """The parameters of one synthetic person (lengths in cm, angles in degrees).

  Geometry: cranium radii; face_width and face_length scale the mid and lower face; jaw_width,
  chin (width, forward offset), brow_ridge protrusion, cheek depth factor; eyes (size factor,
  spacing between centres, height, protrusion); brows (height above the eye, thickness, arch,
  half-length); nose (length from the nasion, 0.8 above eye level, down to the tip; alar
  half-width; tip protrusion from the face; tip radius); mouth (height of the seam below the
  eyes, half-width, upper and lower lip thickness, protrusion); ears (size factor, height,
  backward tilt, flare); hair (style index into HAIR_STYLES, front hairline height, volume).
  asymmetry: (eye height, brow height, mouth tilt) differences between the sides.
  Appearance: albedos (skin, hair, brow, iris, lips); beard colour and zone densities
  (stubble/full, moustache, goatee, sideburns); moles as frontal (x, y) positions and radii;
  freckle density and seed.
  """
  cranium: tuple
  face_width: float
  face_length: float
  jaw_width: float
  chin_width: float
  chin_forward: float
  brow_ridge: float
  cheek: float
  eye_size: float
  eye_spacing: float
  eye_height: float
  eye_protrusion: float
  brow_height: float
  brow_thickness: float
  brow_arch: float
  brow_length: float
  nose_length: float
  nose_width: float
  nose_protrusion: float
  nose_tip: float
  mouth_height: float
  mouth_width: float
  upper_lip: float
  lower_lip: float
  lip_protrusion: float
  ear_size: float
  ear_height: float
  ear_tilt: float
  ear_flare: float
  hair_style: int
  hairline: float
  hair_volume: float
  asymmetry: tuple
  skin: tuple
  hair: tuple
  brow: tuple
  iris: tuple
  lips: tuple
  beard: tuple
  beard_density: tuple
  moles: tuple
  mole_radii: tuple
  freckle_density: float
  freckle_seed: int


def sample_identity(seed, symmetric=False):
  """The identity of `seed` (an int or a numpy SeedSequence); the same seed gives the same one.

  symmetric=True removes everything that differs between the left and the right side
  (asymmetries, moles, freckles), for mirror tests.
  """
  rng = np.random.default_rng(seed)

  def normal(mean, std, low, high):
    return float(np.clip(rng.normal(mean, std), low, high))

  hair_style = int(rng.choice(len(HAIR_STYLES), p=[0.06, 0.1, 0.4, 0.28, 0.16]))
  hair_colour = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.9, 1.1)
  hair_colour = _HAIR_MEAN + _HAIR_SPREAD * (hair_colour - _HAIR_MEAN)
  skin = (_LIGHT_SKIN + (_DARK_SKIN - _LIGHT_SKIN) * rng.uniform(0.35, 0.65)
          + rng.normal(0, 0.01, 3))
  beard_density = np.zeros(4)
  if rng.uniform() < 0.3:
    style = rng.integers(4)
    beard_density[style] = rng.uniform(0.35, 0.8)
    if style == 0 and rng.uniform() < 0.5:
      beard_density[1:3] = beard_density[0] + 0.15
  num_moles = 0 if symmetric else int(min(rng.poisson(3.0), 7))
  moles = np.stack([rng.uniform(-4.5, 4.5, num_moles), rng.uniform(-3.0, 9.0, num_moles)], -1)
  freckles = float(rng.uniform(0.25, 0.7)) if rng.uniform() < 0.2 else 0.0
  asymmetry = (0.0, 0.0, 0.0) if symmetric else tuple(rng.normal(0, [0.12, 0.15, 2.0]))
  return Identity(
      cranium=(normal(7.6, 0.2, 7.1, 8.1), normal(9.6, 0.2, 9.1, 10.1),
               normal(9.6, 0.25, 9.0, 10.2)),
      face_width=normal(1.0, 0.075, 0.85, 1.15),
      face_length=normal(1.0, 0.05, 0.88, 1.12),
      jaw_width=normal(1.0, 0.08, 0.82, 1.18),
      chin_width=normal(1.0, 0.12, 0.75, 1.3),
      chin_forward=normal(0.0, 0.4, -0.9, 0.9),
      brow_ridge=normal(0.0, 0.3, -0.6, 0.7),
      cheek=normal(1.0, 0.06, 0.88, 1.12),
      eye_size=normal(1.0, 0.12, 0.75, 1.25),
      eye_spacing=normal(6.3, 0.5, 5.3, 7.3),
      eye_height=normal(0.0, 0.35, -0.7, 0.7),
      eye_protrusion=normal(0.45, 0.07, 0.3, 0.6),
      brow_height=normal(1.6, 0.3, 1.05, 2.2),
      brow_thickness=normal(0.3, 0.08, 0.17, 0.5),
      brow_arch=normal(8.0, 7.0, -6.0, 22.0),
      brow_length=normal(1.9, 0.18, 1.5, 2.3),
      nose_length=normal(4.3, 0.35, 3.5, 5.1),
      nose_width=normal(1.25, 0.22, 0.9, 1.7),
      nose_protrusion=normal(2.1, 0.35, 1.4, 2.9),
      nose_tip=normal(0.85, 0.12, 0.6, 1.1),
      mouth_height=normal(6.6, 0.35, 5.9, 7.4),
      mouth_width=normal(2.4, 0.22, 1.9, 2.9),
      upper_lip=normal(0.45, 0.1, 0.25, 0.7),
      lower_lip=normal(0.55, 0.1, 0.3, 0.8),
      lip_protrusion=normal(0.35, 0.1, 0.15, 0.6),
      ear_size=normal(1.0, 0.1, 0.78, 1.22),
      ear_height=normal(1.3, 0.4, 0.4, 2.2),
      ear_tilt=normal(15.0, 6.0, 2.0, 28.0),
      ear_flare=normal(18.0, 8.0, 2.0, 35.0),
      hair_style=hair_style,
      hairline=normal(-6.2, 0.7, -7.8, -4.8),
      hair_volume=normal(0.25 + 0.35 * max(hair_style - 1, 0), 0.15, 0.1, 1.6),
      asymmetry=asymmetry,
      skin=tuple(skin),
      hair=tuple(hair_colour),
      brow=tuple(hair_colour * rng.uniform(0.6, 0.9)),
      iris=tuple(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]),
      lips=tuple(skin * np.array([0.98, 0.64, 0.64]) * rng.uniform(0.85, 1.05)),
      beard=tuple(hair_colour * 0.8),
      beard_density=tuple(beard_density),
      moles=tuple(map(tuple, moles)),
      mole_radii=tuple(rng.uniform(0.15, 0.35, num_moles)),
      freckle_density=0.0 if symmetric else freckles,
      freckle_seed=int(rng.integers(2**31)))


class _PartList:
  """Collects ellipsoids, then freezes them into `renderer.Parts`."""

  def __init__(self):
    self.rows = []

  def add(self, material, centre, radii, angles=(0.0, 0.0, 0.0), clips=()):
    """Adds an ellipsoid turned by (about x, about y, about z) degrees, cut by <= 2 planes."""
    ax, ay, az = np.deg2rad(angles)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    normals = np.zeros((2, 3))
    offsets = np.full(2, -1.0)
    for j, (normal, offset) in enumerate(clips):
      normals[j], offsets[j] = normal, offset
    self.rows.append((np.asarray(centre, float), rz @ ry @ rx, np.asarray(radii, float),
                      normals, offsets, material))
    return len(self.rows) - 1

  def parts(self):
    columns = list(zip(*self.rows))
    return renderer.Parts(*(np.stack(c) for c in columns[:5]), np.array(columns[5]))


def _surface_z(part_list, x, y):
  """Depth of the current surface at frontal head coordinates (x, y)."""
  points, _ = renderer.cast_frontal(part_list.parts(), [[x, y]])
  return float(points[0, 2])


def _hair_planes(identity):
  """The two planes bounding the hair: above the front hairline, above the ears and nape."""
  front = np.array([0.0, -1.0, 0.35]) / np.linalg.norm([0.0, -1.0, 0.35])
  front_offset = front @ np.array([0.0, identity.hairline, -8.6])
  side_point = np.array([0.0, 2.8 if HAIR_STYLES[identity.hair_style] == "long" else -1.6, 0.8])
  side = np.array([0.0, -0.76, 0.65]) / np.linalg.norm([0.0, -0.76, 0.65])
  return np.stack([front, side]), np.array([front_offset, side @ side_point])


def build_head(identity):
  """The renderable head of an identity: parts, appearance and landmark anchors."""
  g = identity
  parts = _PartList()
  rx, ry, rz = g.cranium
  fw, fl = g.face_width, g.face_length
  parts.add(renderer.SKIN, (0, -3.0, 0.8), (rx, ry, rz))
  parts.add(renderer.SKIN, (0, -2.0, -6.6 - 0.3 * g.brow_ridge), (4.6 * fw, 1.3, 2.2))
  parts.add(renderer.SKIN, (0, 1.8, -8.9 + 5.5 * g.cheek), (6.6 * fw, 5.0, 5.5 * g.cheek))
  parts.add(renderer.SKIN, (0, 2.6, -1.2), (6.9 * fw, 7.2, 7.2))
  parts.add(renderer.SKIN, (0, 5.6 * fl, -3.1), (5.3 * g.jaw_width, 6.0 * fl, 5.5))
  parts.add(renderer.SKIN, (0, 9.5 * fl, -5.8 - g.chin_forward),
            (2.9 * g.chin_width, 2.3, 2.7))
  parts.add(renderer.SKIN, (0, 13.0, 1.6), (5.0, 8.0, 5.0))
  ear_y = g.ear_height
  for sign in (-1, 1):
    parts.add(renderer.EAR, (sign * (rx - 0.3), ear_y, 0.9),
              (0.5, 3.0 * g.ear_size, 1.75 * g.ear_size),
              (-g.ear_tilt, sign * g.ear_flare, 0.0))
  planes, offsets = _hair_planes(g)
  if HAIR_STYLES[g.hair_style] in ("short", "medium", "long"):
    v = g.hair_volume
    parts.add(renderer.HAIR, (0, -3.2, 1.0 + 0.3 * v), (rx + v, ry + v, rz + v),
              clips=list(zip(planes, offsets)))

  # Nose: a bridge from the nasion to the tip, a round tip and two alae.
  nasion_z = _surface_z(parts, 0.0, -0.6)
  tip_y = g.nose_length - 0.8
  tip = np.array([0.0, tip_y, _surface_z(parts, 0.0, tip_y) - g.nose_protrusion])
  top = np.array([0.0, -0.6, nasion_z - 0.15])
  along = tip - top
  length = np.linalg.norm(along)
  tilt = np.rad2deg(np.arctan2(along[2], along[1]))
  parts.add(renderer.NOSE, (top + tip) / 2 + np.array([0, 0, 1.3]),
            (0.45 + 0.3 * g.nose_width, length / 2 + 0.1, 1.45), (tilt, 0, 0))
  parts.add(renderer.NOSE, tip + np.array([0, 0, g.nose_tip]),
            (g.nose_tip * 1.15, g.nose_tip * 0.95, g.nose_tip))
  alar_y = tip_y + 0.35
  for sign in (-1, 1):
    alar_x = sign * (g.nose_width - 0.45)
    alar_z = _surface_z(parts, alar_x, alar_y)
    parts.add(renderer.NOSE, (alar_x, alar_y, alar_z + 0.85 - 0.6),
              (0.62, 0.55, 0.85))

  # Eyes and brows, placed on the skin.
  eyes = []
  eye_radii = np.array([1.6, 0.7, 1.0]) * g.eye_size
  for sign in (-1, 1):
    eye_x = sign * g.eye_spacing / 2
    eye_y = g.eye_height + sign * g.asymmetry[0] / 2
    eye_z = _surface_z(parts, eye_x, eye_y) + eye_radii[2] - g.eye_protrusion
    eyes.append(parts.add(renderer.EYE, (eye_x, eye_y, eye_z), eye_radii,
                          (0.0, -sign * 10.0, 0.0)))
  brows = []
  for sign in (-1, 1):
    brow_x = sign * (g.eye_spacing / 2 + 0.15)
    brow_y = g.eye_height - g.brow_height + sign * g.asymmetry[1] / 2
    brow_radii = (g.brow_length, g.brow_thickness, 0.6)
    brow_z = _surface_z(parts, brow_x, brow_y) + brow_radii[2] - 0.1
    brows.append(parts.add(renderer.BROW, (brow_x, brow_y, brow_z), brow_radii,
                           (0.0, -sign * 12.0, sign * g.brow_arch)))

  # Lips: upper and lower, meeting at the seam.
  mouth_y = g.mouth_height
  lips = []
  for lip_y, thickness in ((mouth_y - g.upper_lip * 0.85, g.upper_lip),
                           (mouth_y + g.lower_lip * 0.85, g.lower_lip)):
    lip_z = _surface_z(parts, 0.0, lip_y) + 0.9 - g.lip_protrusion
    lips.append(parts.add(renderer.LIPS, (0.0, lip_y, lip_z),
                          (g.mouth_width, thickness, 0.9), (0.0, 0.0, g.asymmetry[2])))

  frozen = parts.parts()
  mole_points, on_face = _on_surface(frozen, np.array(g.moles).reshape(-1, 2))
  appearance = renderer.Appearance(
      skin=np.array(g.skin), hair=np.array(g.hair), brow=np.array(g.brow),
      iris=np.array(g.iris), lips=np.array(g.lips), beard=np.array(g.beard),
      beard_density=np.array(g.beard_density),
      moles=mole_points[on_face], mole_radii=np.array(g.mole_radii)[on_face],
      freckle_density=g.freckle_density, freckle_seed=g.freckle_seed,
      hair_planes=planes,
      hair_offsets=offsets if g.hair_style > 0 else np.full(2, 1e4),
      mouth_y=mouth_y, nostril_x=g.nose_width - 0.45, iris_radius=0.55 * g.eye_size)
  anchors, anchor_part = _anchors(frozen, g, eyes, brows, lips, tip, top, alar_y)
  return renderer.Head(frozen, appearance, anchors, anchor_part)


def _on_surface(parts, xy):
  """Surface points (N, 3) under frontal (x, y) positions, and which (N,) hit the head."""
  points, _ = renderer.cast_frontal(parts, xy)
  return points, np.isfinite(points[:, 2])


def _boundary(parts, starts, directions, members, max_cm=4.0, steps=14):
  """How far (N,) from each start, along its direction, the frontal view stays on `members`.

  members: (N, K) bool, the parts that make up each point's feature. Bisection, so the
  feature must be hit at the start and missed at max_cm.
  """
  low = np.zeros(len(starts))
  high = np.full(len(starts), max_cm)
  rows = np.arange(len(starts))
  for _ in range(steps):
    middle = (low + high) / 2
    _, part = renderer.cast_frontal(parts, starts + middle[:, None] * directions)
    inside = (part >= 0) & members[rows, np.maximum(part, 0)]
    low = np.where(inside, middle, low)
    high = np.where(inside, high, middle)
  return low


def _anchors(parts, g, eyes, brows, lips, tip, top, alar_y):
  """The 51 anchors (iBUG-68 order without the jaw) and the part each lies on."""
  num_parts = len(parts)
  starts, directions, members = [], [], []

  def contour(start, direction, feature):
    member = np.zeros(num_parts, bool)
    member[list(feature)] = True
    starts.append(start)
    directions.append(direction)
    members.append(member)

  # Eyes (36-47): image-left corner, two upper-lid points, image-right corner, two lower-lid
  # points, clockwise in the image; the lid points a third of the way from the centre.
  eye_points = []
  for eye in eyes:
    centre = parts.centre[eye, :2]
    half = parts.radii[eye, 0] * 0.85
    for dx, dy in ((-1, 0), (-1 / 3, -1), (1 / 3, -1), (1, 0), (1 / 3, 1), (-1 / 3, 1)):
      start = centre + (np.array([dx * half, 0.0]) if dy else 0.0)
      contour(start, np.array([dx, 0.0]) if not dy else np.array([0.0, dy]), [eye])
      eye_points.append(len(starts) - 1)

  # Outer lips (48-59): corners on the seam, points above and below it at fixed fractions
  # of the mouth's half-width, clockwise in the image from the subject's right corner.
  seam = np.array([0.0, g.mouth_height])
  lip_fractions = ((-1, 0), (-0.6, -1), (-0.25, -1), (0, -1), (0.25, -1), (0.6, -1),
                   (1, 0), (0.6, 1), (0.3, 1), (0, 1), (-0.3, 1), (-0.6, 1))
  for fx, dy in lip_fractions:
    start = seam + (np.array([fx * g.mouth_width * 0.8, 0.0]) if dy else 0.0)
    contour(start, np.array([0.0, dy]) if dy else np.array([fx, 0.0]), lips)

  starts, directions, members = map(np.array, (starts, directions, members))
  reach = _boundary(parts, starts, directions, members)
  inset = np.where(directions[:, 1] == 0, 0.12, 0.05)
  contour_xy = starts + (reach - inset)[:, None] * directions

  eye_xy = contour_xy[:12]
  outer_lips_xy = contour_xy[12:]
  mouth_left = outer_lips_xy[0, 0] + 0.25
  mouth_right = outer_lips_xy[6, 0] - 0.25
  inner_lips_xy = [(mouth_left, g.mouth_height)]
  inner_lips_xy += [(f * mouth_right, g.mouth_height - 0.04) for f in (-0.45, 0.0, 0.45)]
  inner_lips_xy += [(mouth_right, g.mouth_height)]
  inner_lips_xy += [(f * mouth_right, g.mouth_height + 0.04) for f in (0.45, 0.0, -0.45)]

  brow_xy = []
  for brow in brows:
    axis = parts.rotation[brow][:2, 0]
    for s in (-0.8, -0.4, 0.0, 0.4, 0.8):
      brow_xy.append(parts.centre[brow, :2] + s * parts.radii[brow, 0] * axis * np.sign(axis[0]))
  bridge_xy = [(0.0, top[1] + f * (tip[1] - top[1])) for f in (0.0, 1 / 3, 2 / 3, 1.0)]
  base_y = alar_y + 0.35
  half_base = g.nose_width - 0.35
  base_xy = [(-half_base, base_y - 0.15), (-half_base / 2, base_y), (0.0, base_y + 0.1),
             (half_base / 2, base_y), (half_base, base_y - 0.15)]

  xy = np.concatenate([brow_xy, bridge_xy, base_xy, eye_xy, outer_lips_xy, inner_lips_xy])
  points, part = renderer.cast_frontal(parts, xy)
  if not np.all(np.isfinite(points)):
    raise ValueError(f"landmark anchors missed the head: {np.flatnonzero(part < 0)}")
  return points, part


def render_identity(seed, views, size, supersample=2):
  """Renders the identity of `seed` in each of `views`: [(image, landmarks, visibility)]."""
  head = build_head(sample_identity(seed))
  return [renderer.render(head, view, size, supersample) for view in views]


def render_task(task):
  """`render_identity(*task)`, for process pools (this module imports only numpy)."""
  return render_identity(*task)
