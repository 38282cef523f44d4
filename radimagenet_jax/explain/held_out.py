"""Grad-CAM only on images a model has not seen: a run's splits.json against the explained split.

A fine-tuning run writes ``splits.json`` (the example ids of its train, validation and test sets).
When a model's weights are such a run (its workdir or its ``best`` / checkpoint folder inside), the
images of the explained split that are in that run's training or validation set are refused: they
are left out and counted (``n_refused``), and when nothing is left the command stops with a one-line
error. ``config.allow_seen_images=True`` keeps them (and says so). Ids follow the fold builder's rule
(finetune/folds.py): ``source_id``, else ``file_name`` (``#slice_index`` for volumes), else
``<split>:<index>``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from radimagenet_jax.data import tfds_source


def _text(value) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


def record_id(record, split: str, index: int) -> str:
  """The id a fine-tuning run's splits.json gives this record (finetune/folds.read_examples)."""
  if "source_id" in record:
    return _text(record["source_id"])
  if "file_name" in record:
    out = _text(record["file_name"])
    return out + (f"#{int(record['slice_index'])}" if "slice_index" in record else "")
  return f"{split}:{index}"


def find_splits(weights: str) -> str | None:
  """The splits.json of the run whose checkpoint ``weights`` is (the folder or its parent)."""
  if not weights or not os.path.isdir(weights):
    return None
  for folder in (weights, os.path.dirname(os.path.normpath(weights))):
    path = os.path.join(folder, "splits.json")
    if os.path.isfile(path):
      return path
  return None


def seen_ids(path: str) -> set:
  """The ids of a splits.json's train and validation sets (a named error if it is not one)."""
  try:
    with open(path) as f:
      data = json.load(f)
    ids = set(data["train"]) | set(data["validation"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: not a run's splits.json with 'train' and 'validation' id lists "
                     f"({e}).") from None
  return ids


class View:
  """Some records of a source, in order; ``indices`` are their positions in the source."""

  def __init__(self, source, indices):
    self.source, self.indices = source, list(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[self.indices[int(i)]]

  @property
  def dataset_info(self):
    return getattr(self.source, "dataset_info", None)


def held_out(source, config, plans) -> tuple[object, dict]:
  """(source restricted to held-out images, report) for the configured models' splits.json.

  The report: ``{"splits": [paths], "n_refused", "n_checked", "allowed"}``. Raises a one-line
  ValueError when every image of the split was seen in training or validation (and the flag is
  off)."""
  paths = [p for p in (find_splits(plan["weights"]) for plan in plans) if p]
  report = {"splits": paths, "n_refused": 0, "n_checked": 0,
            "allowed": bool(config.get("allow_seen_images", False))}
  if not paths:
    return source, report
  seen = set().union(*(seen_ids(p) for p in paths))
  raw = tfds_source.open_source(config.dataset, config.split, config.data_dir or None,
                                decode=False)
  n = len(raw) if not config.max_images else min(config.max_images, len(raw))
  keep = [i for i in range(n) if record_id(raw[i], config.split, i) not in seen]
  report.update(n_checked=n, n_refused=n - len(keep))
  if report["allowed"] or not report["n_refused"]:
    return source, report
  where = f"{config.dataset}[{config.split}]"
  if not keep:
    raise ValueError(f"all {n} images of {where} are in the training or validation set of "
                     f"{', '.join(paths)}; Grad-CAM on seen images overstates localisation. Explain "
                     f"the run's held-out images (its test set), or set "
                     f"--config.allow_seen_images=True.")
  return View(source, keep), report
