"""Multi-process start-up, the ('data',) mesh, and host-local <-> global arrays.

One code path for one CPU, one GPU, a GPU cluster and a TPU pod: the mesh spans ``jax.devices()``
(every device of every process), parameters are replicated (``P()``), batches are split over the
'data' axis (``P('data')``), and each process feeds only its own slice of the global batch.
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
# Environment variables that mean "this is one process of a multi-process job".
_MULTIPROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS",
                     "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
_initialized = False


def initialize() -> None:
  """Calls ``jax.distributed.initialize()`` once when launched as part of a multi-process job.

  Single-process runs (no launcher environment) skip it. The launchers in launch/ set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; SLURM, Open MPI and Cloud TPU
  are detected by jax itself.
  """
  global _initialized
  if _initialized:
    return
  if os.environ.get("SLURM_NTASKS", "1") == "1" and not any(
      os.environ.get(k) for k in _MULTIPROCESS_ENV if k != "SLURM_NTASKS"):
    return
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  jax.distributed.initialize(**kwargs)
  _initialized = True
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def make_mesh(devices=None) -> Mesh:
  """A 1-D ('data',) mesh over ``devices`` (default: all devices of all processes)."""
  return _mesh(tuple(jax.devices() if devices is None else devices))


@functools.lru_cache(maxsize=None)
def _mesh(devices: tuple) -> Mesh:
  # One Mesh object per device tuple, so that functions cached on the mesh are reused.
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This process's share of the global batch; checks it splits evenly over devices/processes."""
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  if global_batch_size % n_dev:
    raise ValueError(f"batch_size={global_batch_size} (global) must be a multiple of the device "
                     f"count {n_dev}; e.g. use {max(n_dev, global_batch_size // n_dev * n_dev)}.")
  return global_batch_size // n_proc


def to_global(batch, mesh: Mesh):
  """Host-local numpy batch (leading dim = this process's share) -> global arrays on the mesh."""
  sharding = data_sharded(mesh)
  n_proc = jax.process_count()

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (x.shape[0] * n_proc,) + x.shape[1:])
  return jax.tree.map(one, batch)


def put_replicated(tree, mesh: Mesh):
  """Places a host pytree (same values on every process) replicated on every device."""
  return jax.device_put(tree, replicated(mesh))


def is_main_process() -> bool:
  return jax.process_index() == 0
