"""Builds a missing dataset once when several JAX processes need it: `ensure_built`.

    from radimagenet_jax.data.build import once
    once.ensure_built("radimagenet_demo/pretrain", data_dir)   # every process of the job calls it

`tfds_source.open_source(..., build=True)` calls this. In a single process it is `build()`. In a
jax.distributed job (it calls `distributed.initialize()` itself) the processes agree through the
job's key-value store (the coordination service that `jax.distributed.initialize` starts):

1. Every process says whether it already sees the dataset. If all do, nothing else happens (a
   read-only data dir holding a finished dataset is fine).
2. Who shares storage with whom: every process writes an empty marker file
   `<data_dir>/.radimagenet_jax_build/<random id>` and publishes the id; then every process looks
   for every id in its own view of `<data_dir>`. Processes that see each other's markers share the
   data dir; the lowest process index of each such group builds. On a shared file system that is
   process 0 alone; with node-local data dirs (e.g. /tmp on each host) it is one process per host.
   The markers are removed once every process has looked.
3. The builders build; every process waits until all builders have reported success, then opens
   the finished dataset. Any error on any process (the build itself, writing the marker, ...) is
   published at once: the process that failed re-raises its own error, every other process raises
   `BuildError` naming that process, its host and the error. So a failed build ends every process
   within a second, instead of the others timing out later in a collective.

Waiting for a build gives up after `RADIMAGENET_JAX_BUILD_TIMEOUT` seconds (default 6 hours)
with a message saying how to build beforehand; waiting for the other processes to arrive here at
all gives up after 10 minutes (they run the same code, so they come within seconds). A builder
that dies without reporting (kill -9, out of memory) is caught by the coordination service's
heartbeat, which terminates the whole job (`distributed.initialize`,
RADIMAGENET_JAX_HEARTBEAT_TIMEOUT).

The key-value store was chosen over status files on the data dir because it works when the data
dir is not shared, needs no file-system consistency between hosts, and dies with the job (no stale
status from an earlier run can be read).
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid

from radimagenet_jax import distributed
from radimagenet_jax.data.build import driver

BUILD_TIMEOUT_ENV = "RADIMAGENET_JAX_BUILD_TIMEOUT"
DEFAULT_BUILD_TIMEOUT_S = 6 * 3600
# The processes meet here within seconds of each other (they run the same code); a process that
# does not come within this time is not coming (e.g. a code path that opens the data on one
# process only).
MEET_TIMEOUT_S = 600
MARKER_DIR = ".radimagenet_jax_build"
_KEY_ROOT = "radimagenet_jax/ensure_built"
_MAX_MESSAGE = 4000
_calls = 0  # ensure_built calls so far: every process makes the same calls in the same order


class BuildError(RuntimeError):
  """Another process of the job failed to build (or to agree on) a dataset, or never finished."""


def ensure_built(dataset: str, data_dir=None, *, timeout_s: float | None = None,
                 progress: bool = False, **build_kwargs) -> None:
  """Makes sure `dataset` is built in `data_dir`, building it on one process per storage location.

  Args:
    dataset: 'name' or 'name/config' of a tfds_builders package.
    data_dir: TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    timeout_s: how long a process waits for the others (default: $RADIMAGENET_JAX_BUILD_TIMEOUT
      or 6 hours).
    progress: show TFDS's progress bars while building.
    **build_kwargs: passed on to `driver.build` (manual_dir, on_error, config).
  """
  global _calls
  client = distributed.coordination_client()
  if client is None:
    driver.build(dataset, data_dir=data_dir, progress=progress, **build_kwargs)
    return
  _calls += 1
  me, count = distributed.process_info()
  if timeout_s is None:
    timeout_s = distributed.env_seconds(BUILD_TIMEOUT_ENV, DEFAULT_BUILD_TIMEOUT_S)
  job = _Agreement(client, f"{_KEY_ROOT}/{_calls}", me, count, dataset)
  marker, created = None, []
  try:
    builder = driver.make_builder(dataset, data_dir=data_dir,
                                  config=build_kwargs.get("config"))
    root = os.fspath(builder.data_dir_root)
    built = os.path.exists(os.fspath(builder.data_path))
    hello = job.gather("hello", {"dataset": dataset, "built": built},
                       "open the dataset too",
                       timeout_s=min(MEET_TIMEOUT_S, timeout_s))
    names = {v["dataset"] for v in hello.values()}
    if len(names) > 1:
      raise BuildError(f"the processes asked for different datasets at the same point: "
                       f"{sorted(names)}; every process must run the same command.")
    if all(v["built"] for v in hello.values()):
      return
    created = driver._new_dirs(root)  # pylint: disable=protected-access
    marker = _write_marker(root)
    markers = job.gather("marker", os.path.basename(marker), "write their storage markers",
                         timeout_s=min(MEET_TIMEOUT_S, timeout_s))
    seen = sorted(i for i, name in markers.items()
                  if os.path.exists(os.path.join(root, MARKER_DIR, name)))
    leader = seen[0] if seen else me
    leaders = job.gather("leader", leader, "look for the storage markers",
                         timeout_s=min(MEET_TIMEOUT_S, timeout_s))
    _remove_marker(marker)
    marker = None
    builders = sorted(set(leaders.values()))
    if leader == me:
      group = [i for i, lead in leaders.items() if lead == me]
      if not built:
        print(f"process {me}: building {dataset} in {root} for process(es) "
              f"{_ranges(group)}", flush=True)
      driver.build(dataset, data_dir=data_dir, progress=progress, **build_kwargs)
      job.publish("done", "ok")
    else:
      print(f"process {me}: waiting for process {leader} to build {dataset} in {root}",
            flush=True)
    job.wait("done", builders, f"build {dataset} in {root}", timeout_s, report_every_s=300)
  except BaseException as e:
    if marker:
      _remove_marker(marker)
    for folder in created:  # the data dir this call made for its marker, if still empty
      try:
        os.rmdir(folder)
      except OSError:
        pass
    if not isinstance(e, _RemoteError):
      job.publish_error(e)
      raise
    raise BuildError(str(e)) from None


class _RemoteError(Exception):
  """Another process published an error (becomes BuildError for the caller)."""


class _Agreement:
  """One `ensure_built` call's keys in the coordination service's key-value store."""

  def __init__(self, client, prefix, me, count, dataset):
    self.client, self.prefix, self.me, self.count = client, prefix, me, count
    self.dataset = dataset

  def publish(self, stage: str, value) -> None:
    self.client.key_value_set(f"{self.prefix}/{stage}/{self.me}", json.dumps(value))

  def publish_error(self, error: BaseException) -> None:
    message = f"{type(error).__name__}: {error}"[:_MAX_MESSAGE]
    try:
      self.client.key_value_set(f"{self.prefix}/error/{self.me}", json.dumps(
          {"host": socket.gethostname(), "message": message}))
    except Exception:  # the coordination service is gone: the heartbeat ends the others
      pass

  def gather(self, stage: str, value, what: str, timeout_s: float) -> dict[int, object]:
    """Publishes this process's value for `stage`; returns every process's {index: value}."""
    self.publish(stage, value)
    return self.wait(stage, range(self.count), what, timeout_s)

  def wait(self, stage: str, processes, what: str, timeout_s: float,
           report_every_s: float = 0.0) -> dict[int, object]:
    """Polls until every process in `processes` has published `stage`; raises on any error."""
    processes = set(processes)
    delay, started = 0.01, time.monotonic()
    reported = started
    while True:
      errors = self.client.key_value_dir_get(f"{self.prefix}/error/")
      if errors:
        key, value = sorted(errors)[0]
        error = json.loads(value)
        raise _RemoteError(f"process {key.rsplit('/', 1)[1]} ({error['host']}) failed while "
                           f"preparing {self.dataset}: {error['message']}")
      got = {int(key.rsplit("/", 1)[1]): json.loads(value)
             for key, value in self.client.key_value_dir_get(f"{self.prefix}/{stage}/")}
      missing = sorted(processes - set(got))
      if not missing:
        return {i: got[i] for i in sorted(processes)}
      now = time.monotonic()
      if now - started > timeout_s:
        hint = (f"Build the dataset beforehand (`radimagenet-jax build {self.dataset} "
                f"--data_dir=...`) or wait longer: {BUILD_TIMEOUT_ENV}=<seconds>."
                if stage == "done" else "Every process must run the same command.")
        raise _RemoteError(f"process {self.me}: gave up after {timeout_s:.0f} s waiting for "
                           f"process(es) {_ranges(missing)} to {what}. {hint}")
      if report_every_s and now - reported > report_every_s:
        reported = now
        print(f"process {self.me}: still waiting for process(es) {_ranges(missing)} to {what} "
              f"({now - started:.0f} s so far, giving up after {timeout_s:.0f} s)", flush=True)
      time.sleep(delay)
      delay = min(2 * delay, 1.0)


def _write_marker(root: str) -> str:
  folder = os.path.join(root, MARKER_DIR)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, uuid.uuid4().hex)
  with open(path, "w"):
    pass
  return path


def _remove_marker(path: str) -> None:
  try:
    os.remove(path)
    os.rmdir(os.path.dirname(path))  # only when no other process's marker is left
  except OSError:
    pass


def _ranges(indices) -> str:
  """[0, 1, 2, 5] -> '0-2, 5'."""
  out, indices = [], sorted(indices)
  for i in indices:
    if out and out[-1][1] == i - 1:
      out[-1][1] = i
    else:
      out.append([i, i])
  return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out)
