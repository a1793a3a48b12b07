"""Multi-host start-up: join this process to the others with `jax.distributed.initialize`.

Call `initialize` before anything touches devices (jax.devices(), the first jit, a mesh); after it,
`jax.process_index()` / `jax.process_count()` say which host this is, `jax.devices()` lists every host's
devices, and glm_jax's data pipeline (train/inputs.py) reads this host's shard.

Three cases:
  * a cluster jax detects by itself (Cloud TPU VM slices and pods, SLURM, Open MPI; see
    `jax.distributed.initialize`): no arguments; every worker runs the same command (launch_tpu.sh);
  * anywhere else (GPU or CPU machines): `coordinator_address` ("host:port" of process 0, reachable from every
    process), `num_processes` and this process's `process_id` (0 .. num_processes - 1);
  * one process, nothing detected: nothing to do.
Cross-process collectives on CPU go through gloo (jax's `jax_cpu_collectives_implementation`), which this
module selects unless another implementation ("mpi") was chosen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax

log = logging.getLogger(__name__)

CPU_COLLECTIVES = "gloo"
# `initialize`'s arguments as command-line flags (python -m glm_jax.main train / eval): name, type, help.
COMMAND_LINE_FLAGS = (
  ("coordinator_address", str, "HOST:PORT of process 0, the same on every process"),
  ("num_processes", int, "number of processes (hosts); 1 turns auto-detection off"),
  ("process_id", int, "this process, 0 .. num_processes - 1"),
)


def cluster_detected() -> bool:
  """Whether jax's own auto-detection recognizes this environment (TPU VM slice or pod, SLURM, Open MPI, ...).

  The same test `jax.distributed.initialize()` runs when it gets no arguments (opt-in methods such as mpi4py
  are left out, as jax leaves them out).
  """
  from jax._src import clusters  # jax's cluster registry; no public API exposes the detection alone

  return any(not env.opt_in_only_method and env.is_env_present() for env in clusters.ClusterEnv._cluster_types)


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: Sequence[int] | None = None,
) -> bool:
  """Joins the distributed JAX system (see the module docstring); returns whether it did.

  A no-op returning False when `num_processes` is 1, or when no argument is given and no cluster is detected.
  With `num_processes` or `process_id` given, `coordinator_address` defaults to $JAX_COORDINATOR_ADDRESS.
  Idempotent: a second call after a successful one returns True. Raises ValueError naming the missing or bad
  argument when `num_processes` > 1 comes without `coordinator_address` or `process_id`, or with a
  `process_id` outside 0 .. num_processes - 1.
  """
  if jax.distributed.is_initialized():
    return True
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"num_processes={num_processes} must be >= 1")
  if num_processes == 1:
    return False
  explicit = (coordinator_address, num_processes, process_id) != (None, None, None)
  if explicit:
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")  # jax's own variable
    missing = [
      name
      for name, value in (
        ("coordinator_address", coordinator_address),
        ("num_processes", num_processes),
        ("process_id", process_id),
      )
      if value is None
    ]
    if missing:
      raise ValueError(
        f"multi-host start-up needs coordinator_address, num_processes and process_id together; "
        f"missing {', '.join(missing)} (got coordinator_address={coordinator_address!r}, "
        f"num_processes={num_processes}, process_id={process_id}); give all three, or none on "
        f"a cluster jax detects (TPU VM pod, SLURM, Open MPI)"
      )
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id={process_id} must be in 0 .. num_processes - 1 = {num_processes - 1}")
    if ":" not in coordinator_address:
      raise ValueError(
        f"coordinator_address={coordinator_address!r} must be HOST:PORT (process 0's address and "
        "a free port, the same on every process)"
      )
  elif not cluster_detected():
    return False
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", CPU_COLLECTIVES)
  jax.distributed.initialize(
    coordinator_address, num_processes, process_id, None if local_device_ids is None else list(local_device_ids)
  )
  log.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True
