"""Shapes and parameter counts of the backbones and discriminators (abstract: jax.eval_shape),
and the backbone table."""
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aprn_jax import models, train_state, train_step
from aprn_jax.models import layers, resnet
import tiny_setup


def make_config(backbone="resnet", depth=101, embedding_dim=256, tap="stage4", image_size=224,
                **model):
  return tiny_setup.configured(
      model={**dict(backbone=backbone, depth=depth, stage_sizes=(), width=64,
                    embedding_dim=embedding_dim, head="softmax"), **model},
      aprn=dict(tap=tap, d_widths=()), data=dict(image_size=image_size))


def abstract_init(config, num_landmarks=51):
  recognizer, disc = models.make_models(config, num_classes=10, num_landmarks=num_landmarks)
  size = config.data.image_size
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  out, r_vars = jax.eval_shape(
      lambda x: recognizer.init_with_output(jax.random.key(0), x, jnp.zeros(2, jnp.int32)), images)
  tap = out["taps"][config.aprn.tap]
  landmarks, d_vars = jax.eval_shape(
      lambda f: disc.init_with_output(jax.random.key(0), f, False), tap)
  return r_vars, out, d_vars, landmarks


def count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("depth,expected", [(101, 68_182_848), (152, 83_826_496)])
def test_resnet_matches_public_parameter_count(depth, expected):
  r_vars, out, d_vars, landmarks = abstract_init(make_config(depth=depth))
  assert count(r_vars["params"]["backbone"]) == expected
  assert out["embedding"].shape == (2, 256)
  # Table 1: stem 56, stage1 56, stage2 28, stage3 14, stage4 7 at a 224 input.
  shapes = {name: out["taps"][name].shape for name in resnet.TAPS}
  assert shapes == {"stem": (2, 56, 56, 64), "stage1": (2, 56, 56, 256),
                    "stage2": (2, 28, 28, 512), "stage3": (2, 14, 14, 1024),
                    "stage4": (2, 7, 7, 2048)}
  # The stage4 discriminator of the public code: 41,095,270 parameters for M = 51.
  assert count(d_vars["params"]) == 41_095_270
  assert landmarks.shape == (2, 51, 2)


def conv_bn(cin, cout, k=3):
  return k * k * cin * cout + 2 * cout


@pytest.mark.parametrize("tap,widths", [
    ("stem", (256, 512, 1024, 2048)), ("stage1", (512, 1024, 2048)),
    ("stage2", (1024, 2048)), ("stage3", (2048,)), ("stage4", (2048,))])
def test_table1_discriminators(tap, widths):
  _, out, d_vars, landmarks = abstract_init(make_config(depth=50, tap=tap), num_landmarks=68)
  cin = out["taps"][tap].shape[-1]
  expected = 0
  for w in widths:
    expected += conv_bn(cin, w)
    cin = w
  expected += 2048 * 4 * 4 * 136 + 136  # every tap reaches the dense layer at 7x7 -> pool 4x4
  assert count(d_vars["params"]) == expected
  assert landmarks.shape == (2, 68, 2)


def test_resnet50_and_default_152_embedding():
  r_vars, _, _, _ = abstract_init(make_config(depth=50, embedding_dim=512))
  stages = (3, 4, 6, 3)
  expected = 7 * 7 * 3 * 64 + 2 * 64
  cin = 64
  for i, blocks in enumerate(stages):
    w = 64 * 2**i
    for b in range(blocks):
      expected += (cin * 4 * w if b == 0 else 2 * cin)  # shortcut or pre-activation BN
      expected += cin * w + 2 * w + 9 * w * w + 2 * w + w * 4 * w
      cin = 4 * w
    expected += 2 * cin  # BN after the stage
  expected += 7 * 7 * 2048 * 512 + 512
  assert count(r_vars["params"]["backbone"]) == expected


def test_casia_net_shapes_counts_and_table4_discriminator():
  config = make_config(backbone="casia_net", tap="last_conv", image_size=96, embedding_dim=320)
  r_vars, out, d_vars, landmarks = abstract_init(config)
  widths = [32, 64, 64, 128, 96, 192, 128, 256, 160, 320]
  expected = sum(conv_bn(cin, cout) for cin, cout in zip([3] + widths[:-1], widths))
  assert count(r_vars["params"]["backbone"]) == expected
  assert out["embedding"].shape == (2, 320)
  shapes = {k: v.shape[1:] for k, v in out["taps"].items()}
  assert shapes == {"block1": (96, 96, 64), "block2": (48, 48, 128), "block3": (24, 24, 192),
                    "block4": (12, 12, 256), "block5": (6, 6, 320), "last_conv": (6, 6, 320)}
  # Table 4: three Conv3x3x320 + BN + ReLU, then a dense layer to 2M (no pool).
  assert count(d_vars["params"]) == 3 * conv_bn(320, 320) + 6 * 6 * 320 * 102 + 102
  assert landmarks.shape == (2, 51, 2)


def test_tiny_resnet_any_width_and_input_size():
  config = make_config(stage_sizes=(1, 1, 1, 1), width=8, embedding_dim=32, image_size=64,
                       tap="stage1")
  _, out, _, landmarks = abstract_init(config, num_landmarks=51)
  assert out["taps"]["stage4"].shape == (2, 2, 2, 256)  # 8 * 2**3 * 4 channels
  assert out["embedding"].shape == (2, 32)
  assert landmarks.shape == (2, 51, 2)


@pytest.mark.parametrize("field,value,option", [
    ("aprn.tap", "stage5", "config.aprn.tap"),
    ("model.backbone", "vgg", "config.model.backbone"),
    ("model.head", "sphereface", "config.model.head"),
    ("model.depth", 34, "config.model.depth"),
    ("model.dtype", "float16", "config.model.dtype"),
])
def test_bad_model_configuration_names_the_option(field, value, option):
  config = make_config(depth=50)
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=option.replace(".", r"\.")):
    models.make_models(config, num_classes=10, num_landmarks=51)


def test_embed_is_backbone_only_and_unit_norm():
  config = make_config(stage_sizes=(1, 1, 1, 1), width=4, embedding_dim=8, image_size=32)
  recognizer, _ = models.make_models(config, num_classes=5, num_landmarks=51)
  images = np.random.RandomState(0).randn(4, 32, 32, 3).astype(np.float32)
  variables = recognizer.init(jax.random.key(0), images, None)
  from aprn_jax import inference
  embed = inference.make_embed_fn(recognizer, variables)
  out = embed(images)
  assert out.shape == (4, 8)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
  raw = recognizer.apply(variables, images, None)["embedding"]
  np.testing.assert_allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True),
                             rtol=1e-4, atol=1e-6)
  # The head is not needed: inference reads the backbone's variables only.
  assert set(inference.backbone_variables(variables)["params"]) == {"backbone"}


@pytest.mark.parametrize("stored, crop, flip", [(40, 36, True), (32, 32, False), (30, 24, True)])
def test_image_embed_fn_equals_host_preprocessing_then_embed_fn(stored, crop, flip):
  """uint8 images through the device's crop, resize and flip = the host's eval_images, then
  make_embed_fn, then extract's flip sum (on the 4 fake devices)."""
  from aprn_jax import inference
  from aprn_jax.evaluation import embeddings
  from input_pipeline import preprocess
  config = make_config(stage_sizes=(1, 1, 1, 1), width=4, embedding_dim=8, image_size=32)
  recognizer, _ = models.make_models(config, num_classes=5, num_landmarks=51)
  variables = recognizer.init(jax.random.key(0), np.zeros((4, 32, 32, 3), np.float32), None)
  raw = np.random.default_rng(stored).integers(0, 256, (8, stored, stored, 3), np.uint8)
  inputs = preprocess.eval_images(raw, crop_size=crop, image_size=32)
  expected = embeddings.extract(inference.make_embed_fn(recognizer, variables), inputs,
                                batch_size=8, flip=flip, progress_every_s=None)
  embed = inference.make_image_embed_fn(recognizer, variables, crop_size=crop,
                                        image_size=32, flip=flip)
  got = embeddings.l2_normalize(np.asarray(embed(raw)))
  np.testing.assert_allclose(got, expected, atol=2e-6)
  with pytest.raises(ValueError, match="expected uint8"):
    embed(inputs)
  with pytest.raises(ValueError, match="not divisible by the 4 local devices"):
    embed(raw[:6])


def test_untrained_discriminator_answers_the_mean_face():
  """Bias = the mean face, kernel 0.01 x flax's default: the output is the mean face up to a
  small deviation, for any feature map; a mean face of the wrong size is refused."""
  config = make_config(depth=50, image_size=64, stage_sizes=(1, 1, 1, 1), width=8)
  mean_face = np.random.RandomState(0).uniform(-0.6, 0.6, (51, 2)).astype(np.float32)
  _, disc = models.make_models(config, num_classes=10, num_landmarks=51, mean_face=mean_face)
  features = jax.random.normal(jax.random.key(1), (16, 2, 2, 256)) * 3.0
  answer, variables = disc.init_with_output(jax.random.key(2), features, False)
  np.testing.assert_array_equal(variables["params"]["landmarks"]["bias"], mean_face.ravel())
  assert np.abs(np.asarray(answer) - mean_face).mean() < 0.02
  _, plain = models.make_models(config, num_classes=10, num_landmarks=51)
  assert np.abs(np.asarray(plain.init_with_output(jax.random.key(2), features, False)[0])
                ).mean() < 0.02  # no mean face: zeros
  _, wrong = models.make_models(config, num_classes=10, num_landmarks=51,
                                mean_face=mean_face[:40])
  with pytest.raises(ValueError, match="mean face has 40 points; expected 51"):
    wrong.init(jax.random.key(2), features, False)


class ToyBackbone(nn.Module):
  """A two-convolution backbone that exists only in this test: taps `conv1` (8x8) and
  `conv2` (4x4), a dense embedding."""
  embedding_dim: int
  dtype: Any = jnp.float32
  axis_name: Any = None
  layer_forms: str = "fast"

  @nn.compact
  def __call__(self, x, train: bool):
    norm = layers.batch_norm(train, momentum=0.9, dtype=self.dtype, axis_name=self.axis_name)
    taps = {}
    for name, width in (("conv1", 4), ("conv2", 8)):
      x = layers.Conv(width, (3, 3), (2, 2), dtype=self.dtype, forms=self.layer_forms,
                      name=name)(x)
      taps[name] = x = nn.relu(norm(name=f"{name}_bn")(x))
    return nn.Dense(self.embedding_dim, name="embedding")(x.reshape(x.shape[0], -1)), taps


TOY = models.Backbone(
    build=lambda model_cfg, **common: ToyBackbone(model_cfg.embedding_dim, **common),
    taps=("conv1", "conv2"), last_tap="conv2", d_widths=lambda tap, last: (last,),
    d_pool=False)


@pytest.mark.parametrize("tap", TOY.taps)
def test_a_registered_backbone_trains_with_d_on_each_tap(tap, monkeypatch):
  """A backbone added to models.BACKBONES (no edit of models/__init__.py) builds R and D from
  the config and takes a full APRN step: R's loss falls on a fixed batch, D's parameters
  move, and D sits on the configured tap at the table's width."""
  monkeypatch.setitem(models.BACKBONES, "toy", TOY)
  cfg = tiny_setup.config(tap)
  cfg.model.update(backbone="toy", embedding_dim=8)
  recognizer, disc = tiny_setup.build(cfg)
  assert disc.widths == (8,) and models.tap_names(cfg.model) == TOY.taps
  r_tx, d_tx = optax.sgd(0.05), optax.sgd(0.05)
  state = train_state.create(recognizer, disc, r_tx, d_tx, jax.random.key(0),
                             tiny_setup.IMAGE, tap)
  step = jax.pmap(functools.partial(
      train_step.train_step, recognizer=recognizer, discriminator=disc, r_tx=r_tx, d_tx=d_tx,
      tap=tap), axis_name="batch", in_axes=(None, 0, None), out_axes=(None, None),
      devices=jax.devices()[:1])
  batch = tiny_setup.shard(tiny_setup.batch(8), 1)
  mean_face = np.zeros((tiny_setup.POINTS, 2), np.float32)
  new_state, first = step(state, batch, mean_face)
  for _ in range(4):
    new_state, metrics = step(new_state, batch, mean_face)
  assert metrics["identity_loss"] < first["identity_loss"]
  assert np.isfinite(metrics["d_l1"])
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       new_state.discriminator["params"], state.discriminator["params"])
  assert max(jax.tree.leaves(moved)) > 0


def test_unknown_backbone_and_d_pool_are_named():
  cfg = make_config()
  cfg.model.backbone = "vgg"
  with pytest.raises(ValueError, match=r"config.model.backbone='vgg'.*'resnet', 'casia_net'"):
    abstract_init(cfg)
  cfg = make_config()
  cfg.aprn.d_pool = "avg"
  with pytest.raises(ValueError, match=r"config.aprn.d_pool='avg'"):
    abstract_init(cfg)
  cfg = make_config(backbone="casia_net", tap="last_conv", image_size=96, embedding_dim=128,
                    block_widths=((32, 64), (64, 320)))
  with pytest.raises(ValueError, match="block_widths ends at 320.*embedding_dim=128"):
    abstract_init(cfg)
