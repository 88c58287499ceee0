"""Builds the recognizer R (backbone + identity head) and the pose discriminator D from config.

R and D are separate Flax modules with separate parameter trees: D is dropped at inference,
so the deployed network is exactly R's backbone.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aprn_jax.models import casia_net, discriminator, heads, resnet

BACKBONES = ("resnet", "casia_net")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Recognizer(nn.Module):
  """Backbone + head. Returns a dict: logits (with margin), plain_logits, embedding, taps."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, images, labels=None, train: bool = False):
    embedding, taps = self.backbone(images, train=train)
    logits, plain_logits = self.head(embedding, labels)
    return dict(logits=logits, plain_logits=plain_logits, embedding=embedding, taps=taps)

  def embed(self, images):
    """Inference: the backbone alone, L2-normalised float32 embeddings."""
    embedding, _ = self.backbone(images, train=False)
    embedding = embedding.astype(jnp.float32)
    return embedding * jax.lax.rsqrt(jnp.sum(embedding**2, -1, keepdims=True) + 1e-12)


def _choice(value, allowed, option):
  if value not in allowed:
    raise ValueError(f"{option}={value!r} is not allowed; choose one of {tuple(allowed)}")
  return value


def make_backbone(model_cfg, axis_name=None):
  name = _choice(model_cfg.backbone, BACKBONES, "config.model.backbone")
  dtype = DTYPES[_choice(model_cfg.get("dtype", "float32"), DTYPES, "config.model.dtype")]
  if name == "resnet":
    stage_sizes = model_cfg.get("stage_sizes") or resnet.STAGE_SIZES.get(model_cfg.depth)
    if not stage_sizes:
      raise ValueError(f"config.model.depth={model_cfg.depth!r} is not a bottleneck ResNet; "
                       f"choose one of (50, 101, 152) or set config.model.stage_sizes")
    return resnet.ResNet(stage_sizes=tuple(stage_sizes), width=model_cfg.get("width", 64),
                         embedding_dim=model_cfg.embedding_dim, dtype=dtype,
                         axis_name=axis_name)
  widths = model_cfg.get("block_widths") or casia_net.BLOCK_WIDTHS
  return casia_net.CasiaNet(block_widths=tuple(map(tuple, widths)), dtype=dtype,
                            axis_name=axis_name)


def tap_names(model_cfg):
  return resnet.TAPS if model_cfg.backbone == "resnet" else casia_net.TAPS


def table_widths(backbone, tap, last_width):
  """D's widths on `tap` by Table 1 (ResNet) or Table 4 (CASIA-Net), ending at `last_width`
  (the paper's: the channels of the backbone's last map)."""
  if backbone == "resnet":
    return discriminator.resnet_widths(tap, last_width)
  return (last_width,) * 3  # Table 4: three Conv3x3x320.


def make_models(config, *, num_classes, num_landmarks, mean_face=None, axis_name=None):
  """(Recognizer, PoseDiscriminator) for `config.model` and `config.aprn`.

  `mean_face` (M, 2): the frontal mean face in the network frame, D's initial answer.
  `axis_name` synchronises BatchNorm statistics across the devices of a pmap.
  """
  model_cfg, aprn_cfg = config.model, config.aprn
  backbone = make_backbone(model_cfg, axis_name)
  head = heads.make_head(model_cfg.head, num_classes, s=model_cfg.get("s", 64.0),
                         m=model_cfg.get("m", 0.5), m1=model_cfg.get("m1", 1.0),
                         m2=model_cfg.get("m2", 0.0), m3=model_cfg.get("m3", 0.0),
                         classifier=model_cfg.get("classifier", "dense"),
                         sample_rate=model_cfg.get("sample_rate", 1.0))
  recognizer = Recognizer(backbone=backbone, head=head)

  tap = _choice(aprn_cfg.tap, tap_names(model_cfg), "config.aprn.tap")
  size = config.data.image_size
  _, taps = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.key(0), x, False)[0],
                           jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  last = taps["stage4" if model_cfg.backbone == "resnet" else "last_conv"].shape
  widths = tuple(aprn_cfg.get("d_widths") or table_widths(model_cfg.backbone, tap, last[-1]))
  disc = discriminator.PoseDiscriminator(
      widths=widths, num_landmarks=num_landmarks, target_size=last[1],
      pool=aprn_cfg.get("d_pool", model_cfg.backbone == "resnet"),
      mean_face=None if mean_face is None else tuple(map(tuple, np.asarray(mean_face).tolist())),
      dtype=backbone.dtype,
      axis_name=axis_name)
  return recognizer, disc
