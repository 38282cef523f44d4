"""AUC inference when a patient contributes several images: Obuchowski's method and a bootstrap.

Images of one patient are not independent, so treating them as such (DeLong) makes CIs too narrow
and P values too small. Two patient-level methods:

* ``obuchowski``: the nonparametric clustered-data method of Obuchowski (Biometrics 53, 1997,
  567-578), deterministic. With ``X_i`` the sum over patient i's cases of the structural component
  V10 (the fraction of all controls a case outscores, ties 1/2), ``Y_i`` the sum over its controls
  of V01, ``m_i`` / ``n_i`` its numbers of cases / controls, ``M`` / ``N`` their totals, ``I`` the
  number of patients and ``I10`` / ``I01`` those with at least one case / control::

    S10 = I10 / ((I10 - 1) M) * sum_i (X_i - m_i A)^2
    S01 = I01 / ((I01 - 1) N) * sum_i (Y_i - n_i A)^2
    S11 = I / (I - 1) * sum_i (X_i - m_i A)(Y_i - n_i A)
    var(A) = S10 / M + S01 / N + 2 S11 / (M N)

  and for two scores on the same images the cross terms likewise (``S11`` symmetrised). With one
  image per patient ``S11 = 0`` and the sums reduce to DeLong's sample variances: the same figures.
* ``bootstrap``: patients drawn with replacement (all of a drawn patient's images enter, as many
  times as the patient is drawn), ``resamples`` times from a seeded generator; the SE is the SD of
  the resampled AUCs (ddof=1), the CI their percentile interval, the paired test pROC's bootstrap
  ``roc.test``: ``z = D / sd(D*)``, two-sided normal. Resamples with a single class are drawn
  again, so every one counts.
"""
from __future__ import annotations

import numpy as np

from radimagenet_jax.evaluate.components import check_binary, structural_components

METHODS = ("delong", "obuchowski", "bootstrap")
DEFAULT_RESAMPLES = 2000


def patient_index(patients, n: int) -> tuple[np.ndarray, int]:
  """(index of each image's patient 0..I-1, I). Raises a one-line ValueError on a bad list."""
  p = list(patients)
  if len(p) != n:
    raise ValueError(f"patients must have one entry per image; got {len(p)} for {n} images.")
  blank = [i for i, v in enumerate(p) if v is None or str(v).strip() == ""]
  if blank:
    raise ValueError(f"patients has {len(blank)} blank ids; the first at index {blank[0]}.")
  _, index = np.unique(np.asarray([str(v) for v in p]), return_inverse=True)
  index = index.reshape(-1)
  return index.astype(np.int64), int(index.max()) + 1 if index.size else 0


def method_for(patients, n: int, method: str | None) -> str:
  """The method to use: ``method`` if given; else obuchowski when a patient has several images,
  delong otherwise (images are patients)."""
  if method is not None:
    if method not in METHODS:
      raise ValueError(f"method={method!r}; expected one of {', '.join(METHODS)}.")
    if method != "delong" and patients is None:
      raise ValueError(f"method={method!r} needs patients= (one patient id per image).")
    return method
  if patients is None:
    return "delong"
  return "obuchowski" if patient_index(patients, n)[1] < n else "delong"


def cluster_sums(labels, scores, patients):
  """Per patient sums of the structural components of k score vectors.

  Returns ``(auc (k,), X (k, I), Y (k, I), m (I,), n (I,))``: X the sum of V10 over the patient's
  cases, Y of V01 over its controls, m / n its numbers of cases / controls.
  """
  y, s = check_binary(labels, scores)
  index, count = patient_index(patients, y.size)
  auc, v10, v01 = structural_components(y, s)
  k = v10.shape[0]
  x_sum, y_sum = np.zeros((k, count)), np.zeros((k, count))
  for r in range(k):
    x_sum[r] = np.bincount(index[y], weights=v10[r], minlength=count)
    y_sum[r] = np.bincount(index[~y], weights=v01[r], minlength=count)
  m = np.bincount(index[y], minlength=count)
  n = np.bincount(index[~y], minlength=count)
  return auc, x_sum, y_sum, m, n


def obuchowski_covariance(labels, scores, patients):
  """(auc (k,), covariance (k, k) or None, number of patients) by Obuchowski (1997).

  None when fewer than two patients have a case, or fewer than two a control (no variance)."""
  auc, x_sum, y_sum, m, n = cluster_sums(labels, scores, patients)
  big_m, big_n, count = int(m.sum()), int(n.sum()), m.size
  i10, i01 = int((m > 0).sum()), int((n > 0).sum())
  if i10 < 2 or i01 < 2:
    return auc, None, count
  dx = x_sum - m[None, :] * auc[:, None]
  dy = y_sum - n[None, :] * auc[:, None]
  s10 = i10 / ((i10 - 1) * big_m) * dx @ dx.T
  s01 = i01 / ((i01 - 1) * big_n) * dy @ dy.T
  s11 = count / (count - 1) * dx @ dy.T
  cov = s10 / big_m + s01 / big_n + (s11 + s11.T) / (big_m * big_n)
  return auc, cov, count


def _weighted_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
  """AUCs of score ``s`` (N,) under B rows of image weights ``w`` (B, N), ties 1/2.

  A case of weight w_i and a control of weight w_j count w_i w_j pairs (a patient drawn twice
  enters twice): the Mann-Whitney statistic of the resampled data, without building it."""
  order = np.argsort(s, kind="mergesort")
  s, y, w = s[order], y[order], w[:, order]
  start = np.r_[True, s[1:] != s[:-1]]
  first = np.maximum.accumulate(np.where(start, np.arange(s.size), 0))
  last = np.minimum.accumulate(np.where(np.r_[start[1:], True], np.arange(s.size),
                                        s.size - 1)[::-1])[::-1]
  wc = np.where(~y[None, :], w, 0.0)
  cum = np.cumsum(wc, axis=1)
  below = np.where(first > 0, cum[:, np.maximum(first - 1, 0)], 0.0)
  tie = cum[:, last] - below
  wx = np.where(y[None, :], w, 0.0)
  num = np.sum(wx * (below + 0.5 * tie), axis=1)
  return num / (wx.sum(axis=1) * wc.sum(axis=1))


def patient_draws(index: np.ndarray, count: int, labels: np.ndarray, resamples: int,
                  seed: int) -> np.ndarray:
  """(resamples, I): how often each patient is drawn in each resample.

  Patients are drawn with replacement from ``np.random.default_rng(seed)``; a resample whose
  images hold a single class is drawn again (so that every AUC is defined)."""
  if int(resamples) < 1:
    raise ValueError(f"resamples={resamples}; expected a positive integer.")
  rng = np.random.default_rng(int(seed))
  y = np.asarray(labels, bool)
  has_case = np.bincount(index[y], minlength=count) > 0
  has_ctrl = np.bincount(index[~y], minlength=count) > 0
  if not has_case.any() or not has_ctrl.any():
    raise ValueError("a patient-level bootstrap needs both classes; got "
                     f"{int(y.sum())} cases and {int((~y).sum())} controls.")
  rows = []
  while sum(len(r) for r in rows) < resamples:
    draw = rng.integers(0, count, size=(resamples, count))
    ok = has_case[draw].any(axis=1) & has_ctrl[draw].any(axis=1)
    rows.append(draw[ok])
  draw = np.concatenate(rows)[:resamples]
  counts = np.zeros((resamples, count))
  np.add.at(counts, (np.arange(resamples)[:, None], draw), 1.0)
  return counts


def resampled_aucs(labels: np.ndarray, scores: np.ndarray, index: np.ndarray,
                   counts: np.ndarray, chunk: int = 256) -> np.ndarray:
  """(B, k) AUCs of k score rows (k, N) under B patient draws ``counts`` (B, I); ``labels`` bool.

  Image weights are built ``chunk`` resamples at a time, so memory stays O(chunk * N)."""
  out = np.empty((counts.shape[0], scores.shape[0]))
  for lo in range(0, counts.shape[0], chunk):
    w = counts[lo:lo + chunk][:, index]
    for r in range(scores.shape[0]):
      out[lo:lo + chunk, r] = _weighted_auc(labels, scores[r], w)
  return out


def bootstrap_aucs(labels, scores, patients, resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
  """(auc (k,), resampled AUCs (resamples, k), number of patients): a patient-level bootstrap."""
  y, s = check_binary(labels, scores)
  s = np.atleast_2d(s)
  index, count = patient_index(patients, y.size)
  counts = patient_draws(index, count, y, int(resamples), int(seed))
  auc = structural_components(y, s)[0]
  return auc, resampled_aucs(y, s, index, counts), count


def obuchowski_difference_variance(labels, scores, patients) -> float:
  """var(A_0 - A_1) of two score rows by Obuchowski, from the differences of the patient sums.

  Equal to V0 + V1 - 2 Cov, but exactly 0 (not a rounding residue) when the sums coincide."""
  auc, x_sum, y_sum, m, n = cluster_sums(labels, scores, patients)
  big_m, big_n, count = int(m.sum()), int(n.sum()), m.size
  i10, i01 = int((m > 0).sum()), int((n > 0).sum())
  dx = (x_sum[0] - x_sum[1]) - m * (auc[0] - auc[1])
  dy = (y_sum[0] - y_sum[1]) - n * (auc[0] - auc[1])
  s10 = i10 / ((i10 - 1) * big_m) * dx @ dx
  s01 = i01 / ((i01 - 1) * big_n) * dy @ dy
  s11 = count / (count - 1) * dx @ dy
  return float(s10 / big_m + s01 / big_n + 2 * s11 / (big_m * big_n))
