"""CASIA-Net (Yi et al. 2014): ten 3x3 convolutions with BN + ReLU, four max-pools, and an
average pool to a 320-d embedding; 96x96 input in the paper.

Blocks (channels): 32,64 | 64,128 | 96,192 | 128,256 | 160,320, a 2x2/2 max-pool after each
of the first four. Taps: `block1` ... `block5` (each block's last convolution, after BN + ReLU,
before its pool) and `last_conv` (the same map as `block5`, the paper's name for it).
"""
import functools
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from aprn_jax.models import layers

BLOCK_WIDTHS = ((32, 64), (64, 128), (96, 192), (128, 256), (160, 320))
TAPS = ("block1", "block2", "block3", "block4", "block5", "last_conv")


class CasiaNet(nn.Module):
  """Returns (embedding, taps); the embedding is the average-pooled last conv map."""
  block_widths: Sequence[Tuple[int, int]] = BLOCK_WIDTHS
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  axis_name: Any = None
  layer_forms: str = "fast"  # layers.FORMS

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(layers.Conv, kernel_size=(3, 3), dtype=self.dtype,
                             forms=self.layer_forms)
    norm = layers.batch_norm(train, momentum=self.bn_momentum, dtype=self.dtype,
                             axis_name=self.axis_name, forms=self.layer_forms)
    taps = {}
    last = len(self.block_widths) - 1
    for i, widths in enumerate(self.block_widths):
      for j, width in enumerate(widths):
        x = conv(width, name=f"conv{i + 1}{j + 1}")(x)
        x = nn.relu(norm(name=f"bn{i + 1}{j + 1}")(x))
      taps[f"block{i + 1}"] = x
      if i < last:
        x = layers.max_pool(x, (2, 2), (2, 2), forms=self.layer_forms)
    taps["last_conv"] = x
    return jnp.mean(x, axis=(1, 2)), taps
