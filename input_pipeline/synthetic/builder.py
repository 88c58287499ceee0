"""TFDS builder `synthetic_faces`: rendered multi-pose faces with exact landmarks, offline.

    builder = SyntheticFaces(config="default", data_dir=...)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))

Configs (stored image size; the network input is the centre or a random crop, 8/9 of it):
- `tiny`: 36x36 (32x32 crops), 40 training identities x 8 images, 20 test and 20 validation
  identities; builds in seconds, for tests and smoke runs.
- `default`: 72x72 (64x64 crops, rendered with one ray per pixel), 300 x 20 training
  images, 990 test identities (10 CFP folds of 693 same and 693 different pairs per
  protocol; the first 650 also in Multi-PIE style), 500 validation ones; CPU training.
- `large`: 126x126 (112x112 crops), 1000 x 30 training images, 990 test (650 Multi-PIE),
  500 validation.
Other sizes: `SyntheticFaces(config=make_config("mine", image_size=..., ...))`.

Features: `image` (S, S, 3) uint8 PNG; `label` int64 (training identities 0..N_train-1, the
classifier's classes; the test split numbers its own identities 0..N_test-1, subject N of the
protocol files is label N - 1, so the ClassLabel holds max(N_train, N_test) names); `landmarks` (51, 2) float32 pixels (iBUG-51 order, convention of
`input_pipeline.landmarks`); `visibility` (51,) bool (False where the head hides the point);
`yaw`, `pitch`, `roll` float32 degrees (conventions of `renderer`: yaw > 0 turns the face to
the image's right); `file_name`: for the test split, the image's path in the protocol tree
(`protocols.ensure`), for the training split an id.

Splits: `train`: each identity's yaws are drawn from the 13 Multi-PIE bins (-90..90, step 15)
with +-7.5 degrees of jitter, as frontal-heavy as web face data (CASIA-WebFace, MS-Celeb): half
the images within |yaw| < 22.5, 4% at |yaw| >= 67.5, so profiles are rare in training as they
are in the data the paper trains on;
`test`: the images of the evaluation protocols (`protocols`), per identity 10 near-frontal
(|yaw| <= 8) and 4 profile (|yaw| >= 75) CFP images and, for the first
`num_multipie_identities`, one frontal Multi-PIE gallery image and probes at all 13 bins under
`illuminations` fixed lights. The validation identities have the
same protocol images; they are not a TFDS split but rendered when first asked for
(`protocols.ensure(builder, "validation")`), so runs that do not tune never pay for them.
Training, test and validation identities are different people (different seed streams).

Every image is a pure function of (config seed, split, identity, image index), so a config
builds to the same bytes every time (with the same numpy on the same kind of CPU; elsewhere
floating-point rounding may move a pixel value by one); `workers` processes render in
parallel without changing the output. The frontal mean face of the training split
(|yaw| < 10) is written as `mean_face.npy` beside the data: `mean_face.read(builder.data_dir)`.
"""
import dataclasses
import io
import multiprocessing

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import console
from input_pipeline import landmarks as landmarks_lib
from input_pipeline import local_build, mean_face
from input_pipeline.synthetic import faces, renderer

NUM_LANDMARKS = landmarks_lib.NUM_POINTS["ibug51"]
NUM_FOLDS = 10
YAW_BINS = tuple(range(-90, 91, 15))
# Frontal-heavy training poses: relative weight of each |yaw bin| (0, 15, ..., 90).
_TRAIN_BIN_WEIGHTS = {0: 1.0, 15: 1.0, 30: 0.8, 45: 0.4, 60: 0.2, 75: 0.03, 90: 0.02}
FRONTAL_MAX_YAW = 8.0
PROFILE_MIN_YAW = 75.0
CFP_FRONTAL, CFP_PROFILE = 10, 4
_SPLIT_STREAMS = {"train": 0, "test": 1, "validation": 2}
PROTOCOL_SPLITS = ("test", "validation")  # identities with CFP and Multi-PIE protocol images
MAX_PROTOCOL_IDENTITIES = 999  # subject folders are 3 digits, as CFP's
_PROGRESS_EVERY_S = 5.0


def _protocol_count_ok(count):
  return (2 * NUM_FOLDS <= count <= MAX_PROTOCOL_IDENTITIES and count % NUM_FOLDS == 0)


_PROTOCOL_COUNT_RULE = (f"a multiple of {NUM_FOLDS} from {2 * NUM_FOLDS} (two per fold) to "
                        f"{MAX_PROTOCOL_IDENTITIES // NUM_FOLDS * NUM_FOLDS}")


@dataclasses.dataclass(eq=False)
class SyntheticFacesConfig(tfds.core.BuilderConfig):
  """A synthetic_faces variant.

  image_size: side of the stored square images; num_train_identities x images_per_identity
  training images; num_test_identities: test people (a multiple of 10: the CFP folds);
  num_validation_identities: people of the validation protocols (0, or as the test count),
  for tuning; num_multipie_identities: how many of a protocol split's first people also
  get the Multi-PIE images (0: all); illuminations: fixed lights of the Multi-PIE probes (1..4);
  seed: the data set's seed; supersample: rays per pixel per axis; workers: rendering
  processes (does not change the data).
  """
  image_size: int = 72
  num_train_identities: int = 300
  images_per_identity: int = 20
  num_test_identities: int = 80
  num_validation_identities: int = 0
  num_multipie_identities: int = 0
  illuminations: int = 2
  seed: int = 0
  supersample: int = 2
  workers: int = 2

  def __post_init__(self):
    checks = {
        "image_size": self.image_size >= 16,
        "num_train_identities": self.num_train_identities >= 1,
        "images_per_identity": self.images_per_identity >= 1,
        "num_test_identities": _protocol_count_ok(self.num_test_identities),
        "num_validation_identities": (self.num_validation_identities == 0
                                      or _protocol_count_ok(self.num_validation_identities)),
        "num_multipie_identities": (0 <= self.num_multipie_identities
                                    <= self.num_test_identities),
        "illuminations": 1 <= self.illuminations < len(renderer.ILLUMINATIONS),
        "supersample": self.supersample >= 1,
        "workers": self.workers >= 1,
    }
    rules = {
        "image_size": ">= 16",
        "num_train_identities": ">= 1",
        "images_per_identity": ">= 1",
        "num_test_identities": _PROTOCOL_COUNT_RULE,
        "num_validation_identities": f"0 or {_PROTOCOL_COUNT_RULE}",
        "num_multipie_identities": f"in 0..num_test_identities ({self.num_test_identities})",
        "illuminations": f"in 1..{len(renderer.ILLUMINATIONS) - 1}",
        "supersample": ">= 1",
        "workers": ">= 1",
    }
    for field, ok in checks.items():
      if not ok:
        raise ValueError(f"synthetic_faces config {self.name!r}: {field}="
                         f"{getattr(self, field)!r} must be {rules[field]}")

  @property
  def num_test_images_per_identity(self):
    """Images of a test person with Multi-PIE images (CFP's, the gallery, the probes)."""
    return CFP_FRONTAL + CFP_PROFILE + 1 + len(YAW_BINS) * self.illuminations

  def multipie_identities(self, split):
    """How many of the split's first people have the Multi-PIE images."""
    count = self.num_test_identities if split == "test" else self.num_validation_identities
    return min(count, self.num_multipie_identities or count)


BUILDER_CONFIGS = (
    SyntheticFacesConfig(name="tiny", description="36x36, 40 x 8 training images",
                         image_size=36, num_train_identities=40, images_per_identity=8,
                         num_test_identities=20, num_validation_identities=20,
                         illuminations=1, supersample=1, workers=1),
    # Power: 990 test people, so 10 CFP folds of 693 same + 693 different pairs each (CFP:
    # 350 + 350), and a fold t interval of about +-1 point at 87% accuracy; one Multi-PIE
    # probe per person and yaw bin for the first 650, so a per-yaw rank-1 has a standard
    # error of at most sqrt(0.25 / 650) = 1.96 points. One ray per pixel: the 28,000 test
    # and training images render in 3.5 minutes on 2 cores (4 rays: 5.5).
    SyntheticFacesConfig(name="default", description="72x72, 300 x 20 training images",
                         image_size=72, num_train_identities=300, images_per_identity=20,
                         num_test_identities=990, num_validation_identities=500,
                         num_multipie_identities=650, illuminations=1, supersample=1),
    SyntheticFacesConfig(name="large", description="126x126, 1000 x 30 training images",
                         image_size=126, num_train_identities=1000, images_per_identity=30,
                         num_test_identities=990, num_validation_identities=500,
                         num_multipie_identities=650, illuminations=1),
)


def make_config(name, image_size, num_train_identities, images_per_identity=20,
                num_test_identities=None, num_validation_identities=0,
                num_multipie_identities=0, illuminations=2, seed=0, supersample=2, workers=2):
  """A custom config (pass it as `SyntheticFaces(config=...)`); `name` names its folder.

  num_test_identities defaults to a tenth of the training identities, rounded up to a
  multiple of 10 (at least 20).
  """
  if name in {c.name for c in BUILDER_CONFIGS}:
    raise ValueError(f"config name {name!r} is taken by a built-in synthetic_faces config; "
                     f"choose another name")
  if num_test_identities is None:
    tenth = -(-num_train_identities // (10 * NUM_FOLDS)) * NUM_FOLDS
    num_test_identities = max(2 * NUM_FOLDS, tenth)
  return SyntheticFacesConfig(
      name=name, description=f"{image_size}x{image_size}, custom",
      image_size=image_size, num_train_identities=num_train_identities,
      images_per_identity=images_per_identity, num_test_identities=num_test_identities,
      num_validation_identities=num_validation_identities,
      num_multipie_identities=num_multipie_identities, illuminations=illuminations,
      seed=seed, supersample=supersample, workers=workers)


def resolve_config(config):
  """A SyntheticFacesConfig from a built-in name or a config object."""
  if isinstance(config, SyntheticFacesConfig):
    return config
  for builtin in BUILDER_CONFIGS:
    if builtin.name == config:
      return builtin
  raise ValueError(f"unknown synthetic_faces config {config!r}; built-in: "
                   f"{[c.name for c in BUILDER_CONFIGS]} (or pass make_config(...))")


def _rng(config, split, *indices):
  return np.random.default_rng([config.seed, _SPLIT_STREAMS[split], *indices])


def _identity_seed(config, split, identity):
  return np.random.SeedSequence([config.seed, _SPLIT_STREAMS[split], identity])


def _jittered(yaw, jitter):
  """yaw + jitter, reflected back into [-90, 90] (beyond profile is the other profile)."""
  value = yaw + jitter
  return float(np.sign(value) * (180 - abs(value)) if abs(value) > 90 else value)


def _train_yaw(rng):
  """A training yaw: a frontal-heavy bin plus uniform jitter of +-7.5 degrees."""
  weights = np.array([_TRAIN_BIN_WEIGHTS[abs(b)] for b in YAW_BINS])
  centre = rng.choice(YAW_BINS, p=weights / weights.sum())
  return _jittered(centre, rng.uniform(-7.5, 7.5))


def train_plan(config, identity):
  """[(file_name, view)] of a training identity."""
  plan = []
  for j in range(config.images_per_identity):
    rng = _rng(config, "train", identity, j + 1)
    plan.append((f"train/{identity:05d}/{j:03d}", renderer.sample_view(rng, _train_yaw(rng))))
  return plan


def test_plan(config, identity, split="test"):
  """[(file_name, view)] of a test (or validation) identity: its CFP and Multi-PIE protocol
  images. CFP subject folders and Multi-PIE subject ids are identity + 1 (1-based, 3 digits);
  the validation split's people are drawn from their own seed stream, so they are neither
  training nor test people."""
  if split not in PROTOCOL_SPLITS:
    raise ValueError(f"split must be one of {PROTOCOL_SPLITS}, got {split!r}")
  subject = f"{identity + 1:03d}"
  plan = []
  for k in range(CFP_FRONTAL):
    rng = _rng(config, split, identity, 1, k)
    view = renderer.sample_view(rng, rng.uniform(-FRONTAL_MAX_YAW, FRONTAL_MAX_YAW))
    plan.append((f"cfp/Data/Images/{subject}/frontal/{k + 1:02d}.jpg", view))
  for k in range(CFP_PROFILE):
    rng = _rng(config, split, identity, 2, k)
    yaw = (-1) ** (k + 1) * rng.uniform(PROFILE_MIN_YAW, 90.0)
    plan.append((f"cfp/Data/Images/{subject}/profile/{k + 1:02d}.jpg",
                 renderer.sample_view(rng, yaw)))
  if identity >= config.multipie_identities(split):
    return plan
  gallery_rng = _rng(config, split, identity, 3)
  plan.append((f"multipie/images/{subject}/0_0.jpg",
               renderer.sample_view(gallery_rng, 0.0, illumination=0)))
  for b, yaw in enumerate(YAW_BINS):
    for light in range(1, config.illuminations + 1):
      rng = _rng(config, split, identity, 4, b, light)
      plan.append((f"multipie/images/{subject}/{yaw}_{light}.jpg",
                   renderer.sample_view(rng, _jittered(yaw, rng.uniform(-2, 2)),
                                        illumination=light)))
  return plan


def generate(config, split):
  """Yields (label, file_name, view, image, landmarks, visibility) of a split, in order."""
  config = resolve_config(config)
  if split == "train":
    plans = [train_plan(config, i) for i in range(config.num_train_identities)]
  elif split in PROTOCOL_SPLITS:
    count = config.num_test_identities if split == "test" else config.num_validation_identities
    plans = [test_plan(config, i, split) for i in range(count)]
  else:
    raise ValueError(f"split must be one of {('train',) + PROTOCOL_SPLITS}, got {split!r}")
  tasks = ((_identity_seed(config, split, i), [view for _, view in plan], config.image_size,
            config.supersample) for i, plan in enumerate(plans))
  total = sum(map(len, plans))
  progress = console.Progress(f"synthetic_faces/{config.name} {split}", total, "images",
                              every_s=_PROGRESS_EVERY_S)
  if config.workers > 1:
    pool = multiprocessing.get_context("spawn").Pool(config.workers)
    results = pool.imap(faces.render_task, tasks)
  else:
    pool, results = None, map(faces.render_task, tasks)
  try:
    for label, (plan, rendered) in enumerate(zip(plans, results)):
      for (file_name, view), (image, points, visible) in zip(plan, rendered):
        yield label, file_name, view, image, points, visible
      progress.advance(len(plan))
  except BaseException:
    progress.stop()
    raise
  finally:
    if pool is not None:
      pool.terminate()
  progress.close()


def _png(image):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


class SyntheticFaces(local_build.LocalBuild, tfds.core.GeneratorBasedBuilder):
  """Rendered faces of many identities from frontal to full profile, with 51 landmarks."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": ("Training poses as frontal-heavy as web face data (4% profiles); more "
                             "identity in frontal features, less in colour and head shape."),
                   "2.0.0": ("Statistical power: 990 test people (650 in Multi-PIE style), "
                             "500 validation people for tuning, one Multi-PIE light; "
                             "default renders one ray per pixel.")}
  BUILDER_CONFIGS = list(BUILDER_CONFIGS)
  DEFAULT_CONFIG_NAME = "default"

  def _info(self):
    config = self.builder_config
    size = config.image_size
    return self.dataset_info_from_configs(
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
            # One feature for both splits: the test split's people are numbered on their own
            # and may outnumber the training identities (the classifier's classes).
            "label": tfds.features.ClassLabel(
                num_classes=max(config.num_train_identities, config.num_test_identities)),
            "landmarks": tfds.features.Tensor(shape=(NUM_LANDMARKS, 2), dtype=np.float32),
            "visibility": tfds.features.Tensor(shape=(NUM_LANDMARKS,), dtype=np.bool_),
            "yaw": tfds.features.Scalar(dtype=np.float32),
            "pitch": tfds.features.Scalar(dtype=np.float32),
            "roll": tfds.features.Scalar(dtype=np.float32),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is rendered
    return {"train": self._generate_examples("train"),
            "test": self._generate_examples("test")}

  def _generate_examples(self, split):
    all_points, all_yaws = [], []
    for label, file_name, view, image, points, visible in generate(self.builder_config, split):
      all_points.append(points)
      all_yaws.append(view.yaw)
      yield file_name, {
          "image": _png(image), "label": label, "landmarks": points, "visibility": visible,
          "yaw": view.yaw, "pitch": view.pitch, "roll": view.roll, "file_name": file_name}
    if split == "train":
      mean_face.write(self.data_dir, mean_face.compute(np.stack(all_points), np.array(all_yaws)))
