"""aprn_jax/models/onednn.py: building the handlers, what happens without oneDNN, bad input.

Its layers' values are tested against flax's in tests/test_layers.py."""
import os
import platform

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


def _conv_and_pool_grads(x, kernel):
  """The oneDNN layers' values and gradients of a 3x3/2 convolution and a 3x3/2 max-pool, and
  the compiled program's text."""
  def loss(x, kernel):
    y = onednn.conv(x, kernel, (2, 2), ((1, 1), (1, 1)))
    pooled = onednn.max_pool(y, (3, 3), (2, 2), ((1, 1), (1, 1)))
    return jnp.sum(jnp.sin(pooled.astype(jnp.float32)))
  fn = jax.jit(jax.value_and_grad(loss, (0, 1)))
  return fn(x, kernel), fn.lower(x, kernel).as_text()


@needs_onednn
@pytest.mark.skipif(platform.machine() != "x86_64", reason="jaxlib's oneDNN is bound on x86-64")
def test_the_pinned_jaxlib_onednn_is_bound():
  """With requirements.txt's jaxlib the handlers bind to its oneDNN: a jaxlib that stops
  carrying it (or its symbol table) fails here instead of skipping the tests below."""
  assert onednn.jaxlib_onednn_reason() is None


needs_jaxlib_onednn = pytest.mark.skipif(
    not onednn.available() or onednn.jaxlib_onednn_reason() is not None,
    reason=f"jaxlib's oneDNN not bound: {onednn.jaxlib_onednn_reason()}")


@needs_jaxlib_onednn
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_small_batches_run_on_jaxlib_onednn_and_equal_the_package(monkeypatch, dtype):
  """A batch too small to split over XLA's threads takes jaxlib's oneDNN for the forward, input
  gradient and max-pool calls (the kernel gradient stays with the package's); the values
  equal the package's handlers' (flax's are in tests/test_layers.py)."""
  x = jax.random.normal(jax.random.key(0), (4, 11, 11, 24)).astype(dtype)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 24, 40)) * 0.1
  got, program = _conv_and_pool_grads(x, kernel)
  for target in onednn.JAXLIB_TARGETS:  # all but inference's max-pool
    assert (f"@{target}(" in program) == (target != "aprn_onednn_max_pool_jaxlib"), target
  assert "@aprn_onednn_conv_backward_kernel(" in program
  monkeypatch.setattr(onednn, "USE_JAXLIB", False)
  want, package_program = _conv_and_pool_grads(x, kernel)
  assert onednn.JAXLIB_SUFFIX not in package_program
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = float(jnp.abs(b.astype(jnp.float32)).max())
    np.testing.assert_allclose(np.asarray(a, np.float32) / scale, np.asarray(b, np.float32) / scale,
                               rtol=tolerance, atol=tolerance)


@needs_jaxlib_onednn
def test_batches_split_over_xla_threads_keep_the_package():
  threads = len(os.sched_getaffinity(0))
  x = jnp.ones((onednn.MIN_PART_IMAGES * threads, 9, 9, 4))
  _, program = _conv_and_pool_grads(x, jnp.ones((3, 3, 4, 4)))
  assert (onednn.JAXLIB_SUFFIX in program) == (threads == 1)


@needs_onednn
def test_an_unbound_jaxlib_onednn_leaves_every_call_to_the_package(monkeypatch, fresh_state):
  build = onednn._build
  def no_jaxlib(on_jaxlib=False):
    if on_jaxlib:
      raise RuntimeError("jaxlib's oneDNN is 2.7 with CPU runtime 2")
    return build()
  monkeypatch.setattr(onednn, "_build", no_jaxlib)
  assert onednn.available()
  assert onednn.jaxlib_onednn_reason() == "jaxlib's oneDNN is 2.7 with CPU runtime 2"
  _, program = _conv_and_pool_grads(jnp.ones((2, 9, 9, 4)), jnp.ones((3, 3, 4, 4)))
  assert "aprn_onednn_conv_forward" in program and onednn.JAXLIB_SUFFIX not in program
