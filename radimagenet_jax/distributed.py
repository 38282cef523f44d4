"""Multi-process start-up, the ('data',) mesh, host-local <-> global arrays, the compile cache.

One code path for one CPU, one GPU, a GPU cluster and a TPU pod: the mesh spans ``jax.devices()``
(every device of every process), parameters are replicated (``P()``), batches are split over the
'data' axis (``P('data')``), and each process feeds only its own slice of the global batch.

Failure detection: ``initialize`` passes a heartbeat timeout to ``jax.distributed.initialize``
(``RADIMAGENET_JAX_HEARTBEAT_TIMEOUT``, default 60 s). When a process dies (kill -9, out of memory,
a lost host), the coordination service stops hearing from it and terminates every other process
of the job within that time, with "Terminating process because the JAX distributed service
detected fatal errors" in its log, instead of leaving them blocked in a collective.
``RADIMAGENET_JAX_INIT_TIMEOUT`` (default 300 s) bounds the wait for all processes to join, and
``RADIMAGENET_JAX_SHUTDOWN_TIMEOUT`` (default 300 s) the wait at exit for the others to finish.
A process that meets an error alone does not wait there: the CLI calls ``exit_if_failed_alone``.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
# Environment variables that mean "this is one process of a multi-process job".
_MULTIPROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS",
                     "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                     "MEGASCALE_COORDINATOR_ADDRESS")
DISTRIBUTED_ENV = "RADIMAGENET_JAX_DISTRIBUTED"
HEARTBEAT_TIMEOUT_ENV = "RADIMAGENET_JAX_HEARTBEAT_TIMEOUT"
INIT_TIMEOUT_ENV = "RADIMAGENET_JAX_INIT_TIMEOUT"
SHUTDOWN_TIMEOUT_ENV = "RADIMAGENET_JAX_SHUTDOWN_TIMEOUT"
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
DEFAULT_INIT_TIMEOUT_S = 300
DEFAULT_SHUTDOWN_TIMEOUT_S = 300
# How long a failed process waits for the others to fail too (exit_if_failed_alone).
ERROR_AGREEMENT_S = 10
FAILED_ALONE = "failed alone"  # exit_if_failed_alone's log line starts so
CACHE_ENV = "RADIMAGENET_JAX_CACHE"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "radimagenet_jax", "jax")
_initialized = False


def env_seconds(name: str, default: int) -> int:
  """A positive whole number of seconds from environment variable ``name`` (default if unset)."""
  value = os.environ.get(name, "").strip()
  if not value:
    return default
  try:
    seconds = int(value)
  except ValueError:
    seconds = 0
  if seconds <= 0:
    raise ValueError(f"{name}={value!r}: expected a positive whole number of seconds.")
  return seconds


def _is_multiprocess_launch() -> bool:
  forced = os.environ.get(DISTRIBUTED_ENV, "").strip()
  if forced in ("0", "1"):
    return forced == "1"
  if forced:
    raise ValueError(f"{DISTRIBUTED_ENV}={forced!r}: expected 1 (always join a jax.distributed "
                     f"job), 0 (never) or unset (when a launcher's variables are set).")
  if os.environ.get("SLURM_NTASKS", "1") != "1":
    return True
  return any(os.environ.get(k) for k in _MULTIPROCESS_ENV if k != "SLURM_NTASKS")


def initialize() -> None:
  """Calls ``jax.distributed.initialize()`` once when launched as part of a multi-process job.

  Single-process runs (no launcher environment) skip it. The launchers in launch/ set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; SLURM (SLURM_NTASKS > 1) and
  Open MPI are recognised here and their details read by jax itself. RADIMAGENET_JAX_DISTRIBUTED=1
  always initializes (jax then detects the cluster, e.g. a Cloud TPU pod from the VM metadata;
  launch/tpu_pod.sh sets it), =0 never does. Safe to call more than once (the data layer calls it
  before building a dataset, the training engine again before building the mesh).
  """
  global _initialized
  if _initialized or not _is_multiprocess_launch():
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  if jax_distributed.global_state.client is not None:  # the caller initialized jax.distributed
    _initialized = True
    return
  kwargs = dict(heartbeat_timeout_seconds=env_seconds(HEARTBEAT_TIMEOUT_ENV,
                                                      DEFAULT_HEARTBEAT_TIMEOUT_S),
                initialization_timeout=env_seconds(INIT_TIMEOUT_ENV, DEFAULT_INIT_TIMEOUT_S),
                shutdown_timeout_seconds=env_seconds(SHUTDOWN_TIMEOUT_ENV,
                                                     DEFAULT_SHUTDOWN_TIMEOUT_S))
  if os.environ.get("JAX_COORDINATOR_ADDRESS") and os.environ.get("JAX_NUM_PROCESSES"):
    kwargs.update(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  jax.distributed.initialize(**kwargs)
  _initialized = True
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def _joined_client():
  """The jax.distributed client when this process has joined a job of several processes."""
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  state = jax_distributed.global_state
  return state.client if (state.num_processes or 1) > 1 else None


def in_multiprocess_job() -> bool:
  """Whether this process has joined a jax.distributed job of several processes (no start-up)."""
  return _joined_client() is not None


def exit_if_failed_alone(code: int) -> None:
  """After an error in a multi-process job, exits at once (``os._exit(code)``) when this process
  failed alone; returns when every process failed (and in a single process).

  A process that fails alone (a file only it reads, its host's memory) would otherwise wait at
  exit up to the shutdown timeout for the others, which wait for it in a collective and never
  come: minutes of a cluster job doing nothing. Every process that fails comes here and waits up to
  ``ERROR_AGREEMENT_S`` at a barrier: when all arrive (an error they share: a bad config, a NaN
  loss, a failed dataset build), the normal exit follows with its clean shutdown; when the barrier
  times out, this process exits with ``code`` and the coordination service stops the others.
  """
  client = _joined_client()
  if client is None:
    return
  try:
    client.wait_at_barrier("radimagenet_jax_error_exit", ERROR_AGREEMENT_S * 1000)
    return
  except Exception:  # pylint: disable=broad-except  (the barrier timed out: this one failed alone)
    pass
  print(f"{FAILED_ALONE} (process {jax.process_index()} of {jax.process_count()}): exiting now; "
        f"the coordination service stops the others.", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def agree_on_outcome(tag: str, error: BaseException | None, *,
                     describe: Callable[[BaseException], str]) -> BaseException | None:
  """Every process's outcome of the unit of work ``tag`` (a sweep's run), the same on each.

  In a multi-process job each process publishes whether ``tag`` failed and waits for the others
  (up to the shutdown timeout): None when all succeeded; ``error`` itself when every process
  failed with the same message (a NaN loss, a bad setting: what one process would report); else a
  RuntimeError naming each failing process and its error (``describe(error)``, one line), so that every process records the same
  failure, with its real cause, and they go on to the next unit together. When the others do not
  report within the timeout (one is stuck in a collective that the failing one left), raises
  RuntimeError: the job has to end (re-running resumes). Single process: returns ``error``.
  """
  client = coordination_client()
  if client is None:
    return error
  import json  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  me, count = process_info()
  text = "" if error is None else describe(error)
  prefix = f"radimagenet_jax/outcome/{tag}"
  client.key_value_set(f"{prefix}/{me}", json.dumps(text))
  timeout_s = env_seconds(SHUTDOWN_TIMEOUT_ENV, DEFAULT_SHUTDOWN_TIMEOUT_S)
  started, delay = time.monotonic(), 0.01
  while True:
    got = {int(key.rsplit("/", 1)[1]): json.loads(value)
           for key, value in client.key_value_dir_get(f"{prefix}/")}
    if len(got) == count:
      break
    if time.monotonic() - started > timeout_s:
      state = f"failed ({text})" if text else "finished"
      raise RuntimeError(f"{tag}: process {me} {state}, but processes "
                         f"{sorted(set(range(count)) - set(got))} did not finish it within "
                         f"{timeout_s} s ({SHUTDOWN_TIMEOUT_ENV}); ending the job, re-running "
                         f"the command resumes.") from error
    time.sleep(delay)
    delay = min(delay * 2, 1.0)
  failures = {i: t for i, t in sorted(got.items()) if t}
  if not failures:
    return None
  if len(failures) == count and len(set(failures.values())) == 1 and error is not None:
    return error
  return RuntimeError("; ".join(f"process {i}: {t}" for i, t in failures.items()))


def coordination_client():
  """The jax.distributed client (key-value store, barriers) of a multi-process job, else None.

  Calls ``initialize()`` first. Used to agree on things outside the compiled steps, e.g. which
  process builds a missing dataset (`radimagenet_jax.data.build.once`).
  """
  initialize()
  return _joined_client()


def process_info() -> tuple[int, int]:
  """(process index, process count) without starting the JAX backends; (0, 1) when single."""
  initialize()
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  state = jax_distributed.global_state
  if state.client is None:
    return 0, 1
  return int(state.process_id), int(state.num_processes)


def compilation_cache_dir(cache_dir: str | None = None) -> str | None:
  """Where the persistent compilation cache lives: ``cache_dir``; if None or '':
  $RADIMAGENET_JAX_CACHE, else ~/.cache/radimagenet_jax/jax. 'none' (in either place) turns it off
  (returns None)."""
  path = cache_dir or os.environ.get(CACHE_ENV, "") or DEFAULT_CACHE_DIR
  if path.strip().lower() == "none":
    return None
  return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def enable_compilation_cache(cache_dir: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache in ``compilation_cache_dir(cache_dir)``.

  A re-run (a resumed run, the next process of a sweep, every process of a job on one host) loads
  compiled steps from disk instead of compiling again. JAX keeps its own rule of caching only
  programs that took at least ``jax_persistent_cache_min_compile_time_secs`` (1 s) to compile.
  Returns the directory, or None when turned off ('none'). Call it before the first compile; a
  later call with another directory re-points the cache for the following compiles.
  """
  path = compilation_cache_dir(cache_dir)
  if path is None:
    return None
  if "://" not in path:
    os.makedirs(path, exist_ok=True)
  if jax.config.jax_compilation_cache_dir != path:
    jax.config.update("jax_compilation_cache_dir", path)
    try:  # JAX reads the directory once, at its first compile: make it read it again.
      from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
      compilation_cache.reset_cache()
    except (ImportError, AttributeError):
      pass
  jax.config.update("jax_enable_compilation_cache", True)
  logging.info("JAX persistent compilation cache: %s", path)
  return path


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
