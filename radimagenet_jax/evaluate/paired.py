"""Statistics for comparing two models on the same cases (scipy as the engine).

The paper compares RadImageNet and ImageNet models by the relative gain of a metric,
``(metric_A - metric_B) / metric_B``, and tests Dice differences with a paired t-test after a
Shapiro-Wilk normality check of the paired differences. ``paired_comparison`` reports all of it,
plus the Wilcoxon signed-rank test, the alternative when normality is rejected (both are always
reported; ``recommended_test`` names the one the check points to).

The tests assume independent pairs. When a patient has several images, pass ``patients=``: the
values are first averaged per patient (the unit of independence), and the tests run on those means;
the output says so (``unit``, ``n`` patients, ``n_images``).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps


def _float(x) -> float | None:
  x = float(x)
  return None if math.isnan(x) else x


def describe(values) -> dict:
  """n, mean and sample SD (ddof=1; None for fewer than two values)."""
  v = np.asarray(values, np.float64)
  n = int(v.size)
  return {"n": n, "mean": _float(v.mean()) if n else None,
          "sd": _float(v.std(ddof=1)) if n > 1 else None}


def relative_gain(a: float, b: float) -> float | None:
  """(a - b) / b, the paper's "gain" of model A over baseline B (None when b == 0)."""
  return None if b == 0 else (float(a) - float(b)) / float(b)


def per_patient(values, patients) -> tuple[np.ndarray, list]:
  """(mean of ``values`` per patient, the patients in first-seen order)."""
  v = np.asarray(values, np.float64)
  p = [str(x) for x in patients]
  if len(p) != v.size:
    raise ValueError(f"patients must have one entry per value; got {len(p)} for {v.size}.")
  order = list(dict.fromkeys(p))
  where = {k: i for i, k in enumerate(order)}
  idx = np.array([where[k] for k in p], np.int64)
  sums = np.bincount(idx, weights=v, minlength=len(order))
  return sums / np.bincount(idx, minlength=len(order)), order


def paired_comparison(a, b, alpha: float = 0.05, names=("a", "b"), patients=None) -> dict:
  """Compares paired per-case values ``a`` and ``b`` (e.g. Dice of two models on the same images).

  Returns a JSON-ready dict: per-model describe(), the differences a - b (mean, SD), Shapiro-Wilk
  on the differences (n >= 3), the paired t-test (scipy.stats.ttest_rel), the Wilcoxon signed-rank
  test (scipy.stats.wilcoxon, two-sided) and the relative gain of the means. With ``patients``
  (one id per value) everything is computed on the per-patient means (``unit`` "patient").
  """
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"paired values must be two 1-D arrays of equal length; got shapes "
                     f"{a.shape} and {b.shape}.")
  n_images = int(a.size)
  if patients is not None:
    a, _ = per_patient(a, patients)
    b, _ = per_patient(b, patients)
  d = a - b
  out = {"n": int(a.size), "unit": "image" if patients is None else "patient",
         "n_images": n_images, names[0]: describe(a), names[1]: describe(b),
         "difference": describe(d), "alpha": alpha,
         "relative_gain": relative_gain(a.mean(), b.mean()) if a.size else None,
         "shapiro": None, "ttest_rel": None, "wilcoxon": None}
  constant = a.size > 0 and np.all(d == d[0])
  if a.size >= 3 and not constant:
    w, p = sps.shapiro(d)
    out["shapiro"] = {"statistic": _float(w), "pvalue": _float(p),
                      "normality_rejected": bool(p < alpha)}
  if a.size >= 2 and not constant:
    t = sps.ttest_rel(a, b)
    out["ttest_rel"] = {"statistic": _float(t.statistic), "pvalue": _float(t.pvalue),
                        "df": int(a.size - 1)}
  if a.size >= 1 and np.any(d != 0):
    wx = sps.wilcoxon(a, b)
    out["wilcoxon"] = {"statistic": _float(wx.statistic), "pvalue": _float(wx.pvalue)}
  rejected = out["shapiro"] is not None and out["shapiro"]["normality_rejected"]
  out["recommended_test"] = "wilcoxon" if rejected else "ttest_rel"
  return out
