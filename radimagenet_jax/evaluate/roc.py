"""ROC analysis of a binary score: the AUC with DeLong's variance and CI; the paired DeLong test.

The numbers follow R's pROC 1.18 (the paper's tool; docs/fidelity.md "Evaluation"):

* the AUC is the Mann-Whitney statistic, a case/control tie counting one half;
* DeLong's variance is ``S10 / m + S01 / n``, with ``S10`` and ``S01`` the sample variances
  (ddof=1) of the structural components over the ``m`` cases and ``n`` controls;
* ``delong_ci`` is ``AUC +- z((1 + level) / 2) * SE`` clipped to [0, 1], as
  ``ci.auc(method="delong")``;
* ``delong_test`` is ``z = (A1 - A2) / sqrt(V1 + V2 - 2 Cov)``, two-sided, as
  ``roc.test(method="delong", paired=TRUE)``.

Conventions: labels are 0 (control) and 1 (case); a higher score means "more likely a case".
There is NO automatic direction flipping. pROC, by default, picks the direction from the medians
of the two groups and so can report ``1 - AUC`` of what is computed here; to get this module's
numbers in R, pass ``levels = c(0, 1)`` and ``direction = "<"`` (controls < cases) to ``roc()``.

The structural components (components.py) are computed with the mid-rank algorithm of Sun & Xu
(IEEE Signal Processing Letters 21(11), 2014), O((m + n) log(m + n)) rather than DeLong's O(m n)
pairwise one. With ``patients=``, the patient-level methods of clustered.py.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from radimagenet_jax.evaluate import clustered
from radimagenet_jax.evaluate.components import check_binary, structural_components


def _covariance(v10: np.ndarray, v01: np.ndarray) -> np.ndarray | None:
  """DeLong's (k, k) covariance S10/m + S01/n; None when m or n < 2 (ddof=1 is undefined)."""
  m, n = v10.shape[1], v01.shape[1]
  if m < 2 or n < 2:
    return None
  return np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n


def roc_auc(labels, scores) -> float:
  """The area under the ROC curve (ties between a case and a control count 1/2)."""
  return float(structural_components(labels, scores)[0][0])


def _ci_bounds(auc: float, se: float, level: float) -> tuple[float, float]:
  half = float(sps.norm.ppf((1.0 + level) / 2.0)) * se
  return max(0.0, auc - half), min(1.0, auc + half)


def _z_p(diff: float, se: float) -> tuple[float, float]:
  """Two-sided normal test of ``diff`` with standard error ``se`` (se 0: p 1 or 0)."""
  if se > 0:
    z = diff / se
    return float(z), float(2.0 * sps.norm.sf(abs(z)))
  if diff == 0:
    return 0.0, 1.0
  return math.copysign(math.inf, diff), 0.0


def delong_ci(labels, scores, level: float = 0.95, patients=None, method: str | None = None,
              resamples: int = 2000, seed: int = 0) -> dict:
  """AUC with its standard error and confidence interval; DeLong's (pROC ``ci.auc``) by default.

  ``patients`` (one id per image): when a patient has several images the default ``method`` is
  ``"obuchowski"`` (clustered.py: the patient is the unit of independence); with one image per
  patient it is ``"delong"``, the same figures. ``method="bootstrap"`` resamples patients
  (``resamples`` times, ``seed``) and gives the percentile interval. Returns ``{"auc", "se",
  "ci_low", "ci_high", "level", "n_cases", "n_controls", "method", "n_patients"}`` (Python floats
  and ints; ``n_patients`` None without ``patients``). The DeLong / Obuchowski interval is ``auc +-
  z((1 + level) / 2) * se`` clipped to [0, 1]; ``se`` and the interval are None when there are
  fewer than two cases or two controls (patients with one, for the clustered methods).
  """
  if not 0.0 < float(level) < 1.0:
    raise ValueError(f"level must be in (0, 1); got {level!r}.")
  y, s = check_binary(labels, scores)
  method = clustered.method_for(patients, y.size, method)
  out = {"auc": None, "se": None, "ci_low": None, "ci_high": None, "level": float(level),
         "n_cases": int(y.sum()), "n_controls": int((~y).sum()), "method": method,
         "n_patients": None if patients is None else clustered.patient_index(patients, y.size)[1]}
  if method == "delong":
    auc, v10, v01 = structural_components(y, s)
    cov = _covariance(v10, v01)
  elif method == "obuchowski":
    auc, cov, _ = clustered.obuchowski_covariance(y, s, patients)
  else:
    auc, boot, _ = clustered.bootstrap_aucs(y, s, patients, resamples, seed)
    lo, hi = np.quantile(boot[:, 0], [(1 - level) / 2, (1 + level) / 2])
    return dict(out, auc=float(auc[0]), se=float(np.std(boot[:, 0], ddof=1)), ci_low=float(lo),
                ci_high=float(hi), resamples=int(resamples), seed=int(seed))
  out["auc"] = float(auc[0])
  if cov is not None:
    se = math.sqrt(max(float(cov[0, 0]), 0.0))
    lo, hi = _ci_bounds(out["auc"], se, level)
    out.update(se=se, ci_low=lo, ci_high=hi)
  return out


def delong_test(labels, scores_a, scores_b, patients=None, method: str | None = None,
                resamples: int = 2000, seed: int = 0) -> dict:
  """Paired two-sided test of two scores on the same examples; DeLong's (pROC ``roc.test``).

  ``patients``, ``method``, ``resamples`` and ``seed`` as in ``delong_ci``: Obuchowski's clustered
  covariance when a patient has several images, or a paired patient-level bootstrap (pROC's
  bootstrap ``roc.test``: ``z = D / sd(D*)``). Returns ``{"auc_a", "auc_b", "difference", "var_a",
  "var_b", "cov", "se_diff", "z", "p_value", "n_cases", "n_controls", "method", "n_patients"}``
  with ``z = (auc_a - auc_b) / se_diff``. When the variance of the difference is 0 (e.g. identical
  scores, or any two scores whose per-example structural components differ by a constant): ``z =
  0, p = 1`` if the AUCs are equal, else ``z = +-inf, p = 0``. With fewer than two cases or
  controls (patients with one, for the clustered methods), the variances, ``z`` and ``p_value``
  are None.
  """
  y, a = check_binary(labels, scores_a, "scores_a")
  _, b = check_binary(labels, scores_b, "scores_b")
  method = clustered.method_for(patients, y.size, method)
  both = np.stack([a, b])
  out = {"auc_a": None, "auc_b": None, "difference": None, "var_a": None, "var_b": None,
         "cov": None, "se_diff": None, "z": None, "p_value": None, "n_cases": int(y.sum()),
         "n_controls": int((~y).sum()), "method": method,
         "n_patients": None if patients is None else clustered.patient_index(patients, y.size)[1]}
  if method == "bootstrap":
    auc, boot, _ = clustered.bootstrap_aucs(y, both, patients, resamples, seed)
    diff = float(auc[0] - auc[1])
    cov = np.cov(boot.T)
    z, p = _z_p(diff, float(np.std(boot[:, 0] - boot[:, 1], ddof=1)))
    return dict(out, auc_a=float(auc[0]), auc_b=float(auc[1]), difference=diff,
                var_a=float(cov[0, 0]), var_b=float(cov[1, 1]), cov=float(cov[0, 1]),
                se_diff=float(np.std(boot[:, 0] - boot[:, 1], ddof=1)), z=z, p_value=p,
                resamples=int(resamples), seed=int(seed))
  if method == "delong":
    auc, v10, v01 = structural_components(y, both)
    cov = _covariance(v10, v01)
    # The variance of the difference straight from the differences of the components: equal to
    # V1 + V2 - 2 Cov, but exactly 0 (not a rounding residue) when the components coincide.
    d_cov = None if cov is None else _covariance(v10[:1] - v10[1:], v01[:1] - v01[1:])
  else:
    auc, cov, _ = clustered.obuchowski_covariance(y, both, patients)
    # As for DeLong: the difference's variance from the differences of the patient sums.
    d_cov = None if cov is None else clustered.obuchowski_difference_variance(y, both, patients)
  diff = float(auc[0] - auc[1])
  out.update(auc_a=float(auc[0]), auc_b=float(auc[1]), difference=diff)
  if cov is None:
    return out
  var_diff = max(float(np.atleast_2d(d_cov)[0, 0]), 0.0)
  se = math.sqrt(var_diff)
  z, p = _z_p(diff, se)
  out.update(var_a=float(cov[0, 0]), var_b=float(cov[1, 1]), cov=float(cov[0, 1]), se_diff=se,
             z=float(z), p_value=p)
  return out


def roc_curve(labels, scores) -> tuple[list, list, list]:
  """The empirical ROC curve: ``(fpr, tpr, thresholds)`` as lists, one point per distinct score.

  Example i is called positive when ``scores[i] >= threshold``. Thresholds decrease; the first is
  ``inf`` (nothing called positive, the point (0, 0)), the last the lowest score (everything called
  positive, (1, 1)). This is exactly ``sklearn.metrics.roc_curve(labels, scores,
  drop_intermediate=False)`` (scikit-learn >= 1.3, whose first threshold is also ``inf``).
  """
  y, s = check_binary(labels, scores)
  order = np.argsort(-s, kind="mergesort")
  s, y = s[order], y[order]
  last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]   # last index of each distinct score
  tps = np.cumsum(y)[last]
  fps = last + 1 - tps
  fpr = np.r_[0.0, fps / fps[-1]]
  tpr = np.r_[0.0, tps / tps[-1]]
  thresholds = np.r_[np.inf, s[last]]
  return fpr.tolist(), tpr.tolist(), thresholds.tolist()
