"""Inference: the backbone alone (D and the identity head are not used), L2-normalised."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from aprn_jax.models import Recognizer
from input_pipeline import preprocess


def backbone_variables(recognizer_variables):
  """The part of R's variables that inference needs: the backbone's params and statistics."""
  return {kind: {"backbone": tree["backbone"]} for kind, tree in recognizer_variables.items()}


@functools.lru_cache(maxsize=8)
def _pmapped_embed(recognizer, mirror=False):
  """One pmapped (so compiled once) embedding per recognizer architecture: the phases of a
  run, and every evaluation in one process, share it (modules compare by their fields).
  `mirror`: of the horizontally mirrored inputs."""
  def embed(variables, images):
    return recognizer.apply(variables, images[:, :, ::-1] if mirror else images,
                            method=Recognizer.embed)
  return jax.pmap(embed, in_axes=(None, 0))


def _per_device(images, num_devices):
  """(B, ...) -> (num_devices, B / num_devices, ...), or a ValueError naming the counts."""
  if images.shape[0] % num_devices:
    raise ValueError(f"batch of {images.shape[0]} images is not divisible by the "
                     f"{num_devices} local devices")
  return images.reshape((num_devices, -1) + images.shape[1:])


def make_embed_fn(recognizer, variables):
  """images (B, H, W, 3) float32 in [-1, 1] -> (B, D) unit-norm float32 embeddings.

  Batches are split over the local devices (B must be divisible by their count, which the
  evaluation's fixed-size padded batches guarantee).
  """
  variables = backbone_variables(variables)
  devices = jax.local_devices()
  apply = _pmapped_embed(recognizer)

  def embed(images):
    images = np.asarray(images, np.float32)
    out = apply(variables, _per_device(images, len(devices)))
    return np.asarray(out).reshape((images.shape[0], -1))

  return embed


@functools.lru_cache(maxsize=8)
def _pmapped_eval_inputs(height, width, crop_size, image_size):
  """uint8 images at stored size -> the network's float32 inputs, on the device: evaluation's
  centred crop, resize (tf.image.resize's weights as `preprocess.resize_taps`) and scaling,
  `preprocess.eval_images` without the host's cost."""
  top, left = (height - crop_size) // 2, (width - crop_size) // 2
  indices, weights = preprocess.resize_taps(crop_size, image_size)

  def resize(x, axis):  # x's `axis` from crop_size to image_size: a K-term weighted sum
    shape = [1] * x.ndim
    shape[axis] = image_size
    return sum(jnp.take(x, indices[:, k], axis=axis) * weights[:, k].reshape(shape)
               for k in range(indices.shape[1]))

  def inputs(images):
    x = images[:, top:top + crop_size, left:left + crop_size].astype(jnp.float32)
    if image_size != crop_size:
      x = resize(resize(x, 1), 2)
    return jnp.clip(x / 127.5 - 1.0, -1.0, 1.0)

  return jax.pmap(inputs)


def make_image_embed_fn(recognizer, variables, *, crop_size, image_size, flip):
  """uint8 images (B, H, W, 3) -> (B, D) float32 jax array: the network's embedding of
  evaluation's input of each image, plus that of its mirror image when `flip` (not
  normalised: the sum is, by `embeddings.l2_normalize`, as `embeddings.extract` does).
  B divisible by the number of local devices; the call returns before the device is done.

  The inputs are computed once, on the device, and stay there; the network runs on them and
  on their mirror images as two calls of batch B (measured faster on CPU than one of 2B, or
  than the preprocessing fused into the network's program).
  """
  variables = backbone_variables(variables)
  devices = jax.local_devices()

  def embed(images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"images: expected uint8 (B, H, W, 3), got {images.dtype} "
                       f"{images.shape}")
    if crop_size > min(images.shape[1:3]):
      raise ValueError(f"crop_size {crop_size} is larger than an image of the data set")
    inputs = _pmapped_eval_inputs(*images.shape[1:3], crop_size, image_size)(
        _per_device(images, len(devices)))
    out = _pmapped_embed(recognizer)(variables, inputs)
    if flip:
      out = out + _pmapped_embed(recognizer, mirror=True)(variables, inputs)
    return out.reshape((images.shape[0], -1))

  return embed
