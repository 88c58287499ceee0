"""layers.Conv and layers.max_pool against flax's nn.Conv and nn.max_pool: parameters,
outputs and gradients, and the form each one compiles to."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aprn_jax.models import layers

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
    (6, (1, 1), (1, 1), "SAME", "wide"),          # a 1x1 kernel above NARROW_1X1_WEIGHTS
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
  # and the 1x1 bound (5 x 4 weights here) to leave a wide 1x1 kernel a convolution.
  monkeypatch.setattr(layers, "NARROW_1X1_WEIGHTS", 19 if form == "wide" else 10**9)
  form = "conv" if form == "wide" else form
  x = jax.random.normal(jax.random.key(0), (3, size, size, 5))
  ours = layers.Conv(4, kernel, strides, padding)
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


def test_conv_dtype_follows_nn_conv():
  x = jnp.ones((2, 4, 4, 3))
  for kernel, strides in (((1, 1), (1, 1)), ((3, 3), (2, 2)), ((3, 3), (1, 1))):
    ours = layers.Conv(4, kernel, strides, dtype=jnp.bfloat16)
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
def test_max_pool_equals_nn_max_pool(size, window, strides, padding, dtype):
  """Same outputs, and the same gradient bit for bit: integer inputs make many ties, which
  both give to the window's first maximum in row-major order; integer cotangents make the
  sums of overlapping windows exact."""
  rng = np.random.RandomState(size)
  x = jnp.asarray(rng.randint(0, 3, (2, size, size, 3)), dtype)
  y = layers.max_pool(x, window, strides, padding)
  y_expected = nn.max_pool(x, window, strides, padding)
  np.testing.assert_array_equal(y, y_expected)
  assert y.dtype == y_expected.dtype

  cotangent = jnp.asarray(rng.randint(-4, 5, y.shape), dtype)
  grad = jax.grad(lambda x: jnp.sum(layers.max_pool(x, window, strides, padding) * cotangent)
                  .astype(jnp.float32))
  grad_expected = jax.grad(lambda x: jnp.sum(nn.max_pool(x, window, strides, padding)
                                             * cotangent).astype(jnp.float32))
  np.testing.assert_array_equal(grad(x), grad_expected(x))
  assert "select_and_scatter" not in _stablehlo(grad, x)


def test_max_pool_gradient_of_random_floats():
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 8))
  cotangent = jax.random.normal(jax.random.key(1), (4, 8, 8, 8))
  args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
  grad = jax.grad(lambda x: jnp.sum(layers.max_pool(x, *args) * cotangent))(x)
  grad_expected = jax.grad(lambda x: jnp.sum(nn.max_pool(x, *args) * cotangent))(x)
  np.testing.assert_allclose(grad, grad_expected, rtol=1e-6, atol=1e-6)
