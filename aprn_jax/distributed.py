"""Several processes as one job: `jax.distributed` set-up and the few cross-process steps.

One process per host (GPU hosts, the hosts of a TPU pod slice), or several on one machine
(tests: CPU processes on 127.0.0.1, each with its own fake devices). Every process runs the
same program on its own devices; `jax.pmap` steps span all devices of all processes. What
only one process should do (build the data set, write logs and JSON) is done by process 0,
the others wait for it at a barrier (`lead_first`).

A process that fails takes the job down: JAX's coordination service sees its heartbeats stop
(or its clean exit) and ends the others with an error within `HEARTBEAT_TIMEOUT_S`, so no
process waits forever in a collective.
"""
import os

import jax

from input_pipeline import console

# Seconds without a heartbeat after which the coordination service ends the job: short
# enough that the other processes exit promptly with the error, long enough for a loaded host.
HEARTBEAT_TIMEOUT_S = 20

ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def settings(coordinator_address=None, num_processes=None, process_id=None):
  """(coordinator_address, num_processes, process_id) from the arguments, else from the
  environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); None when the
  job is not distributed, or has to be detected by JAX (TPU pods, SLURM, Open MPI)."""
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  count = num_processes if num_processes is not None else os.environ.get("JAX_NUM_PROCESSES")
  index = process_id if process_id is not None else os.environ.get("JAX_PROCESS_ID")
  if address is None and count is None and index is None:
    return None
  if address is None or count is None or index is None:
    raise ValueError("a multi-process job needs all of --coordinator_address, "
                     "--num_processes and --process_id (or JAX_COORDINATOR_ADDRESS, "
                     f"JAX_NUM_PROCESSES, JAX_PROCESS_ID); got {address!r}, {count!r}, "
                     f"{index!r}")
  try:
    count, index = int(count), int(index)
  except ValueError:
    raise ValueError(f"--num_processes and --process_id must be integers, got {count!r}, "
                     f"{index!r}") from None
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"--process_id={index} is not in [0, --num_processes={count})")
  return address, count, index


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               auto_detect=False):
  """Joins the job described by the arguments or the environment (`settings`), or the one
  JAX detects (TPU pod slices, SLURM, Open MPI) when `auto_detect`. On CPU the collectives
  between processes go through gloo. Returns whether this process is part of a job of
  several processes."""
  described = settings(coordinator_address, num_processes, process_id)
  if described is None and not auto_detect:
    return False
  # Collectives of the CPU backend only: GPUs and TPUs keep their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
  if described is not None:
    address, count, index = described
    kwargs.update(coordinator_address=address, num_processes=count, process_id=index)
  jax.distributed.initialize(**kwargs)
  console.show_progress(is_lead())  # one console per job
  return jax.process_count() > 1


def is_lead():
  """Whether this process writes the job's logs, JSON and other single files."""
  return jax.process_index() == 0


def barrier(name):
  """Every process waits here until all have arrived (a no-op in a one-process job)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def lead_first(name, fn):
  """fn() on process 0, then, once it has returned, on the others (e.g. build a data set
  once, then open it everywhere). Returns this process's fn()."""
  if jax.process_count() == 1:
    return fn()
  result = fn() if is_lead() else None
  barrier(f"{name}: done on process 0")
  return result if is_lead() else fn()
