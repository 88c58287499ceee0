"""Convolutions and max-pools on CPU through oneDNN, the library PyTorch's CPU layers run on.

XLA:CPU's own operations ran this project's stem and 3x3 convolutions 1.6 to 3.3x slower than
oneDNN's, forward and backward, and its stem max-pool 5x (benchmarks/layers.py;
docs/benchmarks.md, "PyTorch side by side"). `conv` is `lax.conv_general_dilated` on NHWC maps
and HWIO kernels with a gradient, computed by three XLA FFI handlers (onednn.cc beside this
file): the forward, the input gradient and the kernel gradient, each one oneDNN primitive on
the maps as they are in memory; `max_pool` is `nn.max_pool` with oneDNN's forward (keeping
each window's argmax, one byte per output) and gradient.

The handlers are compiled on first use with the C++ compiler (`$CXX`, else `g++`) against
the oneDNN package of requirements.txt (`onednn-cpu-gomp`, headers from
`onednn-devel-cpu-gomp`) and the FFI headers jaxlib ships, into a cache folder
(`$APRN_JAX_CACHE`, else `~/.cache/aprn_jax`) named by a hash of all inputs, so a later process
loads the library in milliseconds. Where oneDNN or a compiler is missing (the package is
Linux x86-64 only) `available()` is False, with the reason in `unavailable_reason()`, and
layers.py keeps XLA's forms.

Which oneDNN. The package's oneDNN (3.2) runs each call on an OpenMP team of its own, started
from whichever of XLA's threads makes the call, beside XLA's threads. jaxlib carries a newer
oneDNN (3.7 in jaxlib 0.10.2) built to run on a caller's thread pool, linked in with its
functions hidden but named in the library's symbol table. The same handlers are compiled a
second time against it (onednn_jaxlib.cc: each C API function a jump to jaxlib's copy, found
in that symbol table), with XLA's own intra-op pool as oneDNN's thread pool, and take the
forward, input-gradient and max-pool calls that the package's handlers would run on one
OpenMP team (batches too small to split over XLA's threads). The kernel gradient stays with
the package's oneDNN: jaxlib's took 1.4x as long on ResNet-101's discriminator (105 against
75 ms). Where jaxlib's copy cannot be bound (another jaxlib build, no symbol table), every
call takes the package's, with the reason in `jaxlib_onednn_reason()`. Measured in
docs/benchmarks.md ("oneDNN on XLA's threads").
"""
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn.cc")
JAXLIB_SOURCE = os.path.join(os.path.dirname(SOURCE), "onednn_jaxlib.cc")
TARGETS = {"aprn_onednn_conv_forward": "AprnConvForward",
           "aprn_onednn_conv_backward_data": "AprnConvBackwardData",
           "aprn_onednn_conv_backward_kernel": "AprnConvBackwardKernel",
           "aprn_onednn_max_pool": "AprnMaxPool",
           "aprn_onednn_max_pool_training": "AprnMaxPoolTraining",
           "aprn_onednn_max_pool_backward": "AprnMaxPoolBackward"}
# The targets of the handlers built on jaxlib's oneDNN (all but the kernel gradient).
JAXLIB_SUFFIX = "_jaxlib"
JAXLIB_TARGETS = {name + JAXLIB_SUFFIX: symbol for name, symbol in TARGETS.items()
                  if name != "aprn_onednn_conv_backward_kernel"}
# Whether calls the package's handlers would run on one OpenMP team take jaxlib's oneDNN
# (benchmarks/step_ab.py --change=jaxlib_onednn compares the two in one process).
USE_JAXLIB = True
# onednn.cc's kMinPartImages: a batch is split over XLA's threads from this many per thread.
MIN_PART_IMAGES = 8

# "library" once loaded, or "error" with why it cannot be; "jaxlib" once jaxlib's oneDNN is
# bound, or "jaxlib_error" with why it is not.
_state = {}


def _onednn_prefix():
  """The prefix holding include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so, or None."""
  for prefix in (sysconfig.get_paths()["data"], sys.prefix, sys.base_prefix):
    if (os.path.exists(os.path.join(prefix, "include", "oneapi", "dnnl", "dnnl.hpp"))
        and os.path.exists(os.path.join(prefix, "lib", "libdnnl.so"))):
      return prefix
  return None


def _cache_dir():
  return os.environ.get("APRN_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "aprn_jax")


def _build(on_jaxlib=False):
  """Compiles (or finds) the handlers' shared library; returns its path. `on_jaxlib`: against
  jaxlib's oneDNN (with onednn_jaxlib.cc and the package's headers), else the package's."""
  prefix = _onednn_prefix()
  if prefix is None:
    raise RuntimeError("oneDNN is not installed (pip install -r requirements.txt brings "
                       "onednn-cpu-gomp and onednn-devel-cpu-gomp on Linux x86-64)")
  compiler = os.environ.get("CXX") or shutil.which("g++")
  if not compiler:
    raise RuntimeError("no C++ compiler: set $CXX or install g++")
  include, lib = os.path.join(prefix, "include"), os.path.join(prefix, "lib")
  command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
             f"-I{jax.ffi.include_dir()}", f"-I{include}", SOURCE]
  if on_jaxlib:  # every oneDNN function defined in the library itself (-z defs checks it)
    command += ["-DAPRN_ONEDNN_THREADPOOL", JAXLIB_SOURCE, "-Wl,-z,defs"]
  else:
    command += [f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}"]
  sources = b"".join(open(path, "rb").read() for path in command if path.endswith(".cc"))
  digest = hashlib.sha256(sources + " ".join(command).encode()
                          + jax.__version__.encode()).hexdigest()[:16]
  path = os.path.join(_cache_dir(), f"onednn-{digest}.so")
  if os.path.exists(path):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # Written under a temporary name and renamed: concurrent builds (several processes of one
  # job) never load a half-written library.
  fd, partial = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
  os.close(fd)
  try:
    result = subprocess.run(command + ["-o", partial], capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f"compiling {SOURCE} failed ({' '.join(command)}):\n"
                         f"{result.stderr[-2000:]}")
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return path


def _register(library, targets):
  for target, symbol in targets.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")


def _load():
  if "library" in _state or "error" in _state:
    return _state.get("library")
  try:
    library = ctypes.cdll.LoadLibrary(_build())
    _register(library, TARGETS)
    _state["library"] = library
  except (OSError, RuntimeError) as error:
    _state["error"] = str(error)
    return None
  try:
    on_jaxlib = ctypes.cdll.LoadLibrary(_build(on_jaxlib=True))
    on_jaxlib.AprnBindJaxlibOneDnn.restype = ctypes.c_char_p
    error = on_jaxlib.AprnBindJaxlibOneDnn()
    if error is not None:
      raise RuntimeError(error.decode())
    _register(on_jaxlib, JAXLIB_TARGETS)
    _state["jaxlib"] = on_jaxlib
  except (OSError, RuntimeError) as error:
    _state["jaxlib_error"] = str(error)
  return library


def jaxlib_onednn_reason():
  """None where the handlers on jaxlib's oneDNN are bound, else why they are not."""
  _load()
  return None if "jaxlib" in _state else _state.get("jaxlib_error", _state.get("error"))


def _target(name, batch):
  """`name`, or its handler on jaxlib's oneDNN for a call that the package's handler would run
  on one OpenMP team: a batch too small to split over XLA's threads (onednn.cc, Parts)."""
  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  if (USE_JAXLIB and "jaxlib" in _state and name + JAXLIB_SUFFIX in JAXLIB_TARGETS
      and min(threads or 1, batch // MIN_PART_IMAGES) <= 1):
    return name + JAXLIB_SUFFIX
  return name


def split_batches(split=True):
  """Whether calls on a batch of 8 or more images per thread of XLA's pool run as one part per
  thread, oneDNN on one OpenMP thread in each (the default), or on oneDNN's OpenMP team
  (benchmarks/step_ab.py --change=onednn_split compares the two in one process)."""
  library = _load()
  if library is None:
    raise RuntimeError(f"the oneDNN layers are unavailable: {unavailable_reason()}")
  library.AprnSplitBatches(int(bool(split)))


def available():
  """Whether the oneDNN layers can run here (building them on first call)."""
  return _load() is not None


def unavailable_reason():
  _load()
  return _state.get("error")


def _attrs(strides, pads):
  return dict(stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
              pad_top=np.int64(pads[0][0]), pad_left=np.int64(pads[1][0]))


def _out_shape(x, kernel, strides, pads):
  return _valid_pads(x.shape, kernel.shape[:2], strides, pads)[2]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, pads):
  return _forward(x, kernel, strides, pads)[0]


def _forward(x, kernel, strides, pads):
  out = (x.shape[0],) + _out_shape(x, kernel, strides, pads) + (kernel.shape[-1],)
  # The kernel goes in float32: oneDNN rounds it to x's dtype as it lays it out for the
  # primitive (a separate cast was a pass over every kernel, twice a step).
  y = jax.ffi.ffi_call(_target("aprn_onednn_conv_forward", x.shape[0]),
                       jax.ShapeDtypeStruct(out, x.dtype))(
      x, kernel, **_attrs(strides, pads))
  return y, (x, kernel)


def _backward(strides, pads, residuals, grad):
  x, kernel = residuals
  dx = jax.ffi.ffi_call(_target("aprn_onednn_conv_backward_data", x.shape[0]),
                        jax.ShapeDtypeStruct(
      x.shape, x.dtype))(grad, kernel, **_attrs(strides, pads))
  # The kernel gradient is summed in float32 and returned in the kernel's own dtype (the
  # float32 parameter), as XLA's convolution of bfloat16 maps does.
  dkernel = jax.ffi.ffi_call("aprn_onednn_conv_backward_kernel", jax.ShapeDtypeStruct(
      kernel.shape, kernel.dtype))(x, grad, **_attrs(strides, pads))
  return dx, dkernel


_conv.defvjp(_forward, _backward)


def _check():
  if not available():
    raise RuntimeError(f"oneDNN layers are unavailable: {unavailable_reason()}")


def _valid_pads(x_shape, window, strides, pads):
  """(rows and columns of x that some output reads, pads oneDNN takes) for explicit pads."""
  out = tuple((size + lo + hi - k) // s + 1
              for size, (lo, hi), k, s in zip(x_shape[1:3], pads, window, strides))
  keep = tuple(min(size, (o - 1) * s + k - lo)
               for size, o, s, k, (lo, _) in zip(x_shape[1:3], out, strides, window, pads))
  return keep, tuple((lo, (o - 1) * s + k - size - lo)
                     for (lo, _), o, s, k, size in zip(pads, out, strides, window, keep)), out


def conv(x, kernel, strides, pads):
  """`lax.conv_general_dilated(x, kernel.astype(x.dtype), strides, pads)` (NHWC, HWIO) in
  x.dtype; the kernel's gradient in kernel.dtype. `pads` are explicit ((top, bottom),
  (left, right)) pairs; rows and columns no output reaches are cropped first."""
  _check()
  strides = tuple(int(s) for s in strides)
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  # oneDNN wants the last output's window to end inside the padded map: crop what it skips.
  keep, pads, _ = _valid_pads(x.shape, kernel.shape[:2], strides, pads)
  if keep != x.shape[1:3]:
    x = x[:, :keep[0], :keep[1]]
  return _conv(x, kernel, strides, pads)


def _pool_attrs(window, strides, pads):
  return dict(window_h=np.int64(window[0]), window_w=np.int64(window[1]),
              **_attrs(strides, pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
  out = (x.shape[0],) + _valid_pads(x.shape, window, strides, pads)[2] + (x.shape[-1],)
  return jax.ffi.ffi_call(_target("aprn_onednn_max_pool", x.shape[0]),
                          jax.ShapeDtypeStruct(out, x.dtype))(
      x, **_pool_attrs(window, strides, pads))


def _max_pool_forward(x, window, strides, pads):
  out = (x.shape[0],) + _valid_pads(x.shape, window, strides, pads)[2] + (x.shape[-1],)
  y, argmax = jax.ffi.ffi_call(_target("aprn_onednn_max_pool_training", x.shape[0]), (
      jax.ShapeDtypeStruct(out, x.dtype), jax.ShapeDtypeStruct(out, jnp.uint8)))(
          x, **_pool_attrs(window, strides, pads))
  return y, argmax


def _max_pool_backward(window, strides, pads, argmax, grad):
  # The (cropped) map's size follows from the output's: no output skips its last rows.
  shape = (grad.shape[0],) + tuple((o - 1) * s + k - lo - hi for o, s, k, (lo, hi) in zip(
      grad.shape[1:3], strides, window, pads)) + (grad.shape[-1],)
  return (jax.ffi.ffi_call(_target("aprn_onednn_max_pool_backward", grad.shape[0]),
                           jax.ShapeDtypeStruct(
      shape, grad.dtype))(grad, argmax, **_pool_attrs(window, strides, pads)),)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def max_pool(x, window, strides, pads):
  """`nn.max_pool(x, window, strides, pads)` on an NHWC map (pads: explicit pairs, taps on
  padding never chosen); the gradient goes to each window's first maximum in row-major order,
  as XLA's select-and-scatter sends it (tests/test_onednn.py)."""
  _check()
  window, strides = tuple(int(w) for w in window), tuple(int(s) for s in strides)
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  keep, pads, _ = _valid_pads(x.shape, window, strides, pads)
  if keep != x.shape[1:3]:
    x = x[:, :keep[0], :keep[1]]
  if window[0] * window[1] > 255:  # one byte per output holds the argmax
    raise ValueError(f"oneDNN max-pool: window {window} has over 255 taps")
  return _max_pool(x, window, strides, pads)
