"""Files shared by several processes: atomic writes (a temporary file next to the target, then a
rename, so no reader ever sees half of one) for every JSON / CSV record a run or a sweep writes,
the clean-up of the temporary files a killed writer left, and the folder lock that builds,
converts and a sweep's runs hold while they write.

A record is created with mode 0666 minus the process's umask, as `open` creates files (mkstemp's
0600 would hide a shared sweep's records from its other users). A write that fails because the
disk is full or the folder is read-only raises `RecordWriteError`: one line naming the file, the
cause and the fix, with no temporary file left behind and the previous version of the record
intact."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from typing import Any

TMP_SUFFIX = ".tmp"
# `<record name>.<8 random characters>.tmp`: ours (and mkstemp's, which older versions used).
_TMP_NAME = re.compile(r"^(?P<record>.+)\.[A-Za-z0-9_]{8}\.tmp$")
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_DISK_FULL_TEXTS = tuple(f"os_error_code='{code}'" for code in sorted(set(_DISK_FULL))) + (
    os.strerror(errno.ENOSPC),)


class RecordWriteError(OSError):
  """A record could not be written (disk full, read-only folder); the message says which and how
  to go on. The previous version of the record, if any, is intact."""

  def __str__(self):  # the message alone, without OSError's "[Errno 28]" prefix
    return str(self.strerror)


def is_disk_full(error: BaseException | None) -> bool:
  """True when ``error`` or one of its causes is a full disk: an OSError with ENOSPC / EDQUOT, or
  a native library's error that carries it only in its text (TensorStore, under Orbax, raises
  ``ValueError: RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']``)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
      return True
    if any(text in str(error) for text in _DISK_FULL_TEXTS):
      return True
    error = error.__cause__ or error.__context__
  return False


def write_error(path: str, error: OSError) -> OSError:
  """``error`` (raised writing ``path``) as a one-line `RecordWriteError` when the disk is full or
  the folder read-only; any other error unchanged."""
  folder = os.path.dirname(os.path.abspath(path))
  if error.errno in _DISK_FULL:
    return RecordWriteError(error.errno, f"the disk is full: cannot write {path} (no space left on "
                            f"the file system of {folder}); nothing was half-written: free space "
                            "there and re-run the same command to resume")
  if error.errno in _READ_ONLY:
    return RecordWriteError(error.errno, f"{folder} is not writable (read-only or no permission): "
                            f"cannot write {path}; make it writable or choose a writable directory")
  return error


def describe_os_error(error: OSError) -> str | None:
  """The one-line message of a full disk or a read-only folder (`RecordWriteError`, or a raw
  OSError from elsewhere: Orbax, numpy, matplotlib); None for any other error."""
  if isinstance(error, RecordWriteError):
    return str(error)
  if error.errno in _DISK_FULL:
    where = f" writing {error.filename}" if error.filename else ""
    return (f"the disk is full{where} ({os.strerror(error.errno)}); free space there and re-run "
            "the same command to resume (finished work is kept)")
  if error.errno == errno.EROFS:
    where = f" {error.filename}" if error.filename else ""
    return (f"read-only file system: cannot write{where}; choose a writable directory "
            "(--workdir, --out)")
  return None


def check_writable(folder: str, what: str = "the output directory") -> None:
  """One line (before any work) when ``folder``, or the existing folder it would be made in, is a
  file or cannot be written (read-only file system, no permission)."""
  folder = os.path.abspath(folder)
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise RecordWriteError(errno.ENOTDIR, f"{what} {folder} is a file; expected a directory")
  parent = folder
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.access(parent, os.W_OK | os.X_OK):
    raise RecordWriteError(errno.EACCES, f"{what} {folder} cannot be written ({parent} is "
                           "read-only or not writable by this user); make it writable or choose "
                           "another directory")


def write_text_atomic(path: str, text: str) -> None:
  """``text`` at ``path``, atomically: written to ``<path>.<random>.tmp`` in the same folder, then
  renamed over ``path``. On any failure the temporary file is removed and ``path`` is untouched."""
  with atomic_target(path) as tmp:
    # O_EXCL: a fresh file of our own; mode 0666 & ~umask, as open() would create the record.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "w", newline="") as f:
      f.write(text)


def write_json_atomic(path: str, obj: Any) -> None:
  """``obj`` as JSON (an ml_collections ConfigDict too) at ``path``, atomically."""
  if hasattr(obj, "to_json_best_effort"):
    text = obj.to_json_best_effort(indent=2, sort_keys=True)
  else:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
  write_text_atomic(path, text + "\n")


@contextlib.contextmanager
def atomic_target(path: str):
  """A temporary path next to ``path`` for a writer that takes a file name (matplotlib's savefig):
  renamed over ``path`` when the block ends, removed (``path`` untouched) when it raises."""
  tmp = f"{path}.{secrets.token_hex(4)}{TMP_SUFFIX}"
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    converted = write_error(path, e) if isinstance(e, OSError) else e
    if converted is not e:
      raise converted from e
    raise


def save_figure(fig, path: str, title: str, software: str, dpi=None) -> list[str]:
  """A matplotlib figure as PNG at ``path`` and as vector PDF beside it, each written atomically,
  with ``title`` in their metadata; returns both paths (the figure stays open)."""
  pdf = os.path.splitext(path)[0] + ".pdf"
  with atomic_target(path) as tmp:
    fig.savefig(tmp, format="png", dpi=dpi, metadata={"Title": title, "Software": software})
  with atomic_target(pdf) as tmp:
    fig.savefig(tmp, format="pdf", metadata={"Title": title, "Creator": software})
  return [path, pdf]


def remove_stale_tmp(folder: str, records=None) -> list[str]:
  """Removes the temporary files of `write_text_atomic` in ``folder`` (of the records named in
  ``records``, or all) that a killed writer left; returns their paths. Call it only where no other
  process can be writing the same records (under the folder's lock)."""
  removed = []
  try:
    names = os.listdir(folder)
  except OSError:
    return removed
  for name in names:
    m = _TMP_NAME.match(name)
    if m and (records is None or m.group("record") in records):
      path = os.path.join(folder, name)
      with contextlib.suppress(OSError):
        if os.path.isfile(path) and not os.path.islink(path):
          os.remove(path)
          removed.append(path)
  return removed


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
