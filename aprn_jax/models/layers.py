"""Convolution, max-pool and dense layers with flax's parameters and results, fast on CPU.

Which forms a model uses is its `layer_forms` field (FORMS), set from config.model.layer_forms.
On GPUs and TPUs every form compiles to what flax's layers compile to. On CPU:
- `fast` (the default): convolutions and max-pools are oneDNN primitives, the library
  PyTorch's CPU layers run on (aprn_jax/models/onednn.py: forward and both gradients as XLA
  FFI calls on the maps as they lie in memory), 1x1 kernels after a strided slice, but for
  the float32 convolutions where XLA's matrix products below win (`_xla_products_win`); dense
  layers as below. Where oneDNN cannot be built (it is Linux x86-64 only), `fast` is `xla`.
- `xla`: XLA's own operations in the forms below, each measured against
  `lax.conv_general_dilated`, forward + backward, by benchmarks/layers.py.
- `flax`: exactly what flax's layers compile to (benchmarks compare the forms).
- `portable`: flax's convolution and a max-pool written as an explicit -inf pad and a VALID
  pool, the same values in a form every runtime takes (the ONNX export, aprn_jax/export.py).

`Conv` is `nn.Conv` without bias: the same `kernel` parameter, initialiser and outputs (up to
float rounding). Its `xla` forms:
- a 1x1 kernel: a strided slice and a matrix product of the pixels as rows (1.25 to 2.9x
  faster on narrow layers). As rows, the weight gradient is a product of two matrices; from
  the 4-D map XLA:CPU first made a transposed copy of the output gradient and fused the
  BatchNorm backward above it into that copy, once per block (ResNet-101 float32, batch 4:
  1.96 s a step with a 4-D product on kernels up to 256 x 512 and convolutions above, 1.44 s
  with the row form on all);
- an output map of at most 2x2 (stage4 of a 64x64 ResNet, D on it): one matrix product per
  output pixel over the input pixels its window covers. XLA:CPU lowers the input gradient of
  such a convolution to a slow operand-swapped form (11 to 28x slower);
- a kernel of at least 1024 x 1024 channels (D on a ResNet-101): one matrix product per
  kernel tap over the output pixels where that tap lands on the input (2.3x faster);
- anything else: `lax.conv_general_dilated`, as `nn.Conv`.
None of these multiplies a padding tap, so XLA's FLOP count is the convolution's.

`max_pool` is `nn.max_pool`; its `xla` form has a hand-written gradient. XLA:CPU lowers
max-pool's gradient (select-and-scatter) to an argmax over windows with four index arrays and
a scatter, a fifth of the default config's baseline step. Here the gradient goes, as in
XLA's select-and-scatter, to the first maximum of each window in row-major order, through
one masked, strided add per window offset (2.6 to 4.1x faster). oneDNN's routes it the same
way (tests/test_layers.py, with ties).

`Dense` is `nn.Dense` (kernel and bias); on CPU its product is in float32 and its kernel
gradient one (in, out) product (see `Dense`).
"""
import contextlib
import contextvars
import functools
from typing import Any, Sequence, Tuple, Union

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from aprn_jax.models import onednn

FORMS = ("fast", "xla", "flax", "portable")
# On CPU: output maps of at most this many pixels take one matrix product per output pixel,
SMALL_MAP_PIXELS = 4
# and kernels with at least this many weights per tap one matrix product per tap.
LARGE_TAP_WEIGHTS = 1024 * 1024


def check_forms(forms):
  if forms not in FORMS:
    raise ValueError(f"config.model.layer_forms={forms!r} is not allowed; choose one of {FORMS}")
  return forms


def cpu_forms(forms):
  """The CPU forms `forms` compiles to here: "onednn", "xla", or None (flax's layers)."""
  if check_forms(forms) not in ("fast", "xla") or jax.default_backend() != "cpu":
    return None
  return "onednn" if forms == "fast" and onednn.available() else "xla"


def batch_norm(train, *, momentum, dtype, axis_name, forms="fast"):
  """The BatchNorm of every network here (a partial of `BatchNorm`, eps 1e-5).

  The variance is the mean of squared deviations from the mean, not E[x^2] - E[x]^2 (flax's
  default): on a channel whose mean is large next to its spread the difference form cancels
  catastrophically, and its rounding then depends on the order of the cross-device sums. With
  it, the tiny config's first update differed by 4% in stem_bn's bias between 1 process x 4
  devices and 2 processes x 2 devices; with this form the two agree to 2e-7
  (tests/test_multiprocess.py)."""
  return functools.partial(BatchNorm, use_running_average=not train, momentum=momentum,
                           epsilon=1e-5, dtype=dtype, axis_name=axis_name,
                           use_fast_variance=False, forms=forms)


# Whether BatchNorm's training form on CPU has the hand-written gradient (`BatchNorm`);
# benchmarks/step_ab.py times the step without it, in the same process.
BN_GRADIENT = True


# Whether cross-device sums are all-gathers summed in device order (`ordered_reductions`).
_ORDERED = contextvars.ContextVar("aprn_ordered_reductions", default=False)


@contextlib.contextmanager
def ordered_reductions(on=True):
  """Within (while a step is traced), every cross-device sum below is an all-gather summed in
  device order (config.train.ordered_reductions): the same floats however the devices are
  split over processes, where an all-reduce adds in the order its algorithm (in-process or
  across hosts) picks. It moves devices / 2 times an all-reduce's bytes, and each device holds
  every device's copy of the summed tree (devices times its memory) while it adds them."""
  token = _ORDERED.set(bool(on))
  try:
    yield
  finally:
    _ORDERED.reset(token)


def sum_over_devices(tree, axis_name):
  """`lax.psum(tree, axis_name)`; in device order within `ordered_reductions`."""
  if _ORDERED.get():
    return jax.tree.map(lambda a: lax.all_gather(a, axis_name).sum(0), tree)
  return lax.psum(tree, axis_name)


def sum_scatter_over_devices(x, axis_name):
  """`lax.psum_scatter(x, axis_name, scatter_dimension=0, tiled=True)`: this device's rows of
  the sum; in device order within `ordered_reductions`."""
  if not _ORDERED.get():
    return lax.psum_scatter(x, axis_name, scatter_dimension=0, tiled=True)
  rows = x.shape[0] // lax.axis_size(axis_name)
  return lax.dynamic_slice_in_dim(lax.all_gather(x, axis_name).sum(0),
                                  lax.axis_index(axis_name) * rows, rows)


def mean_over_devices(tree, axis_name):
  """The mean of `tree` over the devices of `axis_name`; with no axis or one device the tree
  itself, with no all-reduce for XLA:CPU to run (it copies its operand: ResNet-101's 109 M
  gradients, 0.44 GB a step, in train_step). In device order within `ordered_reductions`."""
  if axis_name is None or lax.axis_size(axis_name) == 1:
    return tree
  if _ORDERED.get():
    devices = lax.axis_size(axis_name)
    return jax.tree.map(lambda a: a / devices, sum_over_devices(tree, axis_name))
  return lax.pmean(tree, axis_name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm(x, scale, bias, epsilon, axis_name, dtype):
  """(y, mean, var): flax's BatchNorm in training, its statistics over all devices of
  `axis_name`; the gradient of y alone (the statistics feed the running averages only)."""
  return _batch_norm_forward(x, scale, bias, epsilon, axis_name, dtype)[0]


def _batch_norm_forward(x, scale, bias, epsilon, axis_name, dtype):
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = mean_over_devices(xf.mean(axes), axis_name)
  var = mean_over_devices(jnp.square(xf - mean).mean(axes), axis_name)
  inv = lax.rsqrt(var + epsilon)
  y = ((xf - mean) * (inv * scale) + bias).astype(dtype or x.dtype)
  return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_backward(epsilon, axis_name, dtype, residuals, cotangents):
  # With g the gradient of y and xhat = (x - mean) * inv: dbias = sum(g), dscale =
  # sum(g * xhat) on this device; dx = scale * inv * (g - mean(g) - xhat * mean(g * xhat)),
  # the means over every device's images (the transpose of the statistics' pmean).
  x, mean, inv, scale = residuals
  grad = cotangents[0].astype(mean.dtype)
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  xhat = (x.astype(mean.dtype) - mean) * inv
  sums = jnp.stack([grad.sum(axes), (grad * xhat).sum(axes)])
  grad_bias, grad_scale = sums
  mean_grad, mean_grad_xhat = mean_over_devices(sums, axis_name) / count
  dx = (inv * scale) * (grad - mean_grad - xhat * mean_grad_xhat)
  return dx.astype(x.dtype), grad_scale, grad_bias


_batch_norm.defvjp(_batch_norm_forward, _batch_norm_backward)


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` (fields, variables, results) with the layer forms' field `forms`.

  On CPU (forms fast or xla) its training form (the statistics of the batch, feature axis
  last) has a hand-written gradient, `_batch_norm`: two sums over the batch and one pass for
  the input's gradient, where XLA:CPU's derivative of flax's form takes more passes over the
  maps (benchmarks/step_ab.py --change=bn_gradient: the default config's step 0.95x the time,
  docs/benchmarks.md). Within `ordered_reductions` that form runs on every backend and in
  every form, so the statistics' cross-device sums add in device order (flax's form takes
  lax.pmean). Elsewhere, with running averages or a mask, it is flax's call."""
  forms: str = "fast"  # FORMS

  @nn.compact
  def __call__(self, x, use_running_average=None, *, mask=None):
    running = nn.merge_param("use_running_average", self.use_running_average,
                             use_running_average)
    ours = ((cpu_forms(self.forms) and BN_GRADIENT)
            or (_ORDERED.get() and self.axis_name is not None))
    if (running or mask is not None or self.is_initializing() or not ours or self.axis != -1
        or self.axis_index_groups is not None or not (self.use_bias and self.use_scale)):
      return super().__call__(x, use_running_average, mask=mask)
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                            features)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
    scale = self.param("scale", self.scale_init, features, self.param_dtype)
    bias = self.param("bias", self.bias_init, features, self.param_dtype)
    y, mean, var = _batch_norm(x, scale, bias, self.epsilon, self.axis_name, self.dtype)
    mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
    ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
    ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def _pads(spatial, window, strides, padding):
  """Explicit ((lo, hi), ...) pads for a padding string or a sequence of pairs."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(spatial, window, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _dot(x, kernel):
  """x @ kernel over x's last axis in float32, forward and backward.

  For bfloat16 this is what XLA:CPU's convolution does; a bfloat16 dot would also sum the
  weight gradient (over batch x pixels) in bfloat16. x is flattened to one row per pixel
  first: the weight gradient is then a dot contracting one axis of two matrices, which
  XLA:CPU runs in place. From x's 4-D form JAX writes a dot over three axes, which XLA makes
  canonical by a transposed copy of the output gradient, fused with the elementwise
  BatchNorm backward that produces it (the default config's baseline step: ...)."""
  rows = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  out = jnp.dot(rows, kernel.astype(jnp.float32))
  return out.reshape(x.shape[:-1] + (kernel.shape[-1],))


def _window_products(x, kernel, strides, pads, out_shape):
  """The convolution as one matrix product per output pixel, over its window's real pixels."""
  batch, height, width, channels = x.shape
  kh, kw, _, features = kernel.shape
  (pt, _), (pl, _) = pads
  rows = []
  for i in range(out_shape[0]):
    top = i * strides[0] - pt
    r0, r1 = max(top, 0), min(top + kh, height)
    pixels = []
    for j in range(out_shape[1]):
      left = j * strides[1] - pl
      c0, c1 = max(left, 0), min(left + kw, width)
      size = max(r1 - r0, 0) * max(c1 - c0, 0) * channels
      patch = x[:, r0:r1, c0:c1, :].reshape(batch, size)
      taps = kernel[r0 - top:r1 - top, c0 - left:c1 - left].reshape(size, features)
      pixels.append(_dot(patch, taps))
    rows.append(jnp.stack(pixels, axis=1))
  return jnp.stack(rows, axis=1).astype(x.dtype)


def _valid_outputs(out_size, in_size, offset, pad, stride):
  """The output range [lo, hi) whose input index o * stride + offset - pad is in the map."""
  lo = max(0, -(-(pad - offset) // stride))
  hi = min(out_size, (in_size - 1 - offset + pad) // stride + 1)
  return lo, max(lo, hi)


def _tap_products(x, kernel, strides, pads, out_shape):
  """The convolution as one matrix product per kernel tap, over the outputs it reaches."""
  (pt, _), (pl, _) = pads
  out = None
  for di in range(kernel.shape[0]):
    r0, r1 = _valid_outputs(out_shape[0], x.shape[1], di, pt, strides[0])
    for dj in range(kernel.shape[1]):
      c0, c1 = _valid_outputs(out_shape[1], x.shape[2], dj, pl, strides[1])
      if r0 == r1 or c0 == c1:
        continue
      top, left = r0 * strides[0] + di - pt, c0 * strides[1] + dj - pl
      inputs = x[:, top:top + (r1 - r0 - 1) * strides[0] + 1:strides[0],
                 left:left + (c1 - c0 - 1) * strides[1] + 1:strides[1]]
      term = jnp.pad(_dot(inputs, kernel[di, dj]),
                     ((0, 0), (r0, out_shape[0] - r1), (c0, out_shape[1] - c1), (0, 0)))
      out = term if out is None else out + term
  if out is None:  # every tap on padding
    out = jnp.zeros((x.shape[0],) + tuple(out_shape) + (kernel.shape[-1],), jnp.float32)
  return out.astype(x.dtype)


def _xla_products_win(dtype, window, out_shape, weights_per_tap):
  """Whether, in the `fast` forms, this convolution keeps XLA's matrix-product form over
  oneDNN's: in float32, on an output map of at most SMALL_MAP_PIXELS (one product per output
  pixel: the default config's D 5.5 against 11.8 ms, forward + backward, batch 128) or with
  at least LARGE_TAP_WEIGHTS per tap (one product per tap: ResNet-101's D 174 against 266 ms,
  batch 4). In bfloat16 oneDNN's (AMX on this Intel Xeon) wins: ResNet-101's D 179 against
  499 ms (benchmarks/layers.py, docs/benchmarks.md)."""
  return (jnp.dtype(dtype) == jnp.float32 and window != (1, 1)
          and (out_shape[0] * out_shape[1] <= SMALL_MAP_PIXELS
               or weights_per_tap >= LARGE_TAP_WEIGHTS))


class Conv(nn.Module):
  """`nn.Conv(features, kernel_size, strides, padding, use_bias=False, dtype=dtype)`."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Union[str, Sequence[Tuple[int, int]]] = "SAME"
  dtype: Any = jnp.float32
  forms: str = "fast"  # FORMS

  @nn.compact
  def __call__(self, x):
    window, strides = tuple(self.kernel_size), tuple(self.strides)
    kernel = self.param("kernel", nn.linear.default_kernel_init,
                        window + (x.shape[-1], self.features), jnp.float32)
    pads = _pads(x.shape[1:3], window, strides, self.padding)
    out_shape = tuple((size + lo + hi - k) // s + 1
                      for size, (lo, hi), k, s in zip(x.shape[1:3], pads, window, strides))
    forms = cpu_forms(self.forms)
    if forms == "onednn" and _xla_products_win(self.dtype, window, out_shape,
                                               x.shape[-1] * self.features):
      forms = "xla"
    if forms == "onednn":
      if window == (1, 1) and pads == ((0, 0), (0, 0)):  # oneDNN's strided 1x1 is slow
        x, strides = x[:, ::strides[0], ::strides[1]], (1, 1)
      return onednn.conv(x.astype(self.dtype), kernel, strides, pads)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if forms == "xla":
      if window == (1, 1) and pads == ((0, 0), (0, 0)):
        return _dot(x[:, ::strides[0], ::strides[1]], kernel[0, 0]).astype(x.dtype)
      if out_shape[0] * out_shape[1] <= SMALL_MAP_PIXELS:
        return _window_products(x, kernel, strides, pads, out_shape)
      if x.shape[-1] * self.features >= LARGE_TAP_WEIGHTS:
        return _tap_products(x, kernel, strides, pads, out_shape)
    return lax.conv_general_dilated(x, kernel, strides, pads,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def _dense(x, kernel, bias):
  return (_dot(x, kernel) + bias).astype(x.dtype)


def _dense_forward(x, kernel, bias):
  return _dense(x, kernel, bias), (x, kernel)


def _dense_backward(residuals, grad):
  x, kernel = residuals
  grad = grad.astype(jnp.float32)
  # The kernel's gradient as one (in, out) product: from the transpose of x @ kernel, XLA:CPU
  # computed it as (out, in) and copied it over (ResNet-101's embedding, 100352 x 256 weights:
  # 2.4x slower than this form, forward + backward in bfloat16, batch 4).
  dkernel = jnp.einsum("bi,bo->io", x.astype(jnp.float32), grad)
  return (jnp.dot(grad, kernel.T).astype(x.dtype), dkernel, grad.sum(0))


_dense.defvjp(_dense_forward, _dense_backward)


class Dense(nn.Dense):
  """`nn.Dense` (its fields, parameters and, off CPU or in the flax and portable forms, its
  call, so the ONNX export sees flax's layer), with the layer forms' field `forms`.

  On CPU (forms fast or xla) the product is in float32 whatever `dtype` (XLA:CPU computes a
  bfloat16 product in float32 anyway, after rounding the kernel to bfloat16 and converting it
  back, a pass over the kernel each step) and the kernel's gradient is one (in, out) product
  (`_dense_backward`)."""
  forms: str = "fast"  # FORMS

  @nn.compact
  def __call__(self, x):
    if not cpu_forms(self.forms) or not self.use_bias:
      return super().__call__(x)
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    return _dense(x.astype(self.dtype or x.dtype), kernel, bias)


def max_pool(x, window, strides, padding="VALID", forms="fast"):
  """`nn.max_pool(x, window, strides, padding)` on NHWC maps, in the form `forms` (FORMS)."""
  window, strides = tuple(window), tuple(strides)
  form = cpu_forms(forms)
  if form == "onednn":
    return onednn.max_pool(x, window, strides, _pads(x.shape[1:3], window, strides, padding))
  if form == "xla":
    return _max_pool(x, window, strides, _pads(x.shape[1:3], window, strides, padding))
  if forms == "portable":  # jax2onnx's max_pool takes padding as a string only
    pads = _pads(x.shape[1:3], window, strides, padding)
    x = jnp.pad(x, ((0, 0),) + pads + ((0, 0),), constant_values=-jnp.inf)
    return nn.max_pool(x, window_shape=window, strides=strides, padding="VALID")
  return nn.max_pool(x, window, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
  return nn.max_pool(x, window, strides, pads)


def _max_pool_forward(x, window, strides, pads):
  y = _max_pool(x, window, strides, pads)
  return y, (x, y)


def _max_pool_backward(window, strides, pads, residuals, grad):
  x, y = residuals
  padded = jnp.pad(x, ((0, 0),) + pads + ((0, 0),), constant_values=-jnp.inf)
  out_h, out_w = y.shape[1:3]
  span_h, span_w = strides[0] * (out_h - 1) + 1, strides[1] * (out_w - 1) + 1
  zero = jnp.zeros((), grad.dtype)
  taken = jnp.zeros(y.shape, bool)
  grad_padded = jnp.zeros_like(padded, dtype=grad.dtype)
  for di in range(window[0]):
    for dj in range(window[1]):
      view = padded[:, di:di + span_h:strides[0], dj:dj + span_w:strides[1]]
      first = (view == y) & ~taken
      taken = taken | first
      # Back to the padded map: offset (di, dj), holes of stride - 1 between pixels.
      grad_padded += lax.pad(jnp.where(first, grad, zero), zero, (
          (0, 0, 0),
          (di, padded.shape[1] - di - span_h, strides[0] - 1),
          (dj, padded.shape[2] - dj - span_w, strides[1] - 1),
          (0, 0, 0)))
  (pt, _), (pl, _) = pads
  return (grad_padded[:, pt:pt + x.shape[1], pl:pl + x.shape[2]],)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)
