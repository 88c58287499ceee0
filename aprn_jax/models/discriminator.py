"""The pose discriminator D: a landmark regressor on one hidden feature map of R.

Table 1 (ResNet): Conv3x3 + BN + ReLU layers whose widths depend on the tap (stem: 256, 512,
1024, 2048; stage1: 512, 1024, 2048; stage2: 1024, 2048; stage3 and stage4: 2048), then a
3x3/2 max-pool and one dense layer to 2M. Widths scale with the backbone (they are the last
stage's channel count divided by 8, 4, 2, 1), so tiny backbones get tiny discriminators.
Table 4 (CASIA-Net): three Conv3x3x320 + BN + ReLU, no pool, then the dense layer.

The paper does not say where shallow taps lose resolution. Our choice: each convolution has
stride 2 while the map is larger than `target_size` (the backbone's last map, 7x7 for a 224
ResNet), stride 1 after. So stem (56) -> 28 -> 14 -> 7 -> 7, stage1 (56) -> 28 -> 14 -> 7,
stage2 (28) -> 14 -> 7, stage3 (14) -> 7, stage4 (7) -> 7; every tap reaches D's dense layer
at the size of the stage4 variant. For stage4 this is exactly the public code: Conv3x3
2048->2048 (no bias) + BN + ReLU + MaxPool 3x3/2 (7 -> 4) + dense 2048*4*4 -> 2M, 41,095,270
parameters for M = 51.

A 3x3 convolution on a map of at most 2x2 (stage4 of a 64x64 input) runs as one matrix
product (`_SmallMapConv`): XLA's CPU convolution takes a slow path on such maps, which made
D's update ten times the whole baseline step.
The parameters, and the result up to float rounding, are those of `nn.Conv`.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class _SmallMapConv(nn.Module):
  """A stride-1, padding-1 3x3 convolution without bias on a map of at most 2x2, as one matmul.

  On such a map every output pixel sees every input pixel, so the convolution is a dense
  layer (H*W*C -> H*W*features) whose matrix holds the kernel tap (k - i + 1, l - j + 1)
  between input pixel (k, l) and output pixel (i, j): no padding taps are multiplied. Same
  parameter (`kernel`, (3, 3, C, features), `nn.Conv`'s initialiser) as `nn.Conv`.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    kernel = self.param("kernel", nn.linear.default_kernel_init,
                        (3, 3, channels, self.features), jnp.float32)
    rows = np.arange(height)[:, None] - np.arange(height)[None, :] + 1  # [k, i]
    cols = np.arange(width)[:, None] - np.arange(width)[None, :] + 1    # [l, j]
    matrix = kernel[rows[:, :, None, None], cols[None, None, :, :]]     # (k, i, l, j, C, F)
    matrix = matrix.transpose(0, 2, 4, 1, 3, 5).reshape(height * width * channels, -1)
    y = jnp.dot(x.reshape(batch, -1).astype(self.dtype), matrix.astype(self.dtype))
    return y.reshape(batch, height, width, self.features)


class PoseDiscriminator(nn.Module):
  """Maps a feature map (B, H, W, C) to landmarks (B, M, 2)."""
  widths: Sequence[int]
  num_landmarks: int
  target_size: int
  pool: bool = True
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  axis_name: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype,
                             axis_name=self.axis_name)
    for i, width in enumerate(self.widths):
      stride = 2 if x.shape[1] > self.target_size else 1
      if stride == 1 and max(x.shape[1:3]) <= 2:
        x = _SmallMapConv(width, dtype=self.dtype, name=f"conv{i + 1}")(x)
      else:
        x = nn.Conv(width, (3, 3), (stride, stride), padding=[(1, 1), (1, 1)],
                    use_bias=False, dtype=self.dtype, name=f"conv{i + 1}")(x)
      x = nn.relu(norm(name=f"bn{i + 1}")(x))
    if self.pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(2 * self.num_landmarks, dtype=self.dtype, name="landmarks")(x)
    return x.astype(jnp.float32).reshape((-1, self.num_landmarks, 2))


def resnet_widths(tap, last_channels):
  """Table 1's widths for a ResNet tap, scaled to the backbone's last channel count."""
  depth = {"stem": 4, "stage1": 3, "stage2": 2, "stage3": 1, "stage4": 1}[tap]
  return tuple(last_channels // 2**k for k in reversed(range(depth)))
