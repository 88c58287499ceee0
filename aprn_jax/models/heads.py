"""Identity heads: Softmax, CosFace, ArcFace and the combined margin that covers both.

Margin heads normalise the embedding and the class centres, so logits are s * cos(theta).
During training the target class gets a margin:

    combined (m1, m2, m3):  s * (cos(m1 * theta + m2) - m3)
    ArcFace = (1, m, 0),    CosFace = (1, 0, m)

When m1 * theta + m2 would pass pi the cosine stops decreasing, so the target logit would
rise with the angle; there, as in insightface's ArcFace (`cos(theta) > cos(pi - m)` test), the
target falls back to the linear penalty cos(theta) - m2 * sin(m2) (then minus m3). Heads return
(training logits, plain logits); plain logits carry no margin and give the train accuracy.
Heads compute in float32 whatever the backbone's precision.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

HEADS = ("softmax", "cosface", "arcface", "combined")


def margin_logits(cos, labels, *, s, m1, m2, m3):
  """s * target-margin cosines; `cos` is (B, N) in [-1, 1], labels (B,) ints."""
  theta = jnp.arccos(jnp.clip(cos, -1.0 + 1e-7, 1.0 - 1e-7))
  with_margin = jnp.cos(m1 * theta + m2)
  fallback = cos - m2 * math.sin(m2)
  target = jnp.where(m1 * theta + m2 <= math.pi, with_margin, fallback) - m3
  is_target = jax.nn.one_hot(labels, cos.shape[-1], dtype=jnp.bool_)
  return s * jnp.where(is_target, target, cos)


class SoftmaxHead(nn.Module):
  """A dense layer with bias over the embedding."""
  num_classes: int

  @nn.compact
  def __call__(self, embedding, labels):
    logits = nn.Dense(self.num_classes, name="classifier")(embedding.astype(jnp.float32))
    return logits, logits


class MarginHead(nn.Module):
  """Cosine classifier with the combined margin (m1, m2, m3) and scale s."""
  num_classes: int
  s: float = 64.0
  m1: float = 1.0
  m2: float = 0.0
  m3: float = 0.0

  @nn.compact
  def __call__(self, embedding, labels):
    centres = self.param("centres", nn.initializers.normal(0.01),
                         (embedding.shape[-1], self.num_classes))
    unit = lambda v, axis: v * jax.lax.rsqrt(jnp.sum(v * v, axis, keepdims=True) + 1e-12)
    cos = unit(embedding.astype(jnp.float32), -1) @ unit(centres, 0)
    plain = self.s * cos
    if labels is None:
      return plain, plain
    return margin_logits(cos, labels, s=self.s, m1=self.m1, m2=self.m2, m3=self.m3), plain


def make_head(name, num_classes, *, s=64.0, m=0.5, m1=1.0, m2=0.0, m3=0.0,
              classifier="dense", sample_rate=1.0):
  """The head named in the config; s and m are used by cosface/arcface, m1-m3 by combined.

  classifier="sharded": the same head with its classes split over the devices
  (`partial_fc`, config.model.classifier and sample_rate)."""
  margins = {"cosface": (1.0, 0.0, m), "arcface": (1.0, m, 0.0), "combined": (m1, m2, m3)}
  if name != "softmax" and name not in margins:
    raise ValueError(f"config.model.head={name!r} is not a head; choose one of {HEADS}")
  if classifier != "dense" or sample_rate != 1.0:
    from aprn_jax.models import partial_fc  # it builds on margin_logits above
    partial_fc.check_config({"classifier": classifier, "sample_rate": sample_rate})
    m1, m2, m3 = margins.get(name, (1.0, 0.0, 0.0))
    return partial_fc.ShardedHead(num_classes, softmax=name == "softmax", s=s, m1=m1, m2=m2,
                                  m3=m3, sample_rate=sample_rate)
  if name == "softmax":
    return SoftmaxHead(num_classes)
  return MarginHead(num_classes, s, *margins[name])
