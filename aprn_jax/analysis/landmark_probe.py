"""Table 3: how much pose the frozen recognizer's hidden maps hold, as landmark-regression error.

For each tap of the backbone a fresh landmark regressor is trained with L1 to the true
landmarks on the maps of the frozen backbone (eval mode: running BatchNorm statistics, no
gradient into R). The regressor is the pose discriminator D that the APRN would put on that tap
(Table 1 / Table 4 widths, built by `models.make_models`), the most faithful probe: its error
at `config.aprn.tap` is what D could reach on the baseline. Where `config.aprn.d_widths` sets
D's widths, every tap's probe keeps Table 1 / Table 4's layers for that tap and ends at D's
last width, so shallow taps still get the deeper regressor the paper gives them. All taps'
probes train together, on the same batches and one backbone forward pass per step, with Adam
(the paper does not name the probes' optimiser; Adam needs no per-tap learning-rate tuning).
One departure from a fresh D: the output layer starts at zero weights and the training images'
mean landmarks as bias, so a probe starts as the predict-the-mean baseline (`train_mean_l1`)
and its steps go to reading pose from the map, not to finding the mean face; what it gains
below that baseline is the pose the map holds.

Training images: the first `probe_train_images` of the training split (TFDS writes them in a
shuffled order, so they mix identities and poses), centred crop, no mirror. Held-out images:
the CFP protocol images with their `landmarks.csv` (test identities, seen neither by R nor by
the probes; frontal and profile views). L1 is the mean absolute error per coordinate in the
normalised [-1, 1] frame of the network input, as the training losses (times image_size / 2 for
pixels); the paper does not state its unit, so compare the order of the taps, not the values.
"""
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf

from aprn_jax import inference, losses, models
from input_pipeline import console, preprocess
from input_pipeline.readers import cfp, images as images_lib


@dataclasses.dataclass
class LandmarkImages:
  """Network inputs with their landmarks; `is_profile` and `identity` may be None."""
  images: np.ndarray          # (N, S, S, 3) float32 in [-1, 1]
  landmarks: np.ndarray       # (N, M, 2) float32, normalised [-1, 1]
  is_profile: np.ndarray = None
  identity: np.ndarray = None
  paths: list = None


def train_images(config, data, num_images):
  """The first `num_images` training examples, centred crop (the eval transform)."""
  n = min(num_images, data.num_examples)
  batches = preprocess.eval_batches(
      lambda: data.dataset_fn().take(n), num_examples=n, global_batch_size=config.eval.batch_size,
      crop_size=config.data.crop_size, image_size=config.data.image_size,
      num_landmarks=data.num_landmarks, process_index=0, process_count=1, local_device_count=1)
  images, landmarks = [], []
  for batch in batches:
    keep = batch["mask"][0]
    images.append(batch["image"][0][keep])
    landmarks.append(batch["landmarks"][0][keep])
  return LandmarkImages(np.concatenate(images), np.concatenate(landmarks))


def cfp_images(config, data, cfp_root):
  """The CFP-FP images that have landmarks, in the network's frame (the held-out set)."""
  pairs = cfp.read_cfp(cfp_root, "FP")
  if pairs.landmarks is None:
    raise FileNotFoundError(f"{cfp_root}/landmarks.csv is missing: the landmark analyses "
                            f"need the CFP images' landmarks")
  keep = np.isfinite(pairs.landmarks).all(axis=(1, 2))
  paths = [p for p, k in zip(pairs.paths, keep) if k]
  raw, points = images_lib.load_images_and_landmarks(paths, pairs.landmarks[keep],
                                                     data.stored_size)
  dataset = tf.data.Dataset.from_tensor_slices({"image": raw, "landmarks": points}).map(
      lambda ex: preprocess.eval_transform(ex, crop_size=config.data.crop_size,
                                           image_size=config.data.image_size))
  out = list(dataset.as_numpy_iterator())
  unix = [p.replace(os.sep, "/") for p in paths]
  return LandmarkImages(
      images=np.stack([ex["image"] for ex in out]),
      landmarks=np.stack([ex["landmarks"] for ex in out]),
      is_profile=np.array(["/profile/" in p for p in unix]),
      identity=np.array([p.split("/")[-3] for p in unix]), paths=paths)


def make_probes(config, num_landmarks, taps):
  """((tap, the PoseDiscriminator D would be on that tap), ...), without BatchNorm syncing.

  A tuple of equal-by-value modules, so the jitted functions below, which take it as a static
  argument, compile once for all phases.
  """
  probes = []
  for tap in taps:
    tap_config = ml_collections.ConfigDict(config.to_dict())
    tap_config.aprn.tap = tap
    if config.aprn.d_widths:
      tap_config.aprn.d_widths = models.table_widths(config.model, tap,
                                                     config.aprn.d_widths[-1])
    probes.append((tap, models.make_models(tap_config, num_classes=1,
                                           num_landmarks=num_landmarks)[1]))
  return tuple(probes)


def tap_features(recognizer, recognizer_variables, images):
  """{tap: map} of the frozen backbone in eval mode."""
  _, taps = recognizer.apply(inference.backbone_variables(recognizer_variables), images,
                             method=lambda module, x: module.backbone(x, train=False))
  return jax.tree.map(jax.lax.stop_gradient, taps)


def batched(fn, images, batch_size):
  """fn over fixed-size batches (the last one padded, so one compile), concatenated."""
  n = len(images)
  outs = []
  for start in range(0, n, batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    outs.append(jax.device_get(fn(chunk)))
  return jax.tree.map(lambda *parts: np.concatenate(parts)[:n], *outs)


_ADAM = optax.scale_by_adam()


@functools.partial(jax.jit, static_argnames=("recognizer", "probes"))
def _init(recognizer, probes, recognizer_variables, images, rng, mean_landmarks):
  """Fresh probes whose output layer starts at the constant `mean_landmarks` (M, 2)."""
  features = tap_features(recognizer, recognizer_variables, images)
  keys = jax.random.split(rng, len(probes))
  variables = {tap: probe.init(key, features[tap], train=False)
               for (tap, probe), key in zip(probes, keys)}
  for v in variables.values():
    out = v["params"]["landmarks"]
    v["params"]["landmarks"] = {"kernel": jnp.zeros_like(out["kernel"]),
                                "bias": mean_landmarks.reshape(out["bias"].shape)}
  return variables, _ADAM.init({tap: v["params"] for tap, v in variables.items()})


@functools.partial(jax.jit, static_argnames=("recognizer", "probes"))
def _train_step(recognizer, probes, recognizer_variables, variables, opt, images, landmarks,
                lr):
  """One Adam step of every probe on the same batch; returns (variables, opt, {tap: L1})."""
  features = tap_features(recognizer, recognizer_variables, images)

  def loss(params):
    l1s, states = {}, {}
    for tap, probe in probes:
      y, states[tap] = probe.apply({**variables[tap], "params": params[tap]}, features[tap],
                                   train=True, mutable=["batch_stats"])
      l1s[tap] = losses.l1(y, landmarks)
    return sum(l1s.values()), (l1s, states)  # disjoint parameters: one sum, separate probes

  params = {tap: v["params"] for tap, v in variables.items()}
  grads, (l1s, states) = jax.grad(loss, has_aux=True)(params)
  updates, opt = _ADAM.update(grads, opt, params)
  params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
  variables = {tap: {**variables[tap], **states[tap], "params": params[tap]}
               for tap, _ in probes}
  return variables, opt, l1s


@functools.partial(jax.jit, static_argnames=("recognizer", "probes"))
def _predict(recognizer, probes, recognizer_variables, variables, images):
  features = tap_features(recognizer, recognizer_variables, images)
  return {tap: probe.apply(variables[tap], features[tap], train=False) for tap, probe in probes}


def train_probes(probes, recognizer, recognizer_variables, train_set, *, steps, batch_size,
                 lr, seed, label="landmark probes"):
  """(probe variables per tap, train L1 per step as {tap: (steps,)}); the steps' progress
  under `label`."""
  rng = np.random.default_rng(seed)
  n = len(train_set.images)

  def batch_index():
    return rng.choice(n, batch_size, replace=n < batch_size)

  variables, opt = _init(recognizer, probes, recognizer_variables,
                         train_set.images[batch_index()], jax.random.key(seed),
                         jnp.asarray(train_set.landmarks.mean(axis=0)))
  history = []
  with console.Progress(label, steps, "steps") as progress:
    for _ in range(steps):
      index = batch_index()
      variables, opt, l1s = _train_step(recognizer, probes, recognizer_variables, variables,
                                        opt, train_set.images[index],
                                        train_set.landmarks[index], np.float32(lr))
      history.append(l1s)
      progress.advance()
  history = jax.device_get(history)
  return variables, {tap: np.array([h[tap] for h in history], np.float32) for tap, _ in probes}


def predictor(probes, probe_variables, recognizer, recognizer_variables, batch_size):
  """images (N, S, S, 3) -> {tap: landmarks (N, M, 2)} of probes (or D), eval mode."""
  apply = lambda images: _predict(recognizer, probes, recognizer_variables, probe_variables,
                                  images)
  return lambda images: batched(apply, np.asarray(images, np.float32), batch_size)


def per_image_l1(predicted, target):
  """Mean absolute error per coordinate of each image: (N, M, 2) -> (N,)."""
  return np.abs(np.asarray(predicted) - np.asarray(target)).mean(axis=(-1, -2))


def _summary(per_image, is_profile):
  out = {"l1": float(per_image.mean())}
  if is_profile is not None:
    for name, where in (("frontal", ~is_profile), ("profile", is_profile)):
      if where.any():
        out[f"l1_{name}"] = float(per_image[where].mean())
  return out


def run(config, recognizer, recognizer_variables, train_set, test_set, mean_face, taps,
        label="landmark probes"):
  """(results dict, probes, {tap: variables}) of the Table 3 probes on `taps`."""
  cfg = config.analysis
  probes = make_probes(config, train_set.landmarks.shape[1], taps)
  variables, history = train_probes(
      probes, recognizer, recognizer_variables, train_set, steps=cfg.probe_steps,
      batch_size=cfg.probe_batch_size, lr=cfg.probe_lr, seed=cfg.seed, label=label)
  predicted = predictor(probes, variables, recognizer, recognizer_variables,
                        config.eval.batch_size)(test_set.images)
  window = max(1, min(10, cfg.probe_steps // 4))
  constant = train_set.landmarks.mean(axis=0)
  results = {
      "train_images": len(train_set.images), "test_images": len(test_set.images),
      "test_set": "cfp_fp", "steps": cfg.probe_steps,
      "train_mean_l1": float(per_image_l1(constant, test_set.landmarks).mean()),
      "mean_face_l1": float(per_image_l1(mean_face, test_set.landmarks).mean()),
      "taps": {}}
  for tap, _ in probes:
    tap_results = _summary(per_image_l1(predicted[tap], test_set.landmarks),
                           test_set.is_profile)
    if cfg.probe_steps:
      tap_results.update(train_l1_first=float(history[tap][:window].mean()),
                         train_l1_last=float(history[tap][-window:].mean()))
    results["taps"][tap] = tap_results
  return results, probes, variables
