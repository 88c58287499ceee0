"""aprn_jax/models/onednn.py: building the handlers, what happens without oneDNN, bad input.

Its layers' values are tested against flax's in tests/test_layers.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aprn_jax.models import layers, onednn


@pytest.fixture
def fresh_state(monkeypatch):
  """onednn's load state, emptied for the test and restored after it."""
  monkeypatch.setattr(onednn, "_state", {})


def test_without_onednn_fast_forms_are_xla_forms(monkeypatch):
  monkeypatch.setattr(onednn, "_state", {"error": "oneDNN is not installed"})
  assert layers.cpu_forms("fast") == "xla"
  x = jnp.ones((2, 6, 6, 3))
  conv = layers.Conv(4, (3, 3))
  variables = conv.init(jax.random.key(0), x)
  program = jax.jit(conv.apply).lower(variables, x).as_text()
  assert "convolution" in program and "aprn_onednn" not in program
  with pytest.raises(RuntimeError, match="oneDNN layers are unavailable: oneDNN is not installed"):
    onednn.conv(x, variables["params"]["kernel"], (1, 1), ((1, 1), (1, 1)))


def test_missing_onednn_names_the_packages(monkeypatch, fresh_state):
  monkeypatch.setattr(onednn, "_onednn_prefix", lambda: None)
  assert not onednn.available()
  assert "onednn-cpu-gomp" in onednn.unavailable_reason()


@pytest.mark.skipif(onednn._onednn_prefix() is None, reason="oneDNN is not installed")
def test_a_failed_build_names_the_command_and_leaves_no_library(monkeypatch, fresh_state,
                                                                 tmp_path):
  monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
  monkeypatch.setenv("APRN_JAX_CACHE", str(tmp_path))
  assert not onednn.available()
  reason = onednn.unavailable_reason()
  assert "compiling" in reason and onednn.SOURCE in reason and "false -O2" in reason
  assert list(tmp_path.iterdir()) == []  # no half-written library to load next time


@pytest.mark.skipif(onednn._onednn_prefix() is None, reason="oneDNN is not installed")
def test_the_library_is_built_once_per_source_and_flags(monkeypatch, fresh_state, tmp_path):
  monkeypatch.setenv("APRN_JAX_CACHE", str(tmp_path))
  path = onednn._build()
  assert path.startswith(str(tmp_path)) and path.endswith(".so")
  assert [p.name for p in tmp_path.iterdir()] == [path.rsplit("/", 1)[1]]
  stamp = tmp_path.joinpath(path.rsplit("/", 1)[1]).stat().st_mtime_ns
  assert onednn._build() == path  # found, not rebuilt
  assert tmp_path.joinpath(path.rsplit("/", 1)[1]).stat().st_mtime_ns == stamp


needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason=f"oneDNN unavailable: {onednn.unavailable_reason()}")


@needs_onednn
def test_integer_maps_are_refused_by_name():
  x = jnp.ones((1, 4, 4, 2), jnp.int32)
  with pytest.raises(Exception, match="float32 or bfloat16 only"):
    jax.block_until_ready(onednn.conv(x, jnp.ones((3, 3, 2, 2), jnp.int32), (1, 1),
                                      ((1, 1), (1, 1))))


@needs_onednn
def test_pool_windows_past_one_byte_are_refused():
  with pytest.raises(ValueError, match="over 255 taps"):
    onednn.max_pool(jnp.ones((1, 20, 20, 1)), (16, 16), (1, 1), ((0, 0), (0, 0)))


@needs_onednn
def test_concurrent_calls_on_several_devices_equal_one():
  """pmap over the host devices runs the handlers from several threads at once (cached
  primitives, per-thread buffers); each device's result equals the same call alone."""
  devices = jax.local_devices()
  x = jax.random.normal(jax.random.key(0), (len(devices), 8, 12, 12, 16))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 16, 32))
  def step(x):
    y, vjp = jax.vjp(lambda x, k: onednn.conv(x, k, (2, 2), ((1, 1), (1, 1))), x, kernel)
    pooled, pool_vjp = jax.vjp(lambda y: onednn.max_pool(y, (3, 3), (2, 2), ((1, 1), (1, 1))),
                               y)
    return (pooled,) + vjp(pool_vjp(jnp.ones_like(pooled))[0])
  together = jax.pmap(step, devices=devices)(x)
  for i in range(len(devices)):
    alone = jax.jit(step)(x[i])
    for got, want in zip(together, alone):
      np.testing.assert_array_equal(got[i], want)


@needs_onednn
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_gradient_of_taps_on_padding_alone_is_zero(dtype):
  """A stride-2 3x3 window on a 1x1 map (stage4 of a 16x16 ResNet) reads the map with its
  centre tap only; the other taps' gradient is zero. oneDNN 3.2 left those entries as it found
  them in reused buffers (3e19 after other convolutions had run), until zeroed."""
  for size, channels in ((6, 32), (3, 16)):  # other convolutions first, to dirty the buffers
    x = jnp.ones((2, size, size, channels), dtype)
    jax.grad(lambda k: onednn.conv(x, k, (2, 2), ((0, 1), (0, 1))).astype(jnp.float32).sum())(
        jnp.ones((3, 3, channels, channels)))
  x = jax.random.normal(jax.random.key(0), (2, 1, 1, 8)).astype(dtype)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 8, 8))
  for _ in range(3):
    grad = jax.grad(lambda k: onednn.conv(x, k, (2, 2), ((1, 1), (1, 1)))
                    .astype(jnp.float32).sum())(kernel)
    expected = np.zeros((3, 3, 8, 8), np.float32)
    expected[1, 1] = np.repeat(np.asarray(x, np.float32).sum((0, 1, 2))[:, None], 8, axis=1)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
