"""`radimagenet-jax convert`: a Keras weight file -> an Orbax checkpoint directory."""
from __future__ import annotations

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
  variables = load_h5(h5_path, spec.name)
  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}.tmp", dir=parent)
  try:
    target = os.path.join(tmp, "ckpt")
    checkpoint.save_variables(target, variables, model_name=spec.name, num_classes=0,
                              extra_metadata={"source": os.path.abspath(os.fspath(h5_path)),
                                              "converted_by": "radimagenet_jax.keras_io.convert",
                                              "head": "none (backbone only)"})
    if os.path.isdir(workdir):
      os.rmdir(workdir)  # empty, checked above
    os.rename(target, workdir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  log.info("Converted %s (%s) to %s.", h5_path, spec.name, workdir)
  return workdir
