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

Convolutions and the pool are `layers.Conv` and `layers.max_pool`: flax's parameters and
results, in forms that are fast on XLA:CPU (D on a 2x2 map is matrix products).

Initialisation (our choice; the paper does not say): the dense layer's bias is the frontal mean
face and its kernel is flax's default scaled by `output_kernel_scale` (0.01), so an untrained D
answers (almost) the mean face: its L1 starts at the mean face's, not at the 1.0 or more of a
random regressor, and the adversarial gradient it sends to R starts small.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from aprn_jax.models import layers


class PoseDiscriminator(nn.Module):
  """Maps a feature map (B, H, W, C) to landmarks (B, M, 2)."""
  widths: Sequence[int]
  num_landmarks: int
  target_size: int
  pool: bool = True
  mean_face: Any = None           # (M, 2) initial answer (tuple of pairs); None: zeros
  output_kernel_scale: float = 0.01
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  axis_name: Any = None
  layer_forms: str = "fast"  # layers.FORMS

  @nn.compact
  def __call__(self, x, train: bool):
    norm = layers.batch_norm(train, momentum=self.bn_momentum, dtype=self.dtype,
                             axis_name=self.axis_name, forms=self.layer_forms)
    for i, width in enumerate(self.widths):
      stride = 2 if x.shape[1] > self.target_size else 1
      x = layers.Conv(width, (3, 3), (stride, stride), ((1, 1), (1, 1)), dtype=self.dtype,
                      forms=self.layer_forms, name=f"conv{i + 1}")(x)
      x = nn.relu(norm(name=f"bn{i + 1}")(x))
    if self.pool:
      x = layers.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), self.layer_forms)
    x = x.reshape((x.shape[0], -1))
    x = layers.Dense(2 * self.num_landmarks, dtype=self.dtype, forms=self.layer_forms,
                     name="landmarks",
                     kernel_init=_scaled(nn.initializers.lecun_normal(),
                                         self.output_kernel_scale),
                     bias_init=self._mean_face_bias)(x)
    return x.astype(jnp.float32).reshape((-1, self.num_landmarks, 2))


  def _mean_face_bias(self, key, shape, dtype=jnp.float32):
    del key
    if self.mean_face is None:
      return jnp.zeros(shape, dtype)
    bias = jnp.asarray(self.mean_face, dtype).reshape(-1)
    if bias.shape != tuple(shape):
      raise ValueError(f"the discriminator's mean face has {bias.size // 2} points; expected "
                       f"{self.num_landmarks}")
    return bias


def _scaled(init, factor):
  return lambda key, shape, dtype=jnp.float32: init(key, shape, dtype) * factor


def resnet_widths(tap, last_channels):
  """Table 1's widths for a ResNet tap, scaled to the backbone's last channel count."""
  depth = {"stem": 4, "stage1": 3, "stage2": 2, "stage3": 1, "stage4": 1}[tap]
  return tuple(last_channels // 2**k for k in reversed(range(depth)))
