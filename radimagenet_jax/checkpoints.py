"""Orbax checkpoints: the training state, the grain iterator state and what model they belong to.

One layout serves training workdirs and `radimagenet-jax convert` outputs, so that every consumer
(`models.create(weights=DIR)`, fine-tuning, evaluation, Grad-CAM) reads weights the same way:

    <root>/checkpoints/<step>/variables/   {'params', 'batch_stats'}    (Orbax PyTree)
                             /train/       {'opt_state', 'step', 'rng'} (training only)
                             /data_iter/   grain iterator state, one JSON file per process
                             /metadata/    {'model_name', 'num_classes', 'image_size', ...} (JSON)

``<root>`` is a training workdir or a convert output directory; ``load_variables`` also accepts the
``checkpoints`` folder itself or a single ``<step>`` folder.

Checkpoints carry what their weights are (model, classes, input size, preprocessing mode, class
names, source file); `keras_io.weights_info(path)` reads that back for a checkpoint or a Keras file.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from radimagenet_jax._collections import variables_only

CHECKPOINT_SUBDIR = "checkpoints"
VARIABLES, TRAIN, DATA_ITER, METADATA = "variables", "train", "data_iter", "metadata"
# Fields that must match between a workdir's checkpoint and the config that wants to resume it.
IDENTITY_KEYS = ("model_name", "num_classes", "image_size")


# keras.applications' own preprocess_input mode per model, for Keras's ImageNet weight files.
KERAS_IMAGENET_PREPROCESS = {"resnet50": "caffe", "densenet121": "imagenet",
                             "inception_v3": "tf", "inception_resnet_v2": "tf"}
DEFAULT_PREPROCESS = "radimagenet"  # the official RadImageNet code's preprocessing


class CheckpointMismatchError(ValueError):
  """A checkpoint belongs to another model or input shape than the one requested."""


def _grain_handler():
  import grain.checkpoint
  return grain.checkpoint.CheckpointHandler()


def manager(workdir: str | os.PathLike, *, keep: int | None = None,
            read_only: bool = False) -> ocp.CheckpointManager:
  """The CheckpointManager of ``<workdir>/checkpoints``; keeps the ``keep`` most recent steps
  (None or 0: all)."""
  directory = os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINT_SUBDIR)
  # Readers open with create=False (nothing is written); not read_only=True, which only warns.
  # A reader is this process's own business: its manager syncs with no other process. (Orbax's
  # manager syncs all processes when it opens; a reader opened where a file-system check passed,
  # e.g. `latest_step` once a run created its folder, can pass on one process and not on another,
  # and the unmatched sync then pairs with the next one of the others: a mismatch error or a hang.)
  processes = ocp.options.MultiprocessingOptions()
  if read_only and jax.process_count() > 1:
    me = jax.process_index()
    processes = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  options = ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=not read_only,
                                         multiprocessing_options=processes)
  handlers = {VARIABLES: ocp.StandardCheckpointHandler(), TRAIN: ocp.StandardCheckpointHandler(),
              METADATA: ocp.JsonCheckpointHandler(), DATA_ITER: _grain_handler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _resolve(directory: str | os.PathLike) -> tuple[str, int | None]:
  """Maps a workdir / checkpoints folder / step folder to (checkpoints folder, step or None)."""
  path = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such checkpoint directory; expected a training workdir "
                            f"or a `radimagenet-jax convert` output.")
  if os.path.isdir(os.path.join(path, CHECKPOINT_SUBDIR)):
    return os.path.join(path, CHECKPOINT_SUBDIR), None
  if os.path.isdir(os.path.join(path, METADATA)) and os.path.basename(path).isdigit():
    return os.path.dirname(path), int(os.path.basename(path))
  if any(d.isdigit() for d in os.listdir(path)):
    return path, None
  raise FileNotFoundError(f"{path}: holds no Orbax checkpoint (no '{CHECKPOINT_SUBDIR}/<step>' "
                          f"folder); expected a training workdir or a `radimagenet-jax convert` "
                          f"output.")


def _read_only_manager(checkpoints_dir: str, attempts: int = 5) -> ocp.CheckpointManager:
  """A manager that only reads. A training run writing to the same folder may prune an old step
  between Orbax listing the folder and reading that step's metadata (FileNotFoundError); the
  listing is then taken again, a few times, before the error is raised."""
  for attempt in range(attempts):
    try:
      return manager(os.path.dirname(checkpoints_dir), read_only=True)
    except FileNotFoundError:
      if attempt == attempts - 1 or not os.path.isdir(checkpoints_dir):
        raise
      time.sleep(0.05 * (attempt + 1))


def latest_step(workdir: str | os.PathLike) -> int | None:
  """The newest complete step in ``<workdir>/checkpoints``, or None when there is none."""
  if not os.path.isdir(os.path.join(os.fspath(workdir), CHECKPOINT_SUBDIR)):
    return None
  with _read_only_manager(os.path.join(os.fspath(workdir), CHECKPOINT_SUBDIR)) as mngr:
    return mngr.latest_step()


def read_metadata(directory: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
  """The metadata JSON of the latest (or given) checkpoint under ``directory``."""
  ckpt_dir, pinned = _resolve(directory)
  with _read_only_manager(ckpt_dir) as mngr:
    step = step if step is not None else pinned if pinned is not None else mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"{ckpt_dir}: no complete checkpoint step found.")
    return dict(mngr.restore(step, args=ocp.args.Composite(
        **{METADATA: ocp.args.JsonRestore()}))[METADATA])


def check_identity(metadata: Mapping[str, Any], expected: Mapping[str, Any], where: str):
  """Raises CheckpointMismatchError naming both sides when model name or shape differ."""
  diffs = [f"{k}: checkpoint has {metadata.get(k)!r}, requested {expected[k]!r}"
           for k in IDENTITY_KEYS
           if k in expected and k in metadata and expected[k] is not None
           and metadata[k] != expected[k]]
  if diffs:
    describe = lambda m: ", ".join(f"{k}={m[k]!r}" for k in IDENTITY_KEYS if m.get(k) is not None)
    raise CheckpointMismatchError(
        f"{where} holds a checkpoint of {describe(metadata)} but {describe(expected)} was "
        f"requested ({'; '.join(diffs)}). Nothing was overwritten; use another --workdir or "
        f"the matching config.")


def save(mngr: ocp.CheckpointManager, step: int, *, variables, train_state, data_iter,
         metadata: Mapping[str, Any], force: bool = False) -> bool:
  """Saves one training checkpoint (state + iterator + metadata) at ``step``."""
  items = {VARIABLES: ocp.args.StandardSave(variables), TRAIN: ocp.args.StandardSave(train_state),
           METADATA: ocp.args.JsonSave(dict(metadata))}
  if data_iter is not None:
    import grain.checkpoint
    items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore(mngr: ocp.CheckpointManager, step: int, *, variables, train_state, data_iter):
  """Restores into the structure/shardings of the given (abstract or concrete) state.

  Returns (variables, train_state); ``data_iter`` is restored in place.
  """
  abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  items = {VARIABLES: ocp.args.StandardRestore(abstract(variables)),
           TRAIN: ocp.args.StandardRestore(abstract(train_state))}
  if data_iter is not None:
    import grain.checkpoint
    items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
  out = mngr.restore(step, args=ocp.args.Composite(**items))
  return out[VARIABLES], out[TRAIN]


def save_variables(directory: str | os.PathLike, variables, *, model_name: str, num_classes: int,
                   extra_metadata: Mapping[str, Any] | None = None, step: int = 0,
                   keep: int | None = None) -> str:
  """Writes model variables as an Orbax checkpoint that ``load_variables`` (and
  ``models.create(weights=directory)``) reads. Returns the step folder written.

  ``step``/``keep``: a 'best' checkpoint is written at its training step with ``keep=1``, so the
  new one is complete on disk before the old one is removed."""
  directory = os.path.abspath(os.fspath(directory))
  variables = variables_only(variables)  # what a checkpoint's `variables` item holds
  metadata = {"model_name": model_name, "num_classes": int(num_classes), "step": int(step),
              **dict(extra_metadata or {})}
  with manager(directory, keep=keep) as mngr:
    if mngr.latest_step() is not None:
      check_identity(read_metadata(directory), metadata, directory)
    mngr.save(step, args=ocp.args.Composite(**{VARIABLES: ocp.args.StandardSave(variables),
                                               METADATA: ocp.args.JsonSave(metadata)}), force=True)
    mngr.wait_until_finished()
  return os.path.join(directory, CHECKPOINT_SUBDIR, str(step))


def load_variables(directory: str | os.PathLike, model_name: str | None = None,
                   step: int | None = None) -> dict[str, Any]:
  """Reads {'params', 'batch_stats'} (numpy arrays) from a convert output or a training workdir
  (its latest step unless ``step`` is given). Raises CheckpointMismatchError if the checkpoint
  was written for another model than ``model_name``."""
  ckpt_dir, pinned = _resolve(directory)
  with _read_only_manager(ckpt_dir) as mngr:
    step = step if step is not None else pinned if pinned is not None else mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"{ckpt_dir}: no complete checkpoint step found.")
    meta = dict(mngr.restore(step, args=ocp.args.Composite(
        **{METADATA: ocp.args.JsonRestore()}))[METADATA])
    if model_name is not None:  # the canonical registry name (models.create passes spec.name)
      check_identity(meta, {"model_name": model_name}, os.fspath(directory))
    # Into host numpy arrays shaped from the checkpoint's own metadata: a checkpoint written by
    # another device layout (a pod, 2 processes x 4 devices) reads the same as a local one.
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype),
                          mngr.item_metadata(step)[VARIABLES])
    restored = mngr.restore(step, args=ocp.args.Composite(
        **{VARIABLES: ocp.args.StandardRestore(target)}))[VARIABLES]
  return jax.tree.map(jax.device_get, variables_only(restored))


def preprocess_for_file(file_name, model_name: str | None) -> tuple[str | None, str]:
  """(mode, where it comes from) of a weight file, from its name: 'radimagenet' when the name
  contains RadImageNet (the official release), keras.applications' mode for Keras's ImageNet files
  (`*imagenet*`, `*_tf_dim_ordering_*`), else (None, 'unknown')."""
  base = os.path.basename(os.fspath(file_name)).lower()
  if "radimagenet" in base:
    return "radimagenet", "file name (RadImageNet weights)"
  if ("imagenet" in base or "tf_dim_ordering" in base) and model_name in KERAS_IMAGENET_PREPROCESS:
    return KERAS_IMAGENET_PREPROCESS[model_name], "file name (keras.applications ImageNet weights)"
  return None, "unknown"
