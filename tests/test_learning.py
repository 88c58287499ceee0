"""A miniature APRN run on a learnable problem, and the paper's noise test (Table 12).

The faces are 24x24 numpy drawings: an elliptic face on a dark background whose colour layout
(upper half, lower half) is the identity, and whose pose, a yaw and a pitch in [-1, 1], shifts
(and, for the yaw, squeezes) the face and moves five landmarks (eyes, nose tip, mouth corners;
drawn as dark dots) deterministically, the nose most, as a turning head does. A tiny ResNet and
D train with the real step and optimizer (alpha = 0.2 as in the paper; D at a 10x learning
rate so that it keeps up with R' on this short run). Then R (eval mode) and D see uniform
noise: the L2-only variant's D has learnt to emit the mean face whatever the input, the
adversarial D has not (REFERENCE.md section 1).
"""
import jax
import numpy as np
import pytest

from aprn_jax import models, train_state, train_step
from input_pipeline import landmarks
import tiny_setup

SIZE, POINTS, BATCH, STEPS, SEED = 24, 5, 32, 300, 0
TAP = "stage1"
VARIANTS = ("adversarial", "l2_reg")
# Class k has the upper half of the face in colour LAYOUTS[k][0] and the lower in [k][1]:
# neither half alone tells the identity.
RED, GREEN, BLUE = (0.9, 0.2, 0.2), (0.2, 0.9, 0.2), (0.2, 0.3, 0.9)
LAYOUTS = np.array([(RED, GREEN), (GREEN, RED), (RED, BLUE), (BLUE, RED)])
# Landmarks in the face's frame (units of its semi-axes): eyes, nose tip, mouth corners, and
# how far each moves with the yaw and the pitch (the nose, closest to the camera, moves most).
FACE_POINTS = np.array([(-0.45, -0.3), (0.45, -0.3), (0.0, 0.1), (-0.35, 0.5), (0.35, 0.5)])
SHIFT = np.array([0.3, 0.3, 0.6, 0.25, 0.25])


def faces(rng, count):
  """(batch of `count` random faces, their (yaw, pitch)); landmarks normalised to [-1, 1]."""
  yaw, pitch = rng.uniform(-1, 1, (2, count))
  labels = rng.randint(0, len(LAYOUTS), count)
  half_width = 0.3 * SIZE * (1 - 0.3 * np.abs(yaw))
  half_height = 0.4 * SIZE
  centre_x, centre_y = SIZE / 2 + 0.25 * SIZE * yaw, SIZE / 2 + 0.15 * SIZE * pitch
  points_x = centre_x[:, None] + half_width[:, None] * (FACE_POINTS[:, 0] + SHIFT * yaw[:, None])
  points_y = centre_y[:, None] + half_height * (FACE_POINTS[:, 1] + SHIFT * pitch[:, None])
  points = np.stack([points_x, points_y], -1)

  pixel = np.arange(SIZE) + 0.5  # pixel centres (input_pipeline.landmarks convention)
  x, y = pixel[None, None, :, None], pixel[None, :, None, None]
  dx = (x - centre_x[:, None, None, None]) / half_width[:, None, None, None]
  dy = (y - centre_y[:, None, None, None]) / half_height
  face = 1 / (1 + np.exp(8 * (dx**2 + dy**2 - 1)))  # soft-edged ellipse
  colour = np.where(dy < 0, LAYOUTS[labels][:, None, None, 0], LAYOUTS[labels][:, None, None, 1])
  dots = np.exp(-((x - points_x[:, None, None]) ** 2 + (y - points_y[:, None, None]) ** 2)
                / (2 * 0.7**2)).sum(-1, keepdims=True)
  image = face * colour * (1 - np.minimum(dots, 1)) * 2 - 1
  image += rng.normal(0, 0.05, image.shape)
  batch = dict(image=image.astype(np.float32), label=labels.astype(np.int32),
               landmarks=landmarks.normalize(points, SIZE, SIZE).astype(np.float32))
  return batch, np.stack([yaw, pitch], -1)


def frontal_mean_face():
  """The mean landmarks of the frontal faces (|yaw|, |pitch| < 0.15) of a large sample."""
  sample, pose = faces(np.random.RandomState(1), 4000)
  return sample["landmarks"][np.abs(pose).max(-1) < 0.15].mean(0)


def config(variant):
  return tiny_setup.configured(
      model=dict(backbone="resnet", stage_sizes=(1, 1, 1, 1), width=4, embedding_dim=16,
                 head="softmax"),
      aprn=dict(tap=TAP, loss=variant, alpha=0.2, d_widths=(16,),
                d_optim=dict(name="sgd", lr=0.5, momentum=0.9, weight_decay=5e-3,
                             lr_decay=0.1, lr_decay_epochs=())),
      data=dict(image_size=SIZE),
      optim=dict(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-3, lr_decay=0.1,
                 lr_decay_epochs=(0.8 * STEPS,)))  # settles the BatchNorm statistics


def build(variant, axis_name=None):
  return models.make_models(config(variant), num_classes=len(LAYOUTS), num_landmarks=POINTS,
                            axis_name=axis_name)


def train(variant, batches, mean_face):
  """(final state, per-step metrics) of STEPS steps of the real train step from seed SEED.

  `batches` holds STEPS batches stacked on a leading axis; one pmapped lax.scan runs them, so
  the step compiles once.
  """
  cfg = config(variant)
  recognizer, disc = build(variant, axis_name=train_step.AXIS)
  r_tx = train_state.make_optimizer(cfg.optim, steps_per_epoch=1)
  d_tx = train_state.make_optimizer(cfg.aprn.d_optim, steps_per_epoch=1)
  state = train_state.create(recognizer, disc, r_tx, d_tx, jax.random.key(SEED), SIZE, TAP)
  static = dict(recognizer=recognizer, discriminator=disc, r_tx=r_tx, d_tx=d_tx, tap=TAP,
                variant=variant, alpha=cfg.aprn.alpha)

  def run_steps(state, batches, mean_face):
    step = lambda s, batch: train_step.train_step(s, batch, mean_face, **static)
    return jax.lax.scan(step, state, batches)

  run = jax.pmap(run_steps, axis_name=train_step.AXIS, in_axes=(None, 0, None),
                 out_axes=(None, None), devices=jax.devices()[:1])
  args = (state, jax.tree.map(lambda a: a[None], batches), mean_face)
  # Hundreds of steps: worth XLA's optimisations, which conftest turns off for short tests.
  run = run.lower(*args).compile(compiler_options={"xla_backend_optimization_level": 3})
  final, metrics = run(*args)
  return final, jax.tree.map(np.asarray, metrics)


@jax.jit
def predict(state, images):
  """(D's landmarks, R's plain logits) in eval mode: running BatchNorm statistics."""
  recognizer, disc = build(VARIANTS[0])  # the loss variant does not change the modules
  out = recognizer.apply(state.recognizer, images, train=False)
  return disc.apply(state.discriminator, out["taps"][TAP], train=False), out["plain_logits"]


@pytest.fixture(scope="module")
def runs():
  """The mean face, the training batches, and (final state, metrics) of each variant."""
  mean_face = frontal_mean_face()
  batches, _ = faces(np.random.RandomState(SEED + 100), STEPS * BATCH)
  batches = jax.tree.map(lambda a: a.reshape((STEPS, BATCH) + a.shape[1:]), batches)
  trained = {variant: train(variant, batches, mean_face) for variant in VARIANTS}
  return dict(mean_face=mean_face, batches=batches, **trained)


@pytest.mark.parametrize("variant", VARIANTS)
def test_identity_is_learnt(runs, variant):
  final, metrics = runs[variant]
  loss = metrics["identity_loss"]
  assert loss[0] > 0.8 * np.log(len(LAYOUTS))  # chance level at the start
  assert loss[-20:].mean() < 0.1 * loss[0]
  held_out, _ = faces(np.random.RandomState(7), 128)
  _, logits = predict(final, held_out["image"])
  assert np.mean(np.argmax(logits, -1) == held_out["label"]) > 0.8


def test_adversarial_discriminator_learns_the_landmarks(runs):
  # Every batch is new, so the step's d_l1 (taken before its update) is on unseen faces.
  d_l1 = runs["adversarial"][1]["d_l1"]
  # At most half its first L1 (measured: 0.36 of it on an AMD EPYC, under 0.3 on Intel Xeon).
  assert d_l1[-20:].mean() < 0.5 * d_l1[:5].mean(), (d_l1[:5].mean(), d_l1[-20:].mean())
  # D reads the pose from R's tap, so it beats the mean face, though R' works against it.
  mean_face_l1 = np.abs(runs["batches"]["landmarks"][-20:] - runs["mean_face"]).mean()
  assert d_l1[-20:].mean() < 0.6 * mean_face_l1, (d_l1[-20:].mean(), mean_face_l1)


def test_l2_reg_discriminator_emits_the_mean_face_on_noise(runs):
  noise = np.random.RandomState(3).uniform(-1, 1, (128, SIZE, SIZE, 3)).astype(np.float32)
  to_mean = {variant: np.abs(predict(runs[variant][0], noise)[0] - runs["mean_face"]).mean()
             for variant in VARIANTS}
  assert to_mean["l2_reg"] < 0.2 * to_mean["adversarial"], to_mean
