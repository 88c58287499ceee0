"""The paper's pre-activation ResNet (He et al. 2016, "Identity mappings"), with named taps.

Layout of the public code (REFERENCE.md section 2): 7x7/2 conv, BN, ReLU, 3x3/2 max-pool; four
stages of bottleneck blocks; BN + ReLU after each stage; the last feature map flattened into
one dense layer to the embedding (no average pool). Inside a stage the blocks are
pre-activation (BN, ReLU, conv); the first block of each stage takes the already activated
stage input, so it has no BN of its own and its projection shortcut reads that input. With a
256-d embedding this gives exactly the public code's parameter counts (ResNet-101:
68,182,848; ResNet-152: 83,826,496).

Taps (for the pose discriminator): `stem` (after the max-pool), `stage1` ... `stage4` (after each
stage's BN + ReLU).
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from aprn_jax.models import layers

STAGE_SIZES = {
    18: None,  # basic blocks are not part of the paper; deeper nets only.
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
TAPS = ("stem", "stage1", "stage2", "stage3", "stage4")


class PreActBottleneck(nn.Module):
  """BN-ReLU-conv1x1, BN-ReLU-conv3x3(stride), BN-ReLU-conv1x1(4x); identity or 1x1 shortcut."""
  width: int
  strides: int
  first_in_stage: bool
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    out_channels = 4 * self.width
    if self.first_in_stage:
      # x is the activated stage input (stem or previous stage's BN + ReLU).
      y = x
      shortcut = self.conv(out_channels, (1, 1), (self.strides, self.strides),
                           name="shortcut")(x)
    else:
      y = nn.relu(self.norm(name="bn_in")(x))
      shortcut = x
    y = self.conv(self.width, (1, 1), name="conv1")(y)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.width, (3, 3), (self.strides, self.strides), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(out_channels, (1, 1), name="conv3")(y)
    return y + shortcut


class ResNet(nn.Module):
  """Returns (embedding, taps); taps maps each name in TAPS to its feature map."""
  stage_sizes: Sequence[int]
  width: int = 64
  embedding_dim: int = 256
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  axis_name: Any = None  # set to the pmap axis to synchronise BatchNorm statistics.
  layer_forms: str = "fast"  # layers.FORMS

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(layers.Conv, dtype=self.dtype, forms=self.layer_forms)
    norm = layers.batch_norm(train, momentum=self.bn_momentum, dtype=self.dtype,
                             axis_name=self.axis_name, forms=self.layer_forms)
    taps = {}
    x = conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    x = layers.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), self.layer_forms)
    taps["stem"] = x
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = PreActBottleneck(
            width=self.width * 2**i, strides=2 if (i > 0 and j == 0) else 1,
            first_in_stage=(j == 0), conv=conv, norm=norm, name=f"stage{i + 1}_block{j + 1}")(x)
      x = nn.relu(norm(name=f"stage{i + 1}_bn")(x))
      taps[f"stage{i + 1}"] = x
    x = x.reshape((x.shape[0], -1))
    embedding = layers.Dense(self.embedding_dim, dtype=self.dtype, forms=self.layer_forms,
                             name="embedding")(x)
    return embedding, taps
