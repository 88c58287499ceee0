"""Builds the recognizer R (backbone + identity head) and the pose discriminator D from config.

R and D are separate Flax modules with separate parameter trees: D is dropped at inference,
so the deployed network is exactly R's backbone.
"""
import dataclasses
from typing import Callable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aprn_jax.models import casia_net, discriminator, heads, layers, resnet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
D_POOLS = ("table", "max", "none")  # config.aprn.d_pool: the backbone's table, or either


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A backbone family in the BACKBONES table: how to build it and where D goes on it.

  build(model_cfg, *, dtype, axis_name, layer_forms) -> a module whose
  `__call__(images, train)` returns (embedding, {tap name: feature map}).
  """
  build: Callable[..., nn.Module]
  taps: Tuple[str, ...]          # the maps D may sit on (config.aprn.tap), shallow to deep
  last_tap: str                  # the last map: D's widths end at its channels, D reaches its size
  d_widths: Callable[[str, int], Tuple[int, ...]]  # (tap, last channels) -> D's conv widths
  d_pool: bool                   # D's 3x3/2 max-pool before its dense layer, by the table


def _resnet(model_cfg, **common):
  stage_sizes = tuple(model_cfg.stage_sizes) or resnet.STAGE_SIZES.get(model_cfg.depth)
  if not stage_sizes:
    raise ValueError(f"config.model.depth={model_cfg.depth!r} is not a bottleneck ResNet; "
                     f"choose one of (50, 101, 152) or set config.model.stage_sizes")
  return resnet.ResNet(stage_sizes=stage_sizes, width=model_cfg.width,
                       embedding_dim=model_cfg.embedding_dim, **common)


def _casia_net(model_cfg, **common):
  """CASIA-Net's embedding is its last convolution's average-pooled map, so
  config.model.embedding_dim is that convolution's width (the paper's: 320)."""
  widths = tuple(map(tuple, model_cfg.block_widths))
  if not widths:
    widths = casia_net.BLOCK_WIDTHS[:-1] + ((casia_net.BLOCK_WIDTHS[-1][0],
                                             model_cfg.embedding_dim),)
  elif widths[-1][-1] != model_cfg.embedding_dim:
    raise ValueError(f"config.model.block_widths ends at {widths[-1][-1]} channels but "
                     f"config.model.embedding_dim={model_cfg.embedding_dim}: CASIA-Net's "
                     f"embedding is its last convolution's pooled map; make them equal")
  return casia_net.CasiaNet(block_widths=widths, **common)


# Adding a backbone: a module file and one entry here (or `BACKBONES[name] = Backbone(...)`).
BACKBONES = {
    "resnet": Backbone(_resnet, resnet.TAPS, "stage4", discriminator.resnet_widths,
                       d_pool=True),                       # Table 1
    "casia_net": Backbone(_casia_net, casia_net.TAPS, "last_conv",
                          lambda tap, last: (last,) * 3,   # Table 4: three Conv3x3x320
                          d_pool=False),
}


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


def backbone_entry(model_cfg):
  """The BACKBONES entry of config.model.backbone."""
  return BACKBONES[_choice(model_cfg.backbone, BACKBONES, "config.model.backbone")]


def _common(model_cfg, axis_name):
  """The fields every backbone and D take from config.model."""
  return dict(dtype=DTYPES[_choice(model_cfg.dtype, DTYPES, "config.model.dtype")],
              axis_name=axis_name, layer_forms=layers.check_forms(model_cfg.layer_forms))


def make_backbone(model_cfg, axis_name=None):
  return backbone_entry(model_cfg).build(model_cfg, **_common(model_cfg, axis_name))


def tap_names(model_cfg):
  return backbone_entry(model_cfg).taps


def table_widths(model_cfg, tap, last_width):
  """D's widths on `tap` by the backbone's table (Table 1 ResNet, Table 4 CASIA-Net), ending
  at `last_width` (the paper's: the channels of the backbone's last map)."""
  return tuple(backbone_entry(model_cfg).d_widths(tap, last_width))


def make_models(config, *, num_classes, num_landmarks, mean_face=None, axis_name=None):
  """(Recognizer, PoseDiscriminator) for `config.model` and `config.aprn`.

  `mean_face` (M, 2): the frontal mean face in the network frame, D's initial answer.
  `axis_name` synchronises BatchNorm statistics across the devices of a pmap.
  """
  model_cfg, aprn_cfg = config.model, config.aprn
  backbone = make_backbone(model_cfg, axis_name)
  head = heads.make_head(model_cfg.head, num_classes, s=model_cfg.s, m=model_cfg.m,
                         m1=model_cfg.m1, m2=model_cfg.m2, m3=model_cfg.m3,
                         classifier=model_cfg.classifier, sample_rate=model_cfg.sample_rate)
  recognizer = Recognizer(backbone=backbone, head=head)

  tap = _choice(aprn_cfg.tap, tap_names(model_cfg), "config.aprn.tap")
  size = config.data.image_size
  _, taps = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.key(0), x, False)[0],
                           jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  entry = backbone_entry(model_cfg)
  last = taps[entry.last_tap].shape
  widths = tuple(aprn_cfg.d_widths) or table_widths(model_cfg, tap, last[-1])
  pool = _choice(aprn_cfg.d_pool, D_POOLS, "config.aprn.d_pool")
  disc = discriminator.PoseDiscriminator(
      widths=widths, num_landmarks=num_landmarks, target_size=last[1],
      pool=entry.d_pool if pool == "table" else pool == "max",
      mean_face=None if mean_face is None else tuple(map(tuple, np.asarray(mean_face).tolist())),
      **_common(model_cfg, axis_name))
  return recognizer, disc
