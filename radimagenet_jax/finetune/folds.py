"""Train / validation / test sets of a fine-tuning run: the TFDS splits, or a cross-validation fold.

Datasets built with folds (tfds_builders/common.py, ``RadConfig.folds``) have the splits
``fold0``..``fold{k-1}``, a grouped stratified partition of all items. For ``fold=K``:

- test: the split ``foldK``;
- train + validation: the other folds; the validation set is carved out of them BY PATIENT,
  stratified by label, about ``val_fraction`` of their examples (deterministic in ``seed``).

Data sets built with the official repository's folds (tfds_builders/official) store each image
once, in the split of its official test fold, with its set and CSV row in every fold
(``OFFICIAL_SETS_KEY``, ``OFFICIAL_ROWS_KEY``). With ``official=True`` (protocol=paper) fold K's
sets are then exactly the official CSVs of fold K+1, in CSV row order; nothing is re-drawn, and
patients found on two sides are reported (``overlap``), not fixed. With ``official=False``
(protocol=corrected) the same images get patient-grouped stratified folds and a carved-out
validation set as above.

With ``fold=None`` the sets are the dataset's own ``train`` / ``validation`` / ``test`` splits.
Records are read without decoding images; a set is a list of ``Example(split, index, id, group,
label)`` (a reference into a TFDS split), and ``make_sources`` turns the sets into grain-loadable
random-access sources:

    sets = folds.fold_splits("image_folder", data_dir, fold=0, val_fraction=0.1)
    sources = folds.make_sources(sets, "image_folder", data_dir)   # {'train': Subset, ...}
    json.dump(folds.audit(sets), open(run_dir / "splits.json", "w"))

No patient is in two of the sets (checked); a test or training set holding a single class is an
error. Example ids: the record's ``source_id``, else its ``file_name`` (with ``#<slice_index>`` when
records have one), else ``<split>:<index>``; ids that still repeat get ``@<split>:<index>``.
"""
from __future__ import annotations

import bisect
import collections
import os
import re
from typing import Any, NamedTuple, Sequence

import numpy as np

from radimagenet_jax.data import tfds_source
from radimagenet_jax.data import splits as splits_lib

SETS = ("train", "validation", "test")
GROUP_KEY, LABEL_KEY = "patient_id", "label"
OFFICIAL_SETS_KEY, OFFICIAL_ROWS_KEY = "official_sets", "official_rows"
_FOLD = re.compile(r"fold(\d+)")
_CHUNK = 512  # records read at once (encoded images included: keeps memory bounded)


class Example(NamedTuple):
  """One example by reference: record ``index`` of TFDS split ``split``."""
  split: str
  index: int
  id: str
  group: str
  label: int
  official: str = ""  # official folds: "<set>:<row>" per fold, comma-separated ("" otherwise)


class Subset(splits_lib.Subset):
  """A random-access view of some records of ``source`` (in the given order); a grain data source.
  Forwards ``dataset_info`` (``tfds_source.class_names``) when the source has one."""

  @property
  def dataset_info(self):
    return getattr(self.source, "dataset_info", None)


class ConcatSource:
  """Several random-access sources as one (indices run through them in order)."""

  def __init__(self, sources: Sequence[Any]):
    self.sources = list(sources)
    self.offsets = np.cumsum([0] + [len(s) for s in self.sources]).tolist()

  def __len__(self) -> int:
    return self.offsets[-1]

  def __getitem__(self, index: int):
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for a ConcatSource of {len(self)} records")
    i = bisect.bisect_right(self.offsets, index) - 1
    return self.sources[i][index - self.offsets[i]]

  @property
  def dataset_info(self):
    return getattr(self.sources[0], "dataset_info", None) if self.sources else None

  def __repr__(self) -> str:
    return f"ConcatSource({len(self)} records of {len(self.sources)} sources)"


def concat_sources(sources: Sequence[Any]) -> ConcatSource:
  return ConcatSource(sources)


def _text(value) -> str:
  return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)


def read_examples(dataset: str, split: str, data_dir=None) -> list[Example]:
  """Every record of a TFDS split as an Example, without decoding images."""
  source = tfds_source.open_source(dataset, split, data_dir, decode=False)
  n = len(source)
  if n == 0:
    return []
  keys = set(source[0])
  for key in (GROUP_KEY, LABEL_KEY):
    if key not in keys:
      raise ValueError(f"{dataset} split {split!r}: records have no {key!r}; keys: {sorted(keys)}")
  getitems = getattr(source, "__getitems__", None)
  out = []
  for start in range(0, n, _CHUNK):
    idx = list(range(start, min(n, start + _CHUNK)))
    records = getitems(idx) if getitems else [source[i] for i in idx]
    for i, r in zip(idx, records):
      if "source_id" in r:
        ex_id = _text(r["source_id"])
      elif "file_name" in r:
        ex_id = _text(r["file_name"])
        ex_id += f"#{int(r['slice_index'])}" if "slice_index" in r else ""
      else:
        ex_id = f"{split}:{i}"
      official = ""
      if OFFICIAL_SETS_KEY in r:
        official = ",".join(f"{a}:{b}" for a, b in zip(_text(r[OFFICIAL_SETS_KEY]).split(","),
                                                       _text(r[OFFICIAL_ROWS_KEY]).split(",")))
      out.append(Example(split, i, ex_id, _text(r[GROUP_KEY]), int(r[LABEL_KEY]), official))
  return out


def available_splits(dataset: str, data_dir=None) -> list[str]:
  """The split names of a built dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  resolved = (os.path.expanduser(os.fspath(data_dir)) if data_dir
              else tfds_source._default_data_dir())  # pylint: disable=protected-access
  try:
    builder = tfds.builder(dataset, data_dir=resolved)
    prepared = builder.is_prepared()
  except Exception:  # pylint: disable=broad-except
    prepared = False
  if not prepared:  # open_source raises its FileNotFoundError with the build command
    tfds_source.open_source(dataset, "train", data_dir, decode=False)
    raise FileNotFoundError(f"dataset {dataset!r} is not built in data_dir {resolved!r}")
  return list(builder.info.splits)


def carve_validation(groups: Sequence[Any], labels: Sequence[int], fraction: float,
                     seed: int = 0) -> np.ndarray:
  """True for the examples of the validation set: whole groups, about ``fraction`` of the examples
  of every label (greedy, largest groups first, random order among equal sizes).

  A label with at least two groups has at least one in each set.
  """
  if not 0 <= fraction < 1:
    raise ValueError(f"val_fraction={fraction}: expected 0 <= val_fraction < 1")
  keys = np.asarray([_text(g) for g in groups])
  if fraction == 0 or len(keys) == 0:
    return np.zeros(len(keys), bool)
  uniq, inverse = np.unique(keys, return_inverse=True)
  classes, label_index = np.unique(np.asarray(labels), return_inverse=True)
  comp = np.zeros((len(uniq), len(classes)))
  np.add.at(comp, (inverse, label_index), 1)
  target = fraction * comp.sum(0)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(uniq))
  order = order[np.argsort(-comp[order].sum(1), kind="stable")]
  chosen = np.zeros(len(uniq), bool)
  filled = np.zeros(len(classes))
  for g in order:  # take a group when it brings every label's count closer to its target
    if np.sum((target - filled - comp[g]) ** 2) < np.sum((target - filled) ** 2):
      chosen[g] = True
      filled += comp[g]
  for c in range(len(classes)):
    left = [g for g in order[::-1] if not chosen[g] and comp[g, c] > 0]  # smallest first
    if filled[c] == 0 and len(left) >= 2:
      chosen[left[0]] = True
      filled += comp[left[0]]
  return chosen[inverse]


def check_disjoint(sets: dict[str, Sequence[Example]]) -> None:
  """ValueError naming a patient found in two of the sets."""
  seen: dict[str, str] = {}
  for name, examples in sets.items():
    for group in sorted({e.group for e in examples}):
      if seen.setdefault(group, name) != name:
        raise ValueError(f"patient {group!r} is in both the {seen[group]} and the {name} set; "
                         "expected patient-disjoint sets")


def official_sets(examples: Sequence[Example], fold: int) -> dict[str, list[Example]]:
  """The official train / validation / test of fold index ``fold`` (0-based: the CSVs' fold
  ``fold + 1``), each in its CSV's row order."""
  out: dict[str, list[tuple[int, Example]]] = {name: [] for name in SETS}
  for e in examples:
    name, row = e.official.split(",")[fold].split(":")
    if name in out:
      out[name].append((int(row), e))
  return {name: [e for _, e in sorted(rows, key=lambda t: t[0])] for name, rows in out.items()}


def overlap(sets: dict[str, Sequence[Example]]) -> dict[str, int]:
  """{'<a>/<b>': number of patients with images in both set a and set b} for each pair."""
  groups = {name: {e.group for e in examples} for name, examples in sets.items()}
  names = list(sets)
  return {f"{a}/{b}": len(groups[a] & groups[b])
          for i, a in enumerate(names) for b in names[i + 1:]}


def _regrouped(examples: Sequence[Example], k: int, seed: int) -> list[list[Example]]:
  """Patient-grouped stratified k folds of ``examples`` (the corrected protocol's folds)."""
  fold_of = splits_lib.group_kfold([e.group for e in examples], [e.label for e in examples],
                                   k=k, seed=seed)
  return [[e for e, f in zip(examples, fold_of) if int(f) == i] for i in range(k)]


def fold_splits(dataset: str, data_dir=None, fold: int | None = None,
                num_folds: int | None = None, val_fraction: float = 0.1,
                seed: int = 0, official: bool = True) -> dict[str, list[Example]]:
  """{'train', 'validation', 'test'} -> list of Example (see the module docstring).

  fold: None (the dataset's own train/validation/test splits) or the held-out fold index.
  num_folds: the number of fold splits expected (None: as many as the dataset has).
  val_fraction, seed: the validation carve-out of the other folds (ignored when fold is None).
  official: for a data set built with official folds, use them as given (True) or re-draw
    patient-grouped folds over its images (False); ignored for other data sets.
  """
  if fold is None:
    sets = {name: read_examples(dataset, name, data_dir) for name in SETS}
  else:
    names = available_splits(dataset, data_dir)
    fold_names = sorted((s for s in names if _FOLD.fullmatch(s)), key=lambda s: int(s[4:]))
    if not fold_names:
      raise ValueError(f"dataset {dataset!r} has no fold splits (its splits: {names}); expected "
                       "fold0..fold<k-1>: build it with folds (RadConfig.folds), or use fold=None")
    k = len(fold_names)
    if fold_names != [f"fold{i}" for i in range(k)] or (num_folds is not None and num_folds != k):
      raise ValueError(f"dataset {dataset!r} has fold splits {fold_names}; expected fold0.."
                       f"fold{(num_folds or k) - 1} (num_folds={num_folds})")
    if not isinstance(fold, (int, np.integer)) or not 0 <= fold < k:
      raise ValueError(f"fold={fold!r}: expected an integer in [0, {k}) for dataset {dataset!r}")
    by_fold = [read_examples(dataset, f"fold{i}", data_dir) for i in range(k)]
    if by_fold[0] and by_fold[0][0].official:
      if official:  # the official CSVs as given: patient overlap is reported, not fixed
        sets = official_sets([e for f in by_fold for e in f], fold)
        _check_classes(sets, f"dataset {dataset!r}, official fold {fold + 1}")
        return sets
      by_fold = _regrouped([e for f in by_fold for e in f], k, seed)
    test = by_fold[fold]
    pool = [e for i in range(k) if i != fold for e in by_fold[i]]
    val = carve_validation([e.group for e in pool], [e.label for e in pool], val_fraction, seed)
    sets = {"train": [e for e, v in zip(pool, val) if not v],
            "validation": [e for e, v in zip(pool, val) if v], "test": test}
  _check_classes(sets, f"dataset {dataset!r}" + ("" if fold is None else f", test fold fold{fold}"))
  check_disjoint(sets)
  return _unique_ids(sets)


def _check_classes(sets: dict[str, list[Example]], where: str) -> None:
  for name in ("train", "test"):
    labels = sorted({e.label for e in sets[name]})
    if len(labels) < 2:
      raise ValueError(f"{where}: the {name} set holds {len(sets[name])} examples of "
                       f"{len(labels)} class(es) {labels}; expected at least two classes")


def _unique_ids(sets: dict[str, list[Example]]) -> dict[str, list[Example]]:
  counts = collections.Counter(e.id for examples in sets.values() for e in examples)
  if all(c == 1 for c in counts.values()):
    return sets
  return {name: [e._replace(id=f"{e.id}@{e.split}:{e.index}") if counts[e.id] > 1 else e
                 for e in examples] for name, examples in sets.items()}


def audit(sets: dict[str, Sequence[Example]]) -> dict[str, list[str]]:
  """{set name: example ids, in set order}, to save with a run (splits.json)."""
  return {name: [e.id for e in examples] for name, examples in sets.items()}


def summary(sets: dict[str, Sequence[Example]]) -> dict[str, dict]:
  """{set name: {'examples', 'patients', 'labels': {label: count}}}, for logs."""
  return {name: {"examples": len(examples), "patients": len({e.group for e in examples}),
                 "labels": dict(sorted(collections.Counter(e.label for e in examples).items()))}
          for name, examples in sets.items()}


def make_sources(sets: dict[str, Sequence[Example]], dataset: str, data_dir=None,
                 decode: bool = True) -> dict[str, Subset]:
  """{set name: Subset} over one ConcatSource of the TFDS splits the sets refer to (each split
  opened once with ``tfds_source.open_source(..., decode=decode)``)."""
  split_names = sorted({e.split for examples in sets.values() for e in examples})
  opened = [tfds_source.open_source(dataset, s, data_dir, decode=decode) for s in split_names]
  combined = ConcatSource(opened)
  offset = dict(zip(split_names, combined.offsets))
  return {name: Subset(combined, [offset[e.split] + e.index for e in examples])
          for name, examples in sets.items()}
