"""A tiny APRN set-up shared by the train-step tests: a 4-block ResNet on 16x16 images."""
import jax
import numpy as np

from aprn_jax import models, train_state
from configs import default

IMAGE, CLASSES, POINTS = 16, 4, 5


def config(tap="stage2", **aprn):
  return configured(
      model=dict(backbone="resnet", stage_sizes=(1, 1, 1, 1), width=2, embedding_dim=8,
                 head="softmax"),
      aprn=dict(tap=tap, d_widths=(), **aprn), data=dict(image_size=IMAGE),
      optim=dict(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, lr_decay=0.1,
                 lr_decay_epochs=(100,)))


def configured(**sections):
  """configs/default.py with each section's given fields replaced."""
  cfg = default.get_config()
  for name, fields in sections.items():
    cfg[name].update(fields)
  return cfg


def build(cfg, axis_name="batch"):
  return models.make_models(cfg, num_classes=CLASSES, num_landmarks=POINTS,
                            axis_name=axis_name)


def init_state(cfg, r_tx, d_tx, seed=0):
  recognizer, disc = build(cfg)
  return train_state.create(recognizer, disc, r_tx, d_tx, jax.random.key(seed), IMAGE,
                            cfg.aprn.tap)


def batch(size, seed=0):
  rng = np.random.RandomState(seed)
  return dict(image=rng.uniform(-1, 1, (size, IMAGE, IMAGE, 3)).astype(np.float32),
              label=rng.randint(0, CLASSES, size).astype(np.int32),
              landmarks=rng.uniform(-0.8, 0.8, (size, POINTS, 2)).astype(np.float32))


def shard(tree, devices):
  return jax.tree.map(lambda a: a.reshape((devices, -1) + a.shape[1:]), tree)
