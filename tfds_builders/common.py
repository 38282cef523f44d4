"""What the radimagenet-jax dataset builders share: items, patient-grouped splits, PNG encoding.

A builder built on `SplitBuilder` does two things:

- `_list_items(manual_dir)` returns the `Item`s of the release (one per image, exam or volume:
  metadata only, cheap), calling `self.source_error` for files named in a CSV but missing, labels
  outside the class list, etc.;
- `_examples(item)` decodes one item and yields `(key, example)` pairs (a volume yields one example
  per slice); on a corrupt file it calls `self.source_error` and yields nothing.

`SplitBuilder` then writes the splits:

- `train` / `validation` / `test`: 75 / 10 / 15 % of the items (exact up to one group's size), no
  group (patient, exam...) in two splits (`radimagenet_jax.data.splits.group_split`);
- with `config.folds = k > 0`: `fold0` ... `fold{k-1}`, a grouped stratified k-fold partition of
  ALL items. Fold i's test set is `fold{i}`; its training set is the union of the others, read
  with TFDS split arithmetic, e.g. `tfds.data_source(name, split='fold1+fold2+fold3+fold4')`.
  Items are stored once per family of splits (so folds double the disk use; `folds=0` turns them
  off).

Builders whose release fixes its own split override `_assign_splits`.
"""
from __future__ import annotations

import dataclasses
import io
import os
import types
from typing import Any, Iterator, Sequence

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from radimagenet_jax.data.build import readers
from radimagenet_jax.data import splits as splits_lib
from radimagenet_jax.data.build import tfds_base

SPLIT_SEED = 0
DEFAULT_FOLDS = 5


@dataclasses.dataclass(eq=False)
class RadConfig(tfds.core.BuilderConfig):
  """A builder config with the number of grouped k-fold splits to write (0 = none)."""
  folds: int = DEFAULT_FOLDS


@dataclasses.dataclass
class Item:
  """One unit of the release, grouped as a whole into one split.

  Attributes:
    key: unique, stable id (usually the path relative to manual_dir); example keys derive from it.
    group: the patient (or exam / image when the source has no patient) id; never in two splits.
    label: class index (stratification and the 'label' feature).
    data: whatever `_examples` needs (paths, boxes, ...).
  """
  key: str
  group: str
  label: int
  data: Any = None


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 HxW, HxWx1 or HxWx3 array (what tfds Image features take without TF)."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f"encode_png expects uint8, got {array.dtype}")
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {1: 0, 3: 2}  # channels -> IHDR colour type (0 gray, 2 RGB)


def png_bytes(raw: bytes, image: np.ndarray) -> bytes:
  """The source file's own bytes when they already are an 8-bit PNG of `image`'s channel count
  (saves re-encoding millions of images), else `image` encoded anew."""
  channels = 1 if image.ndim == 2 else image.shape[-1]
  if (raw[:8] == _PNG_SIGNATURE and len(raw) > 26 and raw[12:16] == b"IHDR" and raw[24] == 8
      and raw[25] == _PNG_COLOR_TYPES.get(channels) and raw[28] == 0):  # not interlaced
    return raw
  return encode_png(image)


def split_description(config) -> str:
  """The sentence on the splits for a dataset description."""
  folds = getattr(config, "folds", 0)
  text = ("Splits: train/validation/test = 75/10/15 % of the items (up to one group), no group in "
          "two splits")
  if folds:
    text += (f"; fold0..fold{folds - 1}: grouped stratified {folds}-fold partition of all "
             f"examples (fold i = test set of fold i, the other folds its training set)")
  return text + "."


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """uint8 HxW / HxWx1 / HxWx3 / HxWx4 -> HxWx`channels` (gray replicated; RGB to 601 luma)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 4:  # RGBA: the alpha channel carries no image content
    image = image[..., :3]
  if image.shape[-1] == channels:
    return image
  if channels == 3 and image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  if channels == 1 and image.shape[-1] == 3:
    return np.asarray(Image.fromarray(image).convert("L"))[..., None]
  raise ValueError(f"cannot convert an image of shape {image.shape} to {channels} channels")


def image_feature(channels: int) -> tfds.features.Image:
  return tfds.features.Image(shape=(None, None, channels), encoding_format="png")


def mask_feature() -> tfds.features.Image:
  """Lesion mask: uint8 HxWx1, 1 inside the lesion, 0 elsewhere (same size as the image)."""
  return tfds.features.Image(shape=(None, None, 1), encoding_format="png")


def assign_splits(items: Sequence[Item], folds: int,
                  seed: int = SPLIT_SEED) -> dict[str, list[Item]]:
  """{'train','validation','test'[, 'fold0'...]} -> items; grouped by `item.group` (folds are
  also stratified by `item.label`)."""
  groups = [it.group for it in items]
  labels = [it.label for it in items]
  names = splits_lib.group_split(groups, seed=seed)
  out = {"train": [], "validation": [], "test": []}
  for it, name in zip(items, names):
    out[name].append(it)
  if folds:
    fold_of = splits_lib.group_kfold(groups, labels, k=folds, seed=seed)
    for i in range(folds):
      out[f"fold{i}"] = []
    for it, f in zip(items, fold_of):
      out[f"fold{int(f)}"].append(it)
  return out


class SplitBuilder(tfds_base.RadBuilder):
  """RadBuilder that lists items once, assigns them to splits and decodes them per split."""

  def _list_items(self, manual_dir) -> list[Item]:
    raise NotImplementedError

  def _examples(self, item: Item) -> Iterator[tuple[str, dict]]:
    raise NotImplementedError

  def _assign_splits(self, items: list[Item]) -> dict[str, list[Item]]:
    return assign_splits(items, getattr(self.builder_config, "folds", 0))

  def _split_generators(self, dl_manager):
    manual_dir = dl_manager.manual_dir  # raises with the instructions when missing or empty
    self._failed_keys = set()
    items = self._list_items(manual_dir)
    if not items:
      raise FileNotFoundError(
          f"No usable {self.name} files found in --manual_dir={manual_dir}.\n"
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    splits = self._assign_splits(items)
    empty = [name for name, split_items in splits.items() if not split_items]
    if empty:  # TFDS cannot write an empty split; only happens with a handful of groups
      logging.warning("%s: splits %s get no examples (%d items in %d groups) and are not written.",
                      self.name, empty, len(items), len({it.group for it in items}))
    return {name: self._generate_examples(split_items)
            for name, split_items in splits.items() if split_items}

  def source_error(self, path, reason: str) -> None:
    self._n_source_errors = getattr(self, "_n_source_errors", 0) + 1
    super().source_error(path, reason)

  def _generate_examples(self, items):
    for item in items:
      if item.key in self._failed_keys:  # already reported while writing another split
        continue
      n_errors = getattr(self, "_n_source_errors", 0)
      examples = list(self._examples(item))
      if getattr(self, "_n_source_errors", 0) > n_errors:  # skip mode: drop the whole item
        self._failed_keys.add(item.key)
        continue
      yield from examples

  def require(self, manual_dir, *relative: str):
    """manual_dir/relative..., or FileNotFoundError with the download instructions (wrong dir)."""
    return self.manual_path(types.SimpleNamespace(manual_dir=manual_dir), *relative)

  def read_image_or_error(self, path, channels: int) -> np.ndarray | None:
    """Decoded uint8 HxWx`channels` image, or None after `source_error` (corrupt / truncated)."""
    try:
      return to_channels(readers.read_image(path), channels)
    except readers.ReaderError as e:
      self.source_error(path, e.reason)
      return None


def rel(path, root) -> str:
  """`path` relative to `root`, with forward slashes (stable example keys and file names)."""
  return os.path.relpath(os.fspath(path), os.fspath(root)).replace(os.sep, "/")


def class_label(names: Sequence[str] | None) -> tfds.features.ClassLabel:
  """ClassLabel; names None = set later from the data (or read back from a built dataset)."""
  return tfds.features.ClassLabel(names=list(names)) if names else tfds.features.ClassLabel()
