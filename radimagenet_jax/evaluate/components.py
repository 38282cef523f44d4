"""Input checks and DeLong's structural components of binary scores (used by roc.py, clustered.py).

The structural components are computed with the mid-rank algorithm of Sun & Xu (IEEE Signal
Processing Letters 21(11), 2014), O((m + n) log(m + n)) rather than DeLong's O(m n) pairwise one.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as sps


def check_binary(labels, scores, name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
  """Validates a binary problem; returns (labels as a bool array, scores as float64 arrays).

  ``scores`` may be one 1-D array or several stacked as (k, N). Raises ValueError (one line) on a
  length mismatch, non-finite scores, labels outside {0, 1} or a single class.
  """
  y = np.asarray(labels)
  s = np.asarray(scores, dtype=np.float64)
  if y.ndim != 1:
    raise ValueError(f"labels must be 1-D; got shape {y.shape}.")
  if s.ndim not in (1, 2):
    raise ValueError(f"{name} must be 1-D; got shape {s.shape}.")
  if s.shape[-1] != y.shape[0]:
    raise ValueError(f"labels and {name} must have the same length; got {y.shape[0]} and "
                     f"{s.shape[-1]}.")
  bad = ~np.isfinite(s)
  if bad.any():
    first = int(np.argwhere(bad)[0][-1])
    raise ValueError(f"{name} has {int(bad.sum())} non-finite values (NaN or inf); the first at "
                     f"index {first}.")
  if y.dtype.kind not in "biuf":
    raise ValueError(f"labels must be 0 (control) or 1 (case); got values of type {y.dtype}.")
  outside = (y != 0) & (y != 1)
  if outside.any():
    i = int(np.argmax(outside))
    raise ValueError(f"labels must be 0 (control) or 1 (case); got {y[i].item()!r} at index "
                     f"{i}.")
  y = y == 1
  if y.size == 0:
    raise ValueError("needs both classes; got no examples.")
  if y.all() or not y.any():
    raise ValueError(f"needs both classes; got only label {int(y[0])} (n={y.size}).")
  return y, s


def structural_components(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """AUCs and DeLong's structural components of k score vectors, by mid-ranks (Sun & Xu 2014).

  ``scores``: (N,) or (k, N). Returns ``(auc (k,), v10 (k, m), v01 (k, n))`` where, for case i,
  ``v10[i]`` is the fraction of controls it outscores (ties 1/2), and for control j, ``v01[j]`` the
  fraction of cases that outscore it. Both average to the AUC.
  """
  y, s = check_binary(labels, scores)
  s = np.atleast_2d(s)
  x, z = s[:, y], s[:, ~y]                       # cases, controls
  m, n = x.shape[1], z.shape[1]
  # The mid-rank of a case among all scores, minus its mid-rank among the cases, counts the
  # controls below it (ties 1/2); likewise for a control and the cases.
  rank_all = sps.rankdata(np.concatenate([x, z], axis=1), method="average", axis=1)
  rank_x = sps.rankdata(x, method="average", axis=1)
  rank_z = sps.rankdata(z, method="average", axis=1)
  v10 = (rank_all[:, :m] - rank_x) / n
  v01 = 1.0 - (rank_all[:, m:] - rank_z) / m
  auc = v10.mean(axis=1)
  return auc, v10, v01
