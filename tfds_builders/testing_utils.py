"""Helpers for the builder tests: build dummy_data TF-free, read the splits, check the grouping."""
from __future__ import annotations

import collections
import os
import shutil

import numpy as np

ROOT = os.path.dirname(os.path.abspath(__file__))
GROUP_SPLITS = ("train", "validation", "test")


def dummy_dir(name: str) -> str:
  return os.path.join(ROOT, name, "dummy_data")


def copy_dummy(name: str, dest) -> str:
  """A writable copy of tfds_builders/<name>/dummy_data (to corrupt or delete files in)."""
  dest = os.path.join(os.fspath(dest), f"{name}_manual")
  shutil.copytree(dummy_dir(name), dest)
  return dest


def build(dataset: str, manual_dir, data_dir, on_error: str = "fail"):
  """radimagenet_jax.data.build.build without progress bars."""
  from radimagenet_jax.data import build as build_lib
  return build_lib.build(dataset, data_dir=os.fspath(data_dir), manual_dir=os.fspath(manual_dir),
                         on_error=on_error, progress=False)


def read_all(builder) -> dict[str, list[dict]]:
  """{split: [example, ...]} of a built dataset (images decoded)."""
  sources = builder.as_data_source()
  return {name: [src[i] for i in range(len(src))] for name, src in sources.items()}


def text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def check_grouped_splits(splits: dict[str, list[dict]], id_key: str, total: int, folds: int):
  """train/validation/test partition `total` examples with no group in two of them; the folds
  (if any) partition the same examples, each group in one fold."""
  def groups(name):
    return {text(e["patient_id"]) for e in splits[name]}

  def ids(names):
    return collections.Counter(text(e[id_key]) for n in names for e in splits[n])

  assert sum(len(splits[s]) for s in GROUP_SPLITS) == total, {s: len(v) for s, v in splits.items()}
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not groups(a) & groups(b), (a, b, groups(a) & groups(b))
  fold_names = sorted(s for s in splits if s.startswith("fold"))
  assert len(fold_names) == folds, fold_names
  if folds:
    assert ids(fold_names) == ids(GROUP_SPLITS)
    seen = {}
    for f in fold_names:
      for g in groups(f):
        assert seen.setdefault(g, f) == f, f"group {g} in {seen[g]} and {f}"


def truncate(path, keep: int = 40):
  """Cuts a file to its first `keep` bytes (a truncated download)."""
  with open(path, "rb") as f:
    head = f.read(keep)
  with open(path, "wb") as f:
    f.write(head)


def skipped(builder) -> list[list[str]]:
  with open(os.path.join(os.fspath(builder.data_path), "skipped_files.tsv")) as f:
    return [line.rstrip("\n").split("\t") for line in f][1:]


def pil(path, mode=None) -> np.ndarray:
  from PIL import Image
  with Image.open(path) as im:
    return np.asarray(im.convert(mode) if mode else im)
