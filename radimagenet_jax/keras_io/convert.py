"""`radimagenet-jax convert`: a Keras weight file -> an Orbax checkpoint directory.

The checkpoint carries what the weights are (`keras_io.weights_info` reads it back): model_name,
num_classes (0: backbone only; a file's classifier is kept), image_size (default: the model's),
preprocess (default from the file name: 'radimagenet' for RadImageNet files, keras.applications'
mode for Keras's ImageNet files; an explicit mode wins), class_names (when given for a file with a
classifier), source_file and num_parameters.

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
from typing import Any

import numpy as np

from radimagenet_jax import _files, checkpoints, models
from radimagenet_jax.keras_io.h5file import _open, _parse
from radimagenet_jax.keras_io.load import _expected, _match, load_h5

log = logging.getLogger(__name__)


def file_info(path, model_name: str | None = None) -> dict:
  """``weights_info`` of a Keras file: the model it matches (``model_name`` when given,
  a ValueError when the file does not match it), its classifier's class count, the model's default
  input size and the preprocessing its name implies."""
  path = os.path.abspath(os.fspath(path))
  names = [models.get_spec(model_name).name] if model_name else _by_name_hint(path)
  with _open(path) as f:
    contents = _parse(f, path)
    for name in names:
      try:
        _, top = _match(contents, name, _expected(name))
      except ValueError:
        if model_name:
          raise
        continue
      head = top[-1].shapes if top else []
      return _metadata(path, name, num_classes=head[0][1] if head and len(head[0]) == 2 else 0)
  return {"kind": "keras", "path": path, "source_file": path, "model_name": None, "num_classes": 0,
          "image_size": None, "preprocess": None, "preprocess_origin": "unknown",
          "class_names": None}


# File-name fragments of each model (release and keras.applications names), most specific first.
_HINTS = (("inception_resnet_v2", ("irv2", "inceptionresnetv2", "inception_resnet_v2")),
          ("inception_v3", ("inceptionv3", "inception_v3")),
          ("densenet121", ("densenet121",)), ("resnet50", ("resnet50",)))


def _by_name_hint(path) -> list[str]:
  """The model names, the one the file name suggests first (each try traces a model's shapes)."""
  base = os.path.basename(path).lower().replace("-", "_")
  hinted = next((name for name, frags in _HINTS if any(f in base for f in frags)), None)
  return sorted(models.names(), key=lambda n: n != hinted)


def _metadata(path, name, num_classes, preprocess=None, image_size=None, class_names=None):
  spec = models.get_spec(name)
  if image_size is not None and int(image_size) < spec.min_size:
    raise ValueError(f"image_size={image_size} is below {spec.name}'s minimum input size "
                     f"{spec.min_size}.")
  if preprocess:
    origin = "given"
  else:
    preprocess, origin = checkpoints.preprocess_for_file(path, spec.name)
  if class_names is not None:
    class_names = [str(c) for c in class_names]
    if len(class_names) != num_classes:
      raise ValueError(f"{len(class_names)} class names given, but the weights' classifier has "
                       f"{num_classes} classes (0: no classifier, a notop file).")
  return {"kind": "keras", "path": path, "source_file": path, "model_name": spec.name,
          "num_classes": int(num_classes), "image_size": int(image_size or spec.default_size),
          "preprocess": preprocess, "preprocess_origin": origin, "class_names": class_names}


def num_parameters(variables) -> int:
  """Every number the variables hold (params and BatchNorm statistics, as Keras counts them)."""
  import jax
  return int(sum(np.size(a) for a in jax.tree.leaves(variables)))


def convert(h5_path, name: str, workdir, *, preprocess: str | None = None,
            image_size: int | None = None, class_names=None, keep_head: bool = True) -> str:
  """Loads a Keras weight file and writes it as an Orbax checkpoint in ``workdir`` that
  ``rij.models.create(name, weights=workdir)`` and the training commands read.

  The file's classifier (a trailing Dense 'predictions') is kept unless ``keep_head=False``. The
  metadata records the preprocessing (``preprocess``, default from the file name, else
  'radimagenet' with a warning), ``image_size`` (default: the model's), ``class_names`` (for a
  file with a classifier), the source file and the parameter count.
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
  variables = load_h5(h5_path, spec.name, load_head="auto" if keep_head else False)
  head = variables.get("params", {}).get("predictions")
  source = os.path.abspath(os.fspath(h5_path))
  meta = _metadata(source, spec.name, np.shape(head["kernel"])[-1] if head else 0, preprocess,
                   image_size, class_names)
  if meta["preprocess"] is None:
    meta["preprocess"], meta["preprocess_origin"] = checkpoints.DEFAULT_PREPROCESS, "default"
    log.warning("%s: the file name names neither RadImageNet nor ImageNet; recorded preprocess="
                "'%s' (pass --preprocess to record the mode these weights were trained with).",
                h5_path, checkpoints.DEFAULT_PREPROCESS)
  extra = {k: meta[k] for k in ("image_size", "preprocess", "preprocess_origin", "source_file")}
  if meta["class_names"] is not None:
    extra["class_names"] = meta["class_names"]
  extra.update(source=source, converted_by="radimagenet_jax.keras_io.convert",
               num_parameters=num_parameters(variables),
               head=(f"predictions ({meta['num_classes']} classes, from the file)" if head
                     else "none (backbone only)"))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
  with contextlib.ExitStack() as stack:
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    stack.enter_context(_locked(tmp, blocking=True))
    target = os.path.join(tmp, "ckpt")
    checkpoints.save_variables(target, variables, model_name=spec.name,
                              num_classes=meta["num_classes"], extra_metadata=extra)
    if os.path.isdir(workdir):
      os.rmdir(workdir)  # empty, checked above
    os.rename(target, workdir)
  log.info("Converted %s (%s) to %s.", h5_path, spec.name, workdir)
  return workdir


def _locked(folder: str, blocking: bool):
  """A convert's lock on its temporary folder (`_files.folder_lock`). Without flock a temporary
  folder counts as in use, so only a blocking caller goes on."""
  return _files.folder_lock(folder, blocking, unsupported=blocking)


def _remove_stale(parent: str, prefix: str) -> None:
  """Removes the `<prefix>*` temporary folders of killed converts (those nobody holds locked)."""
  for path in sorted(glob.glob(os.path.join(glob.escape(parent), glob.escape(prefix) + "*"))):
    if not os.path.isdir(path):
      continue
    with _locked(path, blocking=False) as stale:
      if stale:
        shutil.rmtree(path, ignore_errors=True)
        log.warning("removed %s: the temporary folder of an interrupted convert", path)


def weights_info(path: str | os.PathLike, model_name: str | None = None) -> dict[str, Any]:
  """What a set of weights is, as a dict: 'kind' ('checkpoint' | 'keras'), 'path', 'model_name',
  'num_classes' (0: no classifier), 'image_size', 'preprocess' (None when unknown),
  'preprocess_origin', 'class_names' (None when unknown), 'source_file', plus the rest of a
  checkpoint's metadata ('step', 'dataset', 'init', ...).

  A checkpoint (training workdir or `convert` output) answers from its metadata (a checkpoint that
  predates the 'preprocess' field: from its source file's name). A Keras .h5 / .weights.h5 file
  answers from its name (`preprocess_for_file`) and contents (the model it matches, or
  ``model_name``; the class count of its classifier); image_size is then the model's default.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    meta = checkpoints.read_metadata(path)
    source = meta.get("source_file") or meta.get("source")
    info = {**meta, "kind": "checkpoint", "path": os.path.abspath(path), "source_file": source,
            "num_classes": int(meta.get("num_classes") or 0),
            "image_size": meta.get("image_size"), "class_names": meta.get("class_names")}
    if meta.get("preprocess"):
      info["preprocess"] = meta["preprocess"]
      info["preprocess_origin"] = meta.get("preprocess_origin", "checkpoint metadata")
    else:
      info["preprocess"], info["preprocess_origin"] = checkpoints.preprocess_for_file(
          source or "", meta.get("model_name"))
    return info
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file or directory; expected a Keras .h5 file or an "
                            f"Orbax checkpoint directory.")
  return file_info(path, model_name)
