"""Patient-grouped splits: 75/10/15 train/validation/test and stratified grouped k-fold.

The paper splits every dataset by patient (docs/fidelity.md "Splits 75/10/15 by patient"; thyroid, breast,
ACL and meniscus use 5-fold cross-validation), so no patient's images are on both sides. Builders use
these functions to make their TFDS splits; users can also split any source at pipeline time:

    from radimagenet_jax.data import splits, tfds_source
    source = tfds_source.open_source("busi", "train", data_dir)
    ids = splits.read_key(source, "patient_id")
    names = splits.group_split(ids)                     # 'train' / 'validation' / 'test' per example
    train = splits.Subset(source, np.flatnonzero(names == "train"))
    folds = splits.group_kfold(ids, splits.read_key(source, "label"), k=5)
    train_0 = splits.Subset(source, np.flatnonzero(folds != 0))   # fold 0 is the held-out set
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

SPLIT_NAMES = ("train", "validation", "test")


def group_split(patient_ids: Sequence[Any], fractions: Sequence[float] = (0.75, 0.10, 0.15),
                seed: int = 0, names: Sequence[str] = SPLIT_NAMES) -> np.ndarray:
  """Assigns each example a split name so that no patient is in two splits.

  Patients are shuffled with `seed`, then taken largest first (random order among equal sizes) and
  each goes to the split that is furthest below its share of the EXAMPLES, so the split sizes are
  close to `fractions` by example count (exact up to the size of one patient's group).

  Args:
    patient_ids: one id per example (any hashable values: str, bytes, int).
    fractions: one fraction per split name, summing to 1.
    seed: shuffling seed; the same ids and seed give the same split.
    names: the split names.

  Returns:
    A numpy array of split names (dtype str), one per example.
  """
  fractions = np.asarray(fractions, dtype=np.float64)
  if len(fractions) != len(names):
    raise ValueError(f"got {len(fractions)} fractions {fractions.tolist()} for {len(names)} split "
                     f"names {list(names)}")
  if np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
    raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions.tolist()}")
  groups, inverse, counts = np.unique(_as_keys(patient_ids), return_inverse=True,
                                      return_counts=True)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(groups))
  order = order[np.argsort(-counts[order], kind="stable")]  # largest first, random among ties
  targets = fractions * len(inverse)
  filled = np.zeros(len(names))
  assignment = np.empty(len(groups), dtype=np.int64)
  for g in order:
    # The split with the largest remaining deficit takes the group (ties: the earlier name).
    best = int(np.argmax(targets - filled))
    assignment[g] = best
    filled[best] += counts[g]
  return np.asarray(names)[assignment[inverse]]


def group_kfold(patient_ids: Sequence[Any], labels: Sequence[Any], k: int = 5,
                seed: int = 0) -> np.ndarray:
  """Stratified grouped k-fold: a fold index in [0, k) per example; a patient is in one fold only.

  Folds keep the label proportions as close as the groups allow
  (sklearn.model_selection.StratifiedGroupKFold with shuffle). For fold f, train on `folds != f`
  and evaluate on `folds == f`.
  """
  from sklearn.model_selection import StratifiedGroupKFold  # pylint: disable=g-import-not-at-top
  keys = _as_keys(patient_ids)
  labels = np.asarray(labels)
  if len(labels) != len(keys):
    raise ValueError(f"got {len(keys)} patient ids but {len(labels)} labels")
  n_groups = len(np.unique(keys))
  if not 2 <= k <= n_groups:
    raise ValueError(f"k={k} folds needs 2 <= k <= number of patients ({n_groups})")
  folds = np.full(len(keys), -1, dtype=np.int64)
  splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
  _, group_index = np.unique(keys, return_inverse=True)
  for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(keys)), labels, group_index)):
    folds[held_out] = fold
  return folds


def _as_keys(patient_ids) -> np.ndarray:
  """Ids as a 1-D numpy array that np.unique can sort (bytes decoded, mixed types as str)."""
  ids = [i.decode() if isinstance(i, (bytes, np.bytes_)) else i for i in patient_ids]
  if not ids:
    raise ValueError("no patient ids given (empty dataset?)")
  try:
    return np.asarray(ids) if len({type(i) for i in ids}) == 1 else np.asarray(ids, dtype=str)
  except (TypeError, ValueError):
    return np.asarray([str(i) for i in ids])


def read_key(source: Sequence[dict], key: str) -> np.ndarray:
  """Reads one feature of every record of a source (e.g. 'patient_id', 'label').

  Reading a TFDS source also decodes its images; open it with `decode=False` to make this fast.
  """
  if len(source) == 0:
    raise ValueError("the source is empty")
  if key not in source[0]:
    raise KeyError(f"records have no {key!r}; keys: {sorted(source[0])}")
  getitems = getattr(source, "__getitems__", None)
  records = getitems(list(range(len(source)))) if getitems else [source[i] for i in range(len(source))]
  return np.asarray([r[key] for r in records])


class Subset:
  """A random-access view of some records of a source (in the given order), for make_loader."""

  def __init__(self, source: Sequence[Any], indices: Sequence[int]):
    self.source = source
    self.indices = np.asarray(indices, dtype=np.int64)
    if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(source)):
      raise IndexError(f"subset indices must be in [0, {len(source)}), got range "
                       f"[{self.indices.min()}, {self.indices.max()}]")

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[int(self.indices[index])]

  def __repr__(self) -> str:
    return f"Subset({len(self)} of {len(self.source)} records of {self.source!r})"
