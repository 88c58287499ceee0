"""layers.Conv, layers.max_pool, layers.Dense and layers.BatchNorm against flax's nn.Conv,
nn.max_pool, nn.Dense and nn.BatchNorm: parameters, outputs and gradients, and the form each
one compiles to, in the XLA forms (`xla`) and, where oneDNN is installed, the oneDNN ones
(`fast`)."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aprn_jax.models import layers, onednn

needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason=f"oneDNN unavailable: {onednn.unavailable_reason()}")
# The forms compiled on CPU: XLA's own everywhere, oneDNN's where it is installed.
CPU_FORMS = ["xla", pytest.param("fast", marks=needs_onednn)]

# (map size, kernel, strides, padding, the form Conv should take)
CONV_CASES = [
    (6, (1, 1), (1, 1), "SAME", "dot"),
    (7, (1, 1), (2, 2), "SAME", "dot"),
    (6, (1, 1), (2, 2), "SAME", "dot"),
    (4, (3, 3), (2, 2), "SAME", "window"),          # stage4 conv2 of a 64x64 ResNet
    (3, (3, 3), (2, 2), "SAME", "window"),
    (2, (3, 3), (1, 1), ((1, 1), (1, 1)), "window"),  # D on stage4 of a 64x64 ResNet
    (1, (3, 3), (1, 1), ((1, 1), (1, 1)), "window"),
    (2, (1, 1), (1, 1), "SAME", "dot"),
    (9, (7, 7), (2, 2), ((3, 3), (3, 3)), "conv"),  # a stem
    (5, (3, 3), (1, 1), "SAME", "conv"),
    (8, (3, 3), (2, 2), ((1, 1), (1, 1)), "conv"),
    (5, (3, 3), (1, 1), ((1, 1), (1, 1)), "taps"),  # D on a ResNet-101's 7x7 stage4
    (6, (3, 3), (2, 2), "SAME", "taps"),
    (7, (5, 5), (2, 2), ((2, 1), (0, 3)), "taps"),
]


def _stablehlo(fn, *args):
  return jax.jit(fn).lower(*args).as_text()


@pytest.mark.parametrize("size,kernel,strides,padding,form", CONV_CASES)
def test_conv_equals_nn_conv(size, kernel, strides, padding, form, monkeypatch):
  # Few channels keep the test fast; the tap form's threshold is lowered to reach it.
  monkeypatch.setattr(layers, "LARGE_TAP_WEIGHTS", 20 if form == "taps" else 10**9)
  x = jax.random.normal(jax.random.key(0), (3, size, size, 5))
  ours = layers.Conv(4, kernel, strides, padding, forms="xla")
  flax_conv = nn.Conv(4, kernel, strides, padding=padding, use_bias=False)
  variables = ours.init(jax.random.key(1), x)
  expected = flax_conv.init(jax.random.key(1), x)
  # The same parameter tree and initial values, so checkpoints and seeds carry over.
  assert jax.tree.structure(variables) == jax.tree.structure(expected)
  np.testing.assert_array_equal(variables["params"]["kernel"], expected["params"]["kernel"])

  y = ours.apply(variables, x)
  y_expected = flax_conv.apply(variables, x)
  assert y.shape == y_expected.shape
  np.testing.assert_allclose(y, y_expected, rtol=1e-5, atol=1e-5)

  weights = jax.random.normal(jax.random.key(2), y.shape)
  def loss(module):
    return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)) * weights)
  grads = jax.grad(loss(ours), (0, 1))(variables, x)
  grads_expected = jax.grad(loss(flax_conv), (0, 1))(variables, x)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

  program = _stablehlo(jax.grad(loss(ours), (0, 1)), variables, x)
  assert ("convolution" in program) == (form == "conv")
  # Matrix products in the forward pass: one, one per output pixel, or one per kernel tap.
  products = {"conv": 0, "dot": 1, "window": y.shape[1] * y.shape[2],
              "taps": kernel[0] * kernel[1]}[form]
  assert _stablehlo(lambda v: ours.apply(v, x), variables).count("dot_general") == products


def test_conv_is_lax_conv_off_cpu(monkeypatch):
  """On GPUs and TPUs Conv and max_pool compile to what flax's do."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  x = jnp.ones((2, 4, 4, 3))
  for kernel, strides in (((1, 1), (1, 1)), ((3, 3), (2, 2)), ((3, 3), (1, 1))):
    ours = layers.Conv(4, kernel, strides)
    variables = ours.init(jax.random.key(0), x)
    assert "convolution" in _stablehlo(lambda v: ours.apply(v, x), variables)
  grad = jax.grad(lambda x: jnp.sum(layers.max_pool(x, (3, 3), (2, 2), "SAME")))
  assert "select_and_scatter" in _stablehlo(grad, x)


@needs_onednn
@pytest.mark.parametrize("size,kernel,strides,padding", [c[:4] for c in CONV_CASES] + [
    (64, (7, 7), (2, 2), ((3, 3), (3, 3))),   # the default config's stem, 3 channels in
    (7, (1, 1), (2, 2), ((0, 0), (0, 0))),    # a stride-2 1x1 shortcut on an odd map
    (6, (3, 3), (2, 2), ((0, 1), (0, 1))),    # SAME's pads, written out
    (5, (2, 2), (1, 1), ((0, 0), (0, 0))),
    (1, (3, 3), (2, 2), "SAME"),              # taps on padding alone (stage4 of a 16x16 R)
])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_onednn_conv_equals_nn_conv(size, kernel, strides, padding, dtype):
  """The `fast` form on CPU is one oneDNN primitive per pass (but for the float32 layers where
  XLA's products win): the forward, the input gradient and the kernel gradient each against
  nn.Conv's (XLA's convolution and its transposes) on the same inputs; in bfloat16, against
  nn.Conv in float32 on the bfloat16-rounded map."""
  x = jax.random.normal(jax.random.key(0), (3, size, size, 3 if size == 64 else 5))
  x = x.astype(dtype).astype(jnp.float32)
  ours = layers.Conv(4, kernel, strides, padding, dtype=dtype)
  flax_conv = nn.Conv(4, kernel, strides, padding=padding, use_bias=False)
  variables = ours.init(jax.random.key(1), x)
  if dtype == jnp.bfloat16:  # the kernel as ours rounds it
    variables = jax.tree.map(lambda k: k.astype(dtype).astype(jnp.float32), variables)
  weights = jax.random.normal(jax.random.key(2), flax_conv.apply(variables, x).shape)
  def loss(module):
    return lambda v, x: jnp.sum(module.apply(v, x).astype(jnp.float32) * weights)
  tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=5e-2)
  y = ours.apply(variables, x)
  assert y.dtype == dtype
  np.testing.assert_allclose(y.astype(jnp.float32), flax_conv.apply(variables, x), **tolerance)
  grads = jax.grad(loss(ours), (0, 1))(variables, x)
  grads_expected = jax.grad(loss(flax_conv), (0, 1))(variables, x)
  assert grads[0]["params"]["kernel"].dtype == jnp.float32
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_expected)):
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(got.astype(jnp.float32) / scale, want / scale, **tolerance)

  program = _stablehlo(jax.grad(loss(ours), (0, 1)), variables, x)
  assert "convolution" not in program
  out_shape = flax_conv.apply(variables, x).shape[1:3]
  if layers._xla_products_win(dtype, kernel, out_shape, 5 * 4):  # float32, output <= 2x2
    assert "aprn_onednn" not in program and "dot_general" in program
  else:
    assert "dot_general" not in program
    assert program.count("aprn_onednn_conv_backward") == 2
    assert "aprn_onednn_conv_forward" in _stablehlo(lambda v: ours.apply(v, x), variables)


@pytest.mark.parametrize("forms", CPU_FORMS)
def test_conv_dtype_follows_nn_conv(forms):
  x = jnp.ones((2, 4, 4, 3))
  for kernel, strides in (((1, 1), (1, 1)), ((3, 3), (2, 2)), ((3, 3), (1, 1))):
    ours = layers.Conv(4, kernel, strides, dtype=jnp.bfloat16, forms=forms)
    variables = ours.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert ours.apply(variables, x).dtype == jnp.bfloat16


# (map size, window, strides, padding)
POOL_CASES = [
    (8, (3, 3), (2, 2), ((1, 1), (1, 1))),   # the ResNet stem and D
    (7, (3, 3), (2, 2), ((1, 1), (1, 1))),
    (2, (3, 3), (2, 2), ((1, 1), (1, 1))),
    (1, (3, 3), (2, 2), ((1, 1), (1, 1))),
    (8, (2, 2), (2, 2), "VALID"),             # CASIA-Net
    (7, (2, 2), (2, 2), "VALID"),
    (6, (3, 3), (1, 1), "SAME"),
]


@pytest.mark.parametrize("size,window,strides,padding", POOL_CASES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("forms", CPU_FORMS)
def test_max_pool_equals_nn_max_pool(size, window, strides, padding, dtype, forms):
  """Same outputs, and the same gradient bit for bit: integer inputs make many ties, which
  both give to the window's first maximum in row-major order; integer cotangents make the
  sums of overlapping windows exact."""
  rng = np.random.RandomState(size)
  x = jnp.asarray(rng.randint(0, 3, (2, size, size, 3)), dtype)
  y = layers.max_pool(x, window, strides, padding, forms)
  y_expected = nn.max_pool(x, window, strides, padding)
  np.testing.assert_array_equal(y, y_expected)
  assert y.dtype == y_expected.dtype

  cotangent = jnp.asarray(rng.randint(-4, 5, y.shape), dtype)
  grad = jax.grad(lambda x: jnp.sum(layers.max_pool(x, window, strides, padding, forms)
                                    * cotangent).astype(jnp.float32))
  grad_expected = jax.grad(lambda x: jnp.sum(nn.max_pool(x, window, strides, padding)
                                             * cotangent).astype(jnp.float32))
  np.testing.assert_array_equal(grad(x), grad_expected(x))
  program = _stablehlo(grad, x)
  assert "select_and_scatter" not in program
  assert ("aprn_onednn_max_pool" in program) == (forms == "fast")


@pytest.mark.parametrize("forms", CPU_FORMS)
def test_max_pool_gradient_of_random_floats(forms):
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 8))
  cotangent = jax.random.normal(jax.random.key(1), (4, 8, 8, 8))
  args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
  grad = jax.grad(lambda x: jnp.sum(layers.max_pool(x, *args, forms) * cotangent))(x)
  grad_expected = jax.grad(lambda x: jnp.sum(nn.max_pool(x, *args) * cotangent))(x)
  np.testing.assert_allclose(grad, grad_expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("forms", CPU_FORMS + ["flax"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_equals_nn_dense(forms, dtype):
  """The same parameters as nn.Dense; outputs and gradients within the product's precision
  (on CPU the product is float32 whatever the dtype, nn.Dense's is in dtype)."""
  x = jax.random.normal(jax.random.key(0), (6, 20))
  init = nn.initializers.normal(0.5)
  ours = layers.Dense(7, dtype=dtype, forms=forms, bias_init=init)
  flax_dense = nn.Dense(7, dtype=dtype, bias_init=init)
  variables = ours.init(jax.random.key(1), x)
  expected = flax_dense.init(jax.random.key(1), x)
  assert jax.tree.structure(variables) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(got, want)
  tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=3e-2, atol=3e-2)
  y = ours.apply(variables, x)
  assert y.dtype == dtype
  np.testing.assert_allclose(y.astype(jnp.float32),
                             flax_dense.apply(variables, x).astype(jnp.float32), **tolerance)
  weights = jax.random.normal(jax.random.key(2), y.shape)
  def loss(module):
    return lambda v, x: jnp.sum(module.apply(v, x).astype(jnp.float32) * weights)
  grads = jax.grad(loss(ours), (0, 1))(variables, x)
  grads_expected = jax.grad(loss(flax_dense), (0, 1))(variables, x)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_expected)):
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32), **tolerance)
  if forms != "flax":  # the kernel's gradient is one (in, out) product, not (out, in) copied
    program = jax.jit(jax.grad(loss(ours))).lower(variables, x).compile().as_text()
    assert re.search(r"= f32\[20,7\]\{1,0\} (dot|fusion)\(", program), program


def _bn_loss(module, weights):
  def loss(variables, x):
    y, updates = module.apply(variables, x, mutable=["batch_stats"])
    return jnp.sum(nn.relu(y).astype(jnp.float32) * weights), updates
  return loss


@pytest.mark.parametrize("forms", CPU_FORMS + ["flax"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batch_norm_equals_nn_batch_norm(forms, dtype):
  """Training on CPU with the hand-written gradient: the same variables as nn.BatchNorm, the
  same outputs, running averages and gradients (scale, bias, input) to float rounding; a
  large mean next to a small spread, as the two-pass variance is there for."""
  x = (3.0 + 0.1 * jax.random.normal(jax.random.key(0), (6, 5, 4, 8))).astype(dtype)
  ours = layers.batch_norm(True, momentum=0.9, dtype=dtype, axis_name=None, forms=forms)()
  flax_bn = layers.batch_norm(True, momentum=0.9, dtype=dtype, axis_name=None, forms="flax")()
  init = lambda module: module.init(jax.random.key(1), x)
  variables = init(ours)
  assert jax.tree.structure(variables) == jax.tree.structure(init(flax_bn))
  variables = {"params": {"scale": jnp.linspace(0.5, 2.0, 8), "bias": jnp.linspace(-1, 1, 8)},
               "batch_stats": {"mean": jnp.full(8, 0.1), "var": jnp.full(8, 1.5)}}
  weights = jax.random.normal(jax.random.key(2), x.shape)
  (value, updates), grads = jax.value_and_grad(_bn_loss(ours, weights), (0, 1),
                                               has_aux=True)(variables, x)
  (value_expected, updates_expected), grads_expected = jax.value_and_grad(
      _bn_loss(flax_bn, weights), (0, 1), has_aux=True)(variables, x)
  tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(value, value_expected, **tolerance)
  for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(updates_expected)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_expected)):
    assert got.dtype == want.dtype
    scale = float(jnp.abs(want.astype(jnp.float32)).max())
    np.testing.assert_allclose(got.astype(jnp.float32) / scale,
                               want.astype(jnp.float32) / scale, **tolerance)
  jaxpr = str(jax.make_jaxpr(_bn_loss(ours, weights))(variables, x))
  assert ("custom_vjp_call" in jaxpr) == (forms != "flax")


def _batch_norm_over_devices(forms, ordered=False):
  """(each of 4 CPU devices' gradients of its own BatchNorm loss through the statistics of
  every device's images, in the form `forms`; the step's jaxpr)."""
  x = jax.random.normal(jax.random.key(0), (4, 3, 5, 5, 6)) * 2 + 1
  weights = jax.random.normal(jax.random.key(1), x.shape)
  module = layers.batch_norm(True, momentum=0.9, dtype=jnp.float32, axis_name="d",
                             forms=forms)()
  variables = layers.batch_norm(True, momentum=0.9, dtype=jnp.float32, axis_name=None,
                                forms=forms)().init(jax.random.key(2), x[0])
  def step(x, w):
    with layers.ordered_reductions(ordered):
      return jax.grad(_bn_loss(module, w), (0, 1), has_aux=True)(variables, x)
  grads = jax.pmap(step, axis_name="d", devices=jax.local_devices()[:4])(x, weights)
  return grads, str(jax.make_jaxpr(step, axis_env=[("d", 4)])(x[0], weights[0]))


def _assert_trees_close(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_batch_norm_over_devices_equals_nn_batch_norm():
  """Under pmap (4 CPU devices) the statistics are over every device's images, and each
  device's gradients (its own loss through the shared statistics) equal flax's."""
  _assert_trees_close(_batch_norm_over_devices("xla")[0], _batch_norm_over_devices("flax")[0])


def test_batch_norm_statistics_add_in_device_order_in_flax_form():
  """Within `ordered_reductions` BatchNorm's cross-device sums are all-gathers added in device
  order in flax's form too (what GPUs and TPUs run), with flax's results."""
  got, jaxpr = _batch_norm_over_devices("flax", ordered=True)
  want, flax_jaxpr = _batch_norm_over_devices("flax")
  _assert_trees_close(got, want)
  assert "all_gather" in jaxpr and "psum" not in jaxpr
  assert "psum" in flax_jaxpr


@pytest.mark.parametrize("ordered", [True, False])
def test_sums_over_devices_add_in_device_order(ordered):
  """On 4 devices: the sum, mean and scattered sum equal numpy's float32 sum, added device by
  device ((x0 + x1) + x2) + x3, bit for bit, on every device: always within
  `ordered_reductions`; XLA:CPU's all-reduce within one process measured the same here (a
  job over several processes adds in its collectives' order)."""
  rng = np.random.RandomState(0)
  x = (rng.randn(4, 2, 500) * 10.0 ** rng.randint(-4, 5, (4, 2, 500))).astype(np.float32)

  def body(a):
    with layers.ordered_reductions(ordered):
      return (layers.sum_over_devices({"a": a}, "d")["a"], layers.mean_over_devices(a, "d"),
              layers.sum_scatter_over_devices(a.reshape(4, -1), "d"))
  total, mean, scattered = jax.pmap(body, axis_name="d", devices=jax.local_devices()[:4])(x)
  in_order = ((x[0] + x[1]) + x[2]) + x[3]
  assert np.array_equal(total, np.broadcast_to(in_order, total.shape))
  assert np.array_equal(mean, np.broadcast_to(in_order / np.float32(4), mean.shape))
  assert np.array_equal(np.asarray(scattered).reshape(in_order.shape), in_order)
  jaxpr = str(jax.make_jaxpr(body, axis_env=[("d", 4)])(x[0]))
  assert ("all_gather" in jaxpr) == ordered and ("psum" in jaxpr) != ordered


@needs_onednn
@pytest.mark.parametrize("split", [True, False])
def test_onednn_batch_parts_equal_nn_layers(split):
  """A batch of 8+ images per thread of XLA's pool runs as one oneDNN call per thread, each
  on its own rows (17 images: parts of 8 and 9), the kernel gradient summed over the parts;
  with the split off, one call on oneDNN's OpenMP team. Both against flax's layers."""
  x = jax.random.normal(jax.random.key(0), (17, 9, 9, 5))
  conv = layers.Conv(6, (3, 3), (2, 2), "SAME")
  flax_conv = nn.Conv(6, (3, 3), (2, 2), padding="SAME", use_bias=False)
  variables = conv.init(jax.random.key(1), x)
  weights = jax.random.normal(jax.random.key(2), (17, 5, 5, 6))
  pool_weights = jax.random.normal(jax.random.key(3), (17, 5, 5, 5))
  def loss(apply_conv, pool):
    return lambda v, x: (jnp.sum(apply_conv(v, x) * weights)
                         + jnp.sum(pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))) * pool_weights))
  ours = loss(conv.apply, lambda *a: layers.max_pool(*a, forms="fast"))
  theirs = loss(flax_conv.apply, nn.max_pool)
  try:
    onednn.split_batches(split)
    got = jax.jit(jax.value_and_grad(ours, (0, 1)))(variables, x)
  finally:
    onednn.split_batches(True)
  want = jax.value_and_grad(theirs, (0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
