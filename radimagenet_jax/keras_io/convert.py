"""`radimagenet-jax convert`: a Keras weight file -> an Orbax checkpoint directory.

The checkpoint is written into a hidden temporary folder next to the output
(`.<workdir name>.tmp<random>`), renamed into place when complete. The folder is locked (flock)
while a convert writes it; one left by a convert that was killed (kill -9, power cut) is unlocked,
and the next convert to the same output removes it and says so.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import tempfile

from radimagenet_jax import checkpoints as checkpoint, models
from radimagenet_jax.keras_io.load import load_h5

log = logging.getLogger(__name__)


def convert(h5_path, name: str, workdir) -> str:
  """Loads a Keras weight file and writes it as an Orbax checkpoint in ``workdir`` that
  ``rij.models.create(name, weights=workdir)`` and the training commands read.

  Written to a temporary folder next to ``workdir`` and renamed at the end: nothing is left behind
  when anything fails. Refuses to overwrite an existing non-empty ``workdir``. Returns the path.
  """
  spec = models.get_spec(name)
  workdir = os.path.abspath(os.fspath(workdir))
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise FileExistsError(f"{workdir}: already exists and is not an empty folder; convert never "
                          f"overwrites, choose a new --workdir.")
  parent, prefix = os.path.dirname(workdir), f".{os.path.basename(workdir)}.tmp"
  _remove_stale(parent, prefix)
  variables = load_h5(h5_path, spec.name)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
  with contextlib.ExitStack() as stack:
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    stack.enter_context(_locked(tmp, blocking=True))
    target = os.path.join(tmp, "ckpt")
    checkpoint.save_variables(target, variables, model_name=spec.name, num_classes=0,
                              extra_metadata={"source": os.path.abspath(os.fspath(h5_path)),
                                              "converted_by": "radimagenet_jax.keras_io.convert",
                                              "head": "none (backbone only)"})
    if os.path.isdir(workdir):
      os.rmdir(workdir)  # empty, checked above
    os.rename(target, workdir)
  log.info("Converted %s (%s) to %s.", h5_path, spec.name, workdir)
  return workdir


@contextlib.contextmanager
def _locked(folder: str, blocking: bool):
  """An exclusive flock on `folder` (yields True), or False when not blocking and it is held."""
  try:
    import fcntl
    fd = os.open(folder, os.O_RDONLY)
  except (ImportError, OSError):  # no fcntl (Windows): every temporary folder counts as in use
    yield blocking
    return
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
      held = True
    except OSError:  # held by a running convert (or no flock on this file system)
      held = False
    yield held
  finally:
    os.close(fd)


def _remove_stale(parent: str, prefix: str) -> None:
  """Removes the `<prefix>*` temporary folders of killed converts (those nobody holds locked)."""
  for path in sorted(glob.glob(os.path.join(glob.escape(parent), glob.escape(prefix) + "*"))):
    if not os.path.isdir(path):
      continue
    with _locked(path, blocking=False) as stale:
      if stale:
        shutil.rmtree(path, ignore_errors=True)
        log.warning("removed %s: the temporary folder of an interrupted convert", path)
