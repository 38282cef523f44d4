"""Files shared by several processes: atomic writes (a temporary file next to the target, then a
rename, so no reader ever sees half of one) for every JSON / CSV record a run or a sweep writes,
and the folder lock that builds and converts hold while they write."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any


def write_text_atomic(path: str, text: str) -> None:
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                             dir=os.path.dirname(path) or ".")
  try:
    with os.fdopen(fd, "w", newline="") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  """``obj`` as JSON (an ml_collections ConfigDict too) at ``path``, atomically."""
  if hasattr(obj, "to_json_best_effort"):
    text = obj.to_json_best_effort(indent=2, sort_keys=True)
  else:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
  write_text_atomic(path, text + "\n")


@contextlib.contextmanager
def folder_lock(folder: str, blocking: bool = True, unsupported: bool = True):
  """Holds an exclusive flock on ``folder`` and yields True; yields False when ``blocking`` is False
  and another process holds it; yields ``unsupported`` where flock is not available (no fcntl, an
  unreadable folder, a file system without flock). The kernel releases the lock when its holder
  dies, even by kill -9, so a lock that can be taken means nobody is writing there."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
    fd = os.open(folder, os.O_RDONLY)
  except (ImportError, OSError):
    yield unsupported
    return
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
      held = True
    except BlockingIOError:  # another process holds it
      held = False
    except OSError:
      held = unsupported
    yield held
  finally:
    os.close(fd)
