"""SIGTERM (what SLURM, Kubernetes and TPU maintenance send) as a request to stop cleanly.

While a run is inside `catch_sigterm()`, SIGTERM only sets a flag. The loop asks `stop_agreed()`
after every step; with several processes the flag is combined over all of them, so every process
stops after the SAME step, saves that checkpoint and raises `Preempted`. The CLI turns that into one
line and exit code 143 (128 + SIGTERM), and re-running the same command resumes.

The blocks nest: a fine-tuning run holds one around training, validation, its test predictions
and record writing, and a sweep one around its runs, so SIGTERM in any phase stops after that
phase's work is saved (`finetune.run`, `finetune.sweep`); only the outermost block installs the
handler and clears the flag, so a SIGTERM received between two inner blocks is not lost.
"""
from __future__ import annotations

import contextlib
import signal
import threading

import jax
import numpy as np

EXIT_CODE = 143
_requested = threading.Event()
_depth = [0]  # nesting of catch_sigterm blocks (main thread only)


class Preempted(Exception):
  """The run stopped on SIGTERM after saving a checkpoint at ``step``."""

  def __init__(self, step: int | None, workdir: str, after: str | None = None):
    self.step, self.workdir = step, workdir
    where = f"at step {step}; checkpoint saved in {workdir}" if after is None else \
        f"after {after}; its records are saved in {workdir}"
    super().__init__(f"stopped by SIGTERM {where}; re-run the same command to resume.")


@contextlib.contextmanager
def catch_sigterm():
  """Within the block SIGTERM sets the stop flag instead of killing the process (main thread only;
  elsewhere, e.g. in a notebook's worker thread, the default handling stays). Nested blocks share
  the outermost block's handler and flag."""
  if threading.current_thread() is not threading.main_thread():
    _requested.clear()
    yield
    return
  if _depth[0]:
    _depth[0] += 1
    try:
      yield
    finally:
      _depth[0] -= 1
    return
  _requested.clear()
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: _requested.set())
  _depth[0] = 1
  try:
    yield
  finally:
    _depth[0] = 0
    signal.signal(signal.SIGTERM, previous)


def stop_agreed() -> bool:
  """True when any process received SIGTERM (a collective when there are several processes)."""
  local = _requested.is_set()
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray([int(local)], np.int32))
  return bool(np.asarray(flags).any())
