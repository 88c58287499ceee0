"""Settings of the host process that training and evaluation on CPU want, applied at start-up.

`keep_freed_memory()` makes glibc's allocator keep freed memory in one heap instead of handing
it back to the kernel. XLA:CPU allocates each step's buffers afresh; with glibc's defaults the
large ones were mapped and unmapped every step, so the step's operations wrote into new
pages: 240,000 page faults a second in the default config's train step (the kernel zeroing
each page), 15% of its time (docs/benchmarks.md, "PyTorch side by side"). With one arena,
no mapped chunks and no trimming, a step reuses the previous step's pages. The process then
keeps its peak memory until it exits.
"""
import ctypes
import ctypes.util
import os
import platform

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_freed_memory():
  """Call before JAX or PyTorch start their threads. Returns whether glibc took the settings:
  False off glibc, or where the user set MALLOC_* variables (theirs are kept), or with
  APRN_JAX_KEEP_MALLOC=1 in the environment."""
  if (platform.system() != "Linux" or os.environ.get("APRN_JAX_KEEP_MALLOC") == "1"
      or any(name.startswith("MALLOC_") for name in os.environ)):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(parameter, value) == 1 for parameter, value in (
      (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)))
