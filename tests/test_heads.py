"""Margin heads against a numpy reference written from the formulas."""
import math

import jax
import numpy as np
import pytest

from aprn_jax.models import heads


def reference_logits(embedding, centres, labels, s, m1, m2, m3):
  e = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
  w = centres / np.linalg.norm(centres, axis=0, keepdims=True)
  cos = e @ w
  out = s * cos
  for i, y in enumerate(labels):
    theta = math.acos(min(max(cos[i, y], -1.0), 1.0))
    if m1 * theta + m2 <= math.pi:
      target = math.cos(m1 * theta + m2)
    else:  # past pi the margin would help: insightface's linear fallback
      target = cos[i, y] - m2 * math.sin(m2)
    out[i, y] = s * (target - m3)
  return out, s * cos


def embeddings_at_angles(angles, dim=4):
  """Unit embeddings at the given angles to class 0's centre (e_0), labels all 0."""
  emb = np.zeros((len(angles), dim))
  emb[:, 0] = np.cos(angles)
  emb[:, 1] = np.sin(angles)
  centres = np.eye(dim)[:, :3]
  return emb, centres


@pytest.mark.parametrize("name,kwargs,margins", [
    ("arcface", dict(s=32.0, m=0.5), (1.0, 0.5, 0.0)),
    ("cosface", dict(s=64.0, m=0.35), (1.0, 0.0, 0.35)),
    ("combined", dict(s=64.0, m1=1.0, m2=0.3, m3=0.2), (1.0, 0.3, 0.2)),
    ("combined", dict(s=30.0, m1=1.35, m2=0.0, m3=0.0), (1.35, 0.0, 0.0)),
])
def test_margin_heads_match_reference(name, kwargs, margins):
  # Angles on both sides of pi - m, including theta + m > pi (2.8, 3.1 rad) and theta = 0.
  angles = np.array([0.0, 0.3, 1.2, 2.0, 2.6, 2.8, 3.1])
  emb, centres = embeddings_at_angles(angles)
  rng = np.random.RandomState(0)
  emb = np.concatenate([emb, rng.randn(5, 4)])
  labels = np.concatenate([np.zeros(7, int), rng.randint(0, 3, 5)])
  head = heads.make_head(name, 3, **kwargs)
  params = {"params": {"centres": centres.astype(np.float32)}}
  logits, plain = head.apply(params, emb.astype(np.float32), labels)
  expected, expected_plain = reference_logits(emb, centres, labels, kwargs["s"], *margins)
  np.testing.assert_allclose(logits, expected, rtol=2e-4, atol=2e-4 * kwargs["s"])
  np.testing.assert_allclose(plain, expected_plain, rtol=1e-5, atol=1e-4)


def test_arcface_fallback_keeps_target_logit_decreasing_in_angle():
  angles = np.linspace(0.0, math.pi - 1e-3, 200)
  emb, centres = embeddings_at_angles(angles)
  head = heads.make_head("arcface", 3, s=1.0, m=0.5)
  logits, _ = head.apply({"params": {"centres": centres.astype(np.float32)}},
                         emb.astype(np.float32), np.zeros(200, int))
  assert np.all(np.diff(np.asarray(logits[:, 0])) < 0)


def test_softmax_head_is_dense_with_bias():
  head = heads.make_head("softmax", 7)
  emb = np.random.RandomState(1).randn(3, 5).astype(np.float32)
  params = head.init(jax.random.key(0), emb, None)
  kernel = params["params"]["classifier"]["kernel"]
  bias = params["params"]["classifier"]["bias"]
  logits, plain = head.apply(params, emb, np.zeros(3, int))
  np.testing.assert_allclose(logits, emb @ kernel + bias, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(logits, plain)


def test_unknown_head_names_option_and_choices():
  with pytest.raises(ValueError, match=r"config\.model\.head='sphere'.*arcface"):
    heads.make_head("sphere", 3)
