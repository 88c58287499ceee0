"""Losses of Eq. 1-2 and how each loss variant routes the pose gradients.

The pose terms are L1 distances (mean absolute error per coordinate, in the normalised [-1, 1]
landmark frame) between D's output y = D(R'(x)) and a target:

    l1_true = mean |y - l|        (l: the image's landmarks)
    l1_mean = mean |y - l_mean|   (l_mean: the frontal-view mean face)

A variant says which of the two terms each side receives, as weights (true, mean):

    variant           D gets       R' (layers below the tap) gets
    adversarial       (1, 0)       (0, 1)   Eq. 2: D fits l, R' fools D towards l_mean
    l1_reg            (1, 0)       (1, 0)   Eq. 3 L1_Reg: both pulled to l
    l2_reg            (0, 1)       (0, 1)   Eq. 3 L2_Reg: both pulled to l_mean
    none              (1, 0)       (0, 0)   baseline with D trained as a probe
    reference_code    (1, 1)       (0, 1)   the public PyTorch code: D's gradients accumulate
                                            the mean-face term too

Both sides' terms are scaled by alpha; layers above the tap and the identity head receive no
pose gradient in any variant (they do not influence y).
"""
import jax
import jax.numpy as jnp
import optax

ROUTING = {
    "adversarial": ((1.0, 0.0), (0.0, 1.0)),
    "l1_reg": ((1.0, 0.0), (1.0, 0.0)),
    "l2_reg": ((0.0, 1.0), (0.0, 1.0)),
    "none": ((1.0, 0.0), (0.0, 0.0)),
    "reference_code": ((1.0, 1.0), (0.0, 1.0)),
}


def routing(variant):
  """((D's weights), (R's weights)) for a variant, or an error naming the allowed ones."""
  if variant not in ROUTING:
    raise ValueError(f"config.aprn.loss={variant!r} is not a loss variant; "
                     f"choose one of {tuple(ROUTING)}")
  return ROUTING[variant]


def identity_loss(logits, labels):
  """Softmax cross-entropy averaged over the batch, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def l1(predicted, target):
  """Mean absolute error per coordinate; target broadcasts (a mean face is (M, 2))."""
  return jnp.mean(jnp.abs(predicted - target))


def l1_and_grad(predicted, target):
  return jax.value_and_grad(l1)(predicted, jnp.broadcast_to(target, predicted.shape))
