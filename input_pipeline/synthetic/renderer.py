"""A numpy ray caster for heads built from clipped ellipsoids, with exact landmarks.

Scene: a head is a union of ellipsoids ("parts"), each optionally cut by up to two planes (hair
caps, for example). Rays are cast analytically (one quadratic per ray and part), so occlusion is
exact: a landmark is visible only when the first surface along its camera ray is its own
anchor point (and that surface is not seen edge-on), which hides the far eye at profile.

Head frame (centimetres): x towards the subject's left (the image's right in a frontal view),
y down, z away from the camera in a frontal view (the face is at negative z); the origin is
level with the eyes, midway between the ears.

Camera: orthographic, looking along +z of the camera frame. A point p of the head lands at
camera coordinates R (p - PIVOT), R = R_roll R_yaw R_pitch, and at pixel
(size * (1/2 + shift_x) + f * x_cam, size * (1/2 + shift_y) + f * y_cam), with
f = size * scale / FRAME_CM, in the pixel convention of `input_pipeline.landmarks` (pixel i
covers [i, i + 1)). Pose angles in degrees:
- yaw > 0: the face turns towards the image's right (the subject's left), so at yaw +90 the
  subject's left eye (iBUG points 42-47) is the far, hidden one;
- pitch > 0: the face tilts up (the nose moves up in the image);
- roll > 0: the face rotates clockwise in the image.
A horizontal mirror of the image is the mirrored head at (-yaw, pitch, -roll).
"""
import dataclasses

import numpy as np

FRAME_CM = 22.0  # width of the image at scale 1, in head centimetres
PIVOT = np.array([0.0, 2.2, -3.5])  # head point at the image centre, and the centre of rotation

# Materials of parts: they select the albedo and the surface details in `_albedo`.
SKIN, NOSE, EAR, HAIR, BROW, EYE, LIPS = range(7)

# Landmarks whose surface faces the camera at a grazing angle (cosine below this) count as
# hidden: they sit on the silhouette, where no detector could place them.
MIN_FACING = 0.1
_DEPTH_TOLERANCE_CM = 0.02
_MARKER_COLOUR = np.array([1.0, 0.0, 1.0])
_SCLERA = np.array([0.86, 0.84, 0.8])
_MOLE_TINT = np.array([0.45, 0.33, 0.28])
_FRECKLE_TINT = np.array([0.78, 0.66, 0.6])
_FRECKLE_CELL_CM = 0.32

# Multi-PIE-style fixed illuminations: (azimuth, elevation) of the light in degrees, camera
# frame, azimuth > 0 towards the image's right.
ILLUMINATIONS = ((0.0, 10.0), (-50.0, 20.0), (50.0, 20.0), (-25.0, 45.0), (25.0, -10.0))


@dataclasses.dataclass(frozen=True)
class Parts:
  """K clipped ellipsoids in head coordinates.

  centre: (K, 3); rotation: (K, 3, 3), columns are the ellipsoid's axes; radii: (K, 3);
  clip_normal: (K, 2, 3) and clip_offset: (K, 2): a surface point p belongs to the part only
  where clip_normal[k, j] . p >= clip_offset[k, j] for both j (a zero normal with offset -1
  keeps everything); material: (K,) int, one of the material constants.
  """
  centre: np.ndarray
  rotation: np.ndarray
  radii: np.ndarray
  clip_normal: np.ndarray
  clip_offset: np.ndarray
  material: np.ndarray

  def __len__(self):
    return len(self.centre)

  def to_local(self):
    """Matrices A (K, 3, 3) mapping head offsets from each centre to the unit sphere."""
    return np.swapaxes(self.rotation, 1, 2) / self.radii[:, :, None]


@dataclasses.dataclass(frozen=True)
class Appearance:
  """Albedos (RGB in [0, 1]) and identity marks, in head coordinates.

  beard: (3,) colour; beard_density: (4,) stipple density of the stubble/full-beard zone,
  moustache, goatee and sideburn zones (0 = none); moles: (N, 3) centres on the skin,
  mole_radii: (N,); freckle_density in [0, 1] on cheeks and nose; hair_planes: (2, 3) normals
  and hair_offsets (2,): skin above both planes is scalp hair (offsets > 1e3: no scalp hair);
  mouth_y: height of the lips' seam; nostril_x: half the distance of the nostrils.
  """
  skin: np.ndarray
  hair: np.ndarray
  brow: np.ndarray
  iris: np.ndarray
  lips: np.ndarray
  beard: np.ndarray
  beard_density: np.ndarray
  moles: np.ndarray
  mole_radii: np.ndarray
  freckle_density: float
  freckle_seed: int
  hair_planes: np.ndarray
  hair_offsets: np.ndarray
  mouth_y: float
  nostril_x: float
  iris_radius: float


@dataclasses.dataclass(frozen=True)
class Head:
  """A renderable identity: its parts, appearance and the 3-D anchors of the 51 landmarks.

  anchors: (51, 3) points on the surface in the iBUG-51 order; anchor_part: (51,) the part each
  anchor lies on (its normal decides grazing visibility).
  """
  parts: Parts
  appearance: Appearance
  anchors: np.ndarray
  anchor_part: np.ndarray


@dataclasses.dataclass(frozen=True)
class View:
  """Everything about one image except the identity.

  yaw, pitch, roll: degrees (conventions in the module docstring); scale: zoom factor; shift:
  (dx, dy) of the image centre, in units of the image size; light_dir: (3,) unit vector
  towards the light, camera frame (x right, y down, z away from the camera: a frontal light
  has z < 0); light, ambient: intensities; tint: (3,) light colour; background_seed: seeds
  the clutter and the pixel noise; noise: standard deviation of the pixel noise in [0, 1].
  """
  yaw: float
  pitch: float
  roll: float
  scale: float = 1.0
  shift: tuple = (0.0, 0.0)
  light_dir: tuple = (0.0, 0.0, -1.0)
  light: float = 0.8
  ambient: float = 0.35
  tint: tuple = (1.0, 1.0, 1.0)
  background_seed: int = 0
  noise: float = 0.0


def rotation_matrix(yaw, pitch, roll):
  """R with camera = R (head - PIVOT): R_roll R_yaw R_pitch, angles in degrees."""
  y, p, r = np.deg2rad([yaw, pitch, roll])
  r_yaw = np.array([[np.cos(y), 0, -np.sin(y)], [0, 1, 0], [np.sin(y), 0, np.cos(y)]])
  r_pitch = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
  r_roll = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
  return r_roll @ r_yaw @ r_pitch


def light_direction(azimuth, elevation):
  """Unit vector towards a light at (azimuth, elevation) degrees, camera frame."""
  a, e = np.deg2rad([azimuth, elevation])
  return np.array([np.sin(a) * np.cos(e), -np.sin(e), -np.cos(a) * np.cos(e)])


def sample_view(rng, yaw, illumination=None):
  """A random view at `yaw` degrees: pose jitter, framing jitter, light and background.

  `illumination`: index into ILLUMINATIONS for a fixed light (Multi-PIE style), or None for a
  random light from the front hemisphere.
  """
  if illumination is None:
    direction = light_direction(rng.uniform(-70, 70), rng.uniform(-20, 60))
  else:
    direction = light_direction(*ILLUMINATIONS[illumination])
  return View(
      yaw=float(yaw),
      pitch=float(np.clip(rng.normal(0, 6), -15, 15)),
      roll=float(np.clip(rng.normal(0, 4), -10, 10)),
      scale=float(rng.uniform(0.94, 1.06)),
      shift=tuple(rng.uniform(-0.03, 0.03, 2)),
      light_dir=tuple(direction),
      light=float(rng.uniform(0.55, 1.0)),
      ambient=float(rng.uniform(0.2, 0.45)),
      tint=tuple(1.0 + rng.uniform(-0.1, 0.1, 3)),
      background_seed=int(rng.integers(2**31)),
      noise=float(rng.uniform(0.0, 0.025)))


@dataclasses.dataclass(frozen=True)
class _Quadrics:
  """Ray-part intersection as polynomials in the ray's camera-plane offset (x, y).

  For part k and ray n with origin base[n] + x * axes[0] + y * axes[1] and direction d, the
  points base + x axes[0] + y axes[1] + t d on the part solve a t^2 + 2 b t + c = 0 with
  b = b0 + bx x + by y and c = c0 + cx x + cy y + cxx x^2 + cyy y^2 + cxy x y; the clip plane
  j holds where p0[..., j] + px x + py y + slope t >= offset. Fields are (K, N) or (K, 1), and
  (..., 2) for the planes, so a pixel grid never needs an (H, W, 3) array.
  """
  a: np.ndarray
  b0: np.ndarray
  bx: np.ndarray
  by: np.ndarray
  c0: np.ndarray
  cx: np.ndarray
  cy: np.ndarray
  cxx: np.ndarray
  cyy: np.ndarray
  cxy: np.ndarray
  p0: np.ndarray
  px: np.ndarray
  py: np.ndarray
  slope: np.ndarray
  offset: np.ndarray

  @classmethod
  def of(cls, parts, base, direction, axes=np.zeros((2, 3))):
    """Coefficients for parts (K) and ray bases (N, 3)."""
    a_matrix = parts.to_local()
    dot = lambda u, v: np.einsum("...i,...i->...", u, v)
    per_part = lambda value: value[:, None]  # (K,) -> (K, 1), shared by all rays
    l0 = np.einsum("kij,knj->kni", a_matrix, base[None] - parts.centre[:, None])  # (K, N, 3)
    l1, l2, dl = np.einsum("kij,mj->mki", a_matrix, np.stack([axes[0], axes[1], direction]))
    normal = parts.clip_normal
    return cls(
        a=per_part(dot(dl, dl)),
        b0=dot(l0, dl[:, None]), bx=per_part(dot(l1, dl)), by=per_part(dot(l2, dl)),
        c0=dot(l0, l0) - 1.0, cx=2 * dot(l0, l1[:, None]), cy=2 * dot(l0, l2[:, None]),
        cxx=per_part(dot(l1, l1)), cyy=per_part(dot(l2, l2)), cxy=per_part(2 * dot(l1, l2)),
        p0=np.einsum("nj,kcj->knc", base, normal), px=per_part(normal @ axes[0]),
        py=per_part(normal @ axes[1]), slope=per_part(normal @ direction),
        offset=per_part(parts.clip_offset))

  def first_hit(self, x=0.0, y=0.0, part=Ellipsis):
    """Ray parameters t of the first surface, inf where a ray misses the part.

    part: index into the leading (part) axis, all parts by default. t may be negative: the
    camera has no near plane. Where a cut removes the near surface, the far (inner) one
    counts if the cut keeps it.
    """
    a = self.a[part]
    b = self.b0[part] + self.bx[part] * x + self.by[part] * y
    c = (self.c0[part] + self.cx[part] * x + self.cy[part] * y + self.cxx[part] * x * x
         + self.cyy[part] * y * y + self.cxy[part] * x * y)
    disc = b * b - a * c
    hit = disc > 0
    root = np.sqrt(np.where(hit, disc, 0.0))
    near = (-b - root) / a
    offset = self.offset[part]
    if np.max(offset) <= -1:
      return np.where(hit, near, np.inf)
    far = (-b + root) / a
    keep_near, keep_far = hit, hit
    for j in range(offset.shape[-1]):
      at_origin = self.p0[part][..., j] + self.px[part][..., j] * x + self.py[part][..., j] * y
      slope = self.slope[part][..., j]
      keep_near = keep_near & (at_origin + near * slope >= offset[..., j])
      keep_far = keep_far & (at_origin + far * slope >= offset[..., j])
    return np.where(keep_near, near, np.where(keep_far, far, np.inf))


def cast(parts, origins, direction):
  """First hits of rays (N, 3): (t (N,), part index (N,), -1 where a ray meets nothing)."""
  origins = np.asarray(origins, np.float64).reshape(-1, 3)
  t = _Quadrics.of(parts, origins, direction).first_hit()  # (K, N)
  part = np.argmin(t, axis=0)
  depth = np.take_along_axis(t, part[None], 0)[0]
  return depth, np.where(np.isfinite(depth), part, -1)


def cast_frontal(parts, xy):
  """Frontal rays at head (x, y) (N, 2): (surface points (N, 3), part (N,)); z = inf on a miss."""
  xy = np.asarray(xy, np.float64)
  origins = np.concatenate([xy, np.zeros(xy.shape[:-1] + (1,))], -1)
  depth, part = cast(parts, origins, np.array([0.0, 0.0, 1.0]))
  return np.concatenate([xy, depth[..., None]], -1), part


def surface_normals(parts, points, part_index):
  """Unit outward normals (N, 3), head frame, of points lying on the given parts.

  On part k the normal is the gradient of |A (p - c)|^2, i.e. A^T A (p - c).
  """
  a_matrix = parts.to_local()
  metric = np.einsum("kji,kjl->kil", a_matrix, a_matrix)
  normals = np.einsum("ni,nij->nj", points - parts.centre[part_index], metric[part_index])
  return normals / np.sqrt(np.einsum("ni,ni->n", normals, normals))[:, None]


class _Camera:
  """The orthographic camera of a view at a given output size (see the module docstring)."""

  def __init__(self, view, size):
    self.rotation = rotation_matrix(view.yaw, view.pitch, view.roll)
    self.focal = size * view.scale / FRAME_CM
    self.centre = np.array([size / 2 + view.shift[0] * size, size / 2 + view.shift[1] * size])
    self.direction = self.rotation[2]  # the camera's +z in head coordinates

  def to_camera(self, points):
    return (points - PIVOT) @ self.rotation.T

  def project(self, points):
    return self.centre + self.focal * self.to_camera(points)[..., :2]

  def camera_xy(self, u, v):
    """Camera-plane coordinates (cm) of pixel coordinates u, v."""
    return (u - self.centre[0]) / self.focal, (v - self.centre[1]) / self.focal

  def ray_origins(self, u, v):
    """Head-frame origins (..., 3) of the rays through pixel coordinates u, v (broadcast)."""
    x, y = self.camera_xy(np.asarray(u), np.asarray(v))
    return PIVOT + x[..., None] * self.rotation[0] + y[..., None] * self.rotation[1]

  def part_boxes(self, parts, size):
    """Pixel index ranges (low (K, 2), high (K, 2)), (x, y), that can see each part."""
    centre = self.project(parts.centre)
    axes = parts.rotation * parts.radii[:, None, :]  # columns: the ellipsoids' scaled axes
    half = self.focal * np.linalg.norm(np.einsum("ij,kjl->kil", self.rotation[:2], axes), axis=2)
    low = np.clip(np.floor(centre - half - 0.5).astype(int), 0, size)
    high = np.clip(np.ceil(centre + half + 0.5).astype(int), 0, size)
    return low, high


def _hash(cells, seed):
  """Uniform [0, 1) values from integer cell coordinates (..., 3) and a seed."""
  h = (cells[..., 0] * 73856093) ^ (cells[..., 1] * 19349663) ^ (cells[..., 2] * 83492791)
  h = ((h ^ seed) & 0xFFFFFFFF).astype(np.uint64)
  h = (h * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
  h ^= h >> 15
  h = (h * np.uint64(2246822519)) & np.uint64(0xFFFFFFFF)
  h ^= h >> 13
  return h.astype(np.float64) / 2.0**32


def _mirrored(points):
  """Points with |x|: surface patterns made from them are left-right symmetric."""
  return np.concatenate([np.abs(points[:, :1]), points[:, 1:]], axis=1)


def _stipple(points, cell_cm, seed):
  """Per-point uniform values constant over cells of `cell_cm` (hair grain, beard stubble)."""
  return _hash(np.floor(_mirrored(points) / cell_cm).astype(np.int64), seed)


def _albedo(parts, appearance, points, normals, part_index):
  """RGB albedo (N, 3) of surface points (head frame) with their normals and parts."""
  app = appearance
  material = parts.material[part_index]
  by_material = np.stack([app.skin, app.skin, app.skin, app.hair, app.brow, _SCLERA, app.lips])
  albedo = by_material[material]
  skin_like = material <= EAR

  scalp = skin_like & np.all(points @ app.hair_planes.T >= app.hair_offsets, axis=1)
  albedo[scalp] = app.hair
  hairy = np.flatnonzero(scalp | (material == HAIR) | (material == BROW))
  albedo[hairy] *= (0.8 + 0.4 * _stipple(points[hairy], 0.09, 7))[:, None]

  if app.beard_density.max() > 0:
    # Zones: stubble/full beard on the jaw, moustache, goatee, sideburns.
    skin = np.flatnonzero((material == SKIN) & ~scalp)
    x, y, z = points[skin].T
    zones = np.stack([
        (y > app.mouth_y - 3.2 + 0.35 * np.abs(x)) & (z < -1.0) & (y < 12.5),
        (y > app.mouth_y - 2.2) & (y < app.mouth_y - 0.3) & (np.abs(x) < 2.8),
        (y > app.mouth_y + 0.6) & (np.abs(x) < 1.8),
        (np.abs(x) > 5.0) & (y > -3.5) & (y < 2.5) & (z < 0.5)], -1)
    density = np.max(zones * app.beard_density, axis=1)
    albedo[skin[_stipple(points[skin], 0.07, 11) < density]] = app.beard

  if len(app.moles):
    skin = np.flatnonzero(skin_like)
    skin_points = points[skin]
    on_mole = np.zeros(len(skin), bool)
    for mole, radius in zip(app.moles, app.mole_radii):
      # Only points within the radius along x can be on the mole; the distance test itself
      # is the full 3-D one.
      near = np.flatnonzero(np.abs(skin_points[:, 0] - mole[0]) < radius)
      on_mole[near[np.linalg.norm(skin_points[near] - mole, axis=-1) < radius]] = True
    albedo[skin[on_mole]] = app.skin * _MOLE_TINT

  if app.freckle_density > 0:
    x, y, z = points.T
    zone = np.flatnonzero(skin_like & (z < -5.5) & (y > -1.5) & (y < 4.5) & (np.abs(x) < 5.0))
    scaled = _mirrored(points[zone]) / _FRECKLE_CELL_CM
    cells = np.floor(scaled).astype(np.int64)
    offset = np.stack([_hash(cells, app.freckle_seed + i) for i in range(3)], -1)
    near_centre = np.linalg.norm(scaled - cells - offset * 0.6 - 0.2, axis=-1) < 0.22
    dotted = near_centre & (_hash(cells, app.freckle_seed + 3) < app.freckle_density)
    albedo[zone[dotted]] *= _FRECKLE_TINT

  # Nostrils: the downward-facing underside of the nose, either side of the columella.
  nose = np.flatnonzero(material == NOSE)
  nose_x = np.abs(points[nose, 0])
  nostril = (normals[nose, 1] > 0.55) & (nose_x > 0.22) & (nose_x < app.nostril_x + 0.25)
  albedo[nose[nostril]] *= 0.25

  a_matrix = parts.to_local()
  for k in np.flatnonzero((parts.material == EAR) | (parts.material == EYE)):
    idx = np.flatnonzero(part_index == k)
    local = (points[idx] - parts.centre[k]) @ a_matrix[k].T
    if parts.material[k] == EAR:  # the darker hollow on the outer side
      hollow = ((local[:, 0] * np.sign(parts.centre[k, 0]) > 0)
                & (local[:, 1] ** 2 + local[:, 2] ** 2 < 0.4))
      albedo[idx[hollow]] *= 0.6
    else:  # iris, pupil, the dark line of the upper lashes, the shaded lower lid
      off_axis = np.hypot(local[:, 0] * parts.radii[k, 0], local[:, 1] * parts.radii[k, 1])
      colour = albedo[idx]
      colour[off_axis < app.iris_radius] = app.iris
      colour[off_axis < 0.4 * app.iris_radius] = 0.04
      colour[local[:, 1] < -0.62] = 0.08
      colour[local[:, 1] > 0.8] *= 0.7
      albedo[idx] = colour

  # Lips: the darker seam where they meet.
  lips = np.flatnonzero(material == LIPS)
  albedo[lips[np.abs(points[lips, 1] - app.mouth_y) < 0.09]] *= 0.35
  return albedo


def _shade(albedo, normals_cam, view):
  """Lambert diffuse plus a sky-like ambient and a weak specular highlight."""
  light_dir = np.asarray(view.light_dir)
  diffuse = np.maximum(normals_cam @ light_dir, 0.0)
  sky = 0.75 - 0.25 * normals_cam[:, 1]
  half = light_dir + np.array([0.0, 0.0, -1.0])
  half /= np.linalg.norm(half)
  specular = 0.12 * view.light * np.maximum(normals_cam @ half, 0.0) ** 24
  colour = albedo * (view.ambient * sky + view.light * diffuse)[:, None] + specular[:, None]
  return colour * np.asarray(view.tint)


def background(size, seed):
  """A cluttered background (size, size, 3) in [0, 1]: gradient, shapes and bars."""
  rng = np.random.default_rng(seed)
  v, u = (np.mgrid[0:size, 0:size] + 0.5) / size
  base, other = rng.uniform(0.1, 0.9, (2, 3))
  angle = rng.uniform(0, 2 * np.pi)
  ramp = np.clip(0.5 + (u - 0.5) * np.cos(angle) + (v - 0.5) * np.sin(angle), 0, 1)
  image = base + (other - base) * ramp[..., None]
  for _ in range(rng.integers(3, 8)):
    colour = rng.uniform(0.0, 1.0, 3)
    cu, cv = rng.uniform(-0.1, 1.1, 2)
    hu, hv = rng.uniform(0.05, 0.4, 2)
    kind = rng.integers(3)
    if kind == 0:
      mask = (np.abs(u - cu) < hu) & (np.abs(v - cv) < hv)
    elif kind == 1:
      mask = ((u - cu) / hu) ** 2 + ((v - cv) / hv) ** 2 < 1
    else:
      theta = rng.uniform(0, np.pi)
      mask = np.abs((u - cu) * np.cos(theta) + (v - cv) * np.sin(theta)) < hu * 0.25
    image[mask] = colour
  return image


def project_landmarks(head, view, size):
  """(landmarks (51, 2) float32 pixels, visibility (51,) bool) of `head` seen in `view`."""
  camera = _Camera(view, size)
  points = camera.project(head.anchors)
  anchor_depth = camera.to_camera(head.anchors)[:, 2]
  origins = head.anchors - anchor_depth[:, None] * camera.direction
  first, _ = cast(head.parts, origins, camera.direction)
  normals = surface_normals(head.parts, head.anchors, head.anchor_part)
  facing = -(normals @ camera.rotation.T)[:, 2]
  visible = (first >= anchor_depth - _DEPTH_TOLERANCE_CM) & (facing > MIN_FACING)
  return points.astype(np.float32), visible


def render(head, view, size, supersample=2, marker_radius_px=0.0):
  """Renders `head` in `view`: (image uint8 (size, size, 3), landmarks, visibility).

  supersample: rays per pixel along each axis (anti-aliasing). marker_radius_px > 0 is a debug
  mode: surface points closer than that many output pixels (in 3-D) to a landmark anchor are
  painted pure magenta, unlit and noise-free, so tests can check the projected landmarks
  against the rendered pixels independently of `project_landmarks`.
  """
  if size <= 0 or supersample <= 0:
    raise ValueError(f"size and supersample must be positive, got {size}, {supersample}")
  fine = size * supersample
  camera = _Camera(view, size)
  fine_camera = _Camera(view, fine)
  coords = np.arange(fine) + 0.5
  parts = head.parts
  depth = np.full((fine, fine), np.inf)
  part = np.full((fine, fine), -1)
  quadrics = _Quadrics.of(parts, PIVOT[None], fine_camera.direction, fine_camera.rotation[:2])
  for k, ((x0, y0), (x1, y1)) in enumerate(zip(*fine_camera.part_boxes(parts, fine))):
    if x0 >= x1 or y0 >= y1:
      continue
    x, y = fine_camera.camera_xy(coords[None, x0:x1], coords[y0:y1, None])
    t = quadrics.first_hit(x, y, k)
    window = (slice(y0, y1), slice(x0, x1))
    part[window] = np.where(t < depth[window], k, part[window])
    depth[window] = np.minimum(t, depth[window])

  covered = part >= 0
  rows, cols = np.nonzero(covered)
  origins = fine_camera.ray_origins(coords[cols], coords[rows])
  points = origins + depth[rows, cols, None] * fine_camera.direction
  hit_part = part[rows, cols]
  normals = surface_normals(parts, points, hit_part)
  normals_cam = normals @ fine_camera.rotation.T
  normals_cam *= np.where(normals_cam[:, 2] > 0, -1.0, 1.0)[:, None]  # inner sides of cut parts
  colour = _shade(_albedo(parts, head.appearance, points, normals, hit_part), normals_cam, view)
  if marker_radius_px > 0:
    distance = np.linalg.norm(points[:, None] - head.anchors[None], axis=-1).min(1)
    colour[distance < marker_radius_px / camera.focal] = _MARKER_COLOUR

  fine_face = np.zeros((fine, fine, 4))
  fine_face[rows, cols, :3] = colour
  fine_face[rows, cols, 3] = 1.0
  face = sum(fine_face[dy::supersample, dx::supersample]
             for dy in range(supersample) for dx in range(supersample)) / supersample**2
  face, alpha = face[..., :3], face[..., 3:]
  image = face + (1 - alpha) * background(size, view.background_seed)
  if view.noise > 0 and marker_radius_px <= 0:
    image += np.random.default_rng(view.background_seed + 1).normal(0, view.noise, image.shape)
  image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
  landmarks, visibility = project_landmarks(head, view, size)
  return image, landmarks, visibility
