"""radimagenet_jax.evaluate.roc against oracles: scikit-learn (AUC, ROC curve), an O(m n) DeLong
written here from the definition (variance, CI, paired test), and pROC 1.18's published numbers on
its aSAH data."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from radimagenet_jax.evaluate import delong_ci, delong_test, roc_auc, roc_curve

# pROC's `aSAH` data (data/aSAH in the R package pROC; Turck et al. 2010), all 113 patients in
# pROC's order: outcome (1 = Poor, the cases; 0 = Good, the controls), wfns (grade 1-5) and s100b.
ASAH_OUTCOME = ("00001101001011001011101000000000100110110000000001100010001010011101101111000110"
                "100000010000000000001111110001000")
ASAH_WFNS = ("11113254125255125225211112121134214541425511241125521251222151125214524414121421"
             "232421451154221113125225552445111")
ASAH_S100B = """
0.13 0.14 0.1 0.04 0.13 0.1 0.47 0.16 0.18 0.1 0.12 0.1 0.44 0.71 0.04 0.08 0.49 0.04
0.07 0.33 0.09 0.09 0.07 0.11 0.07 0.17 0.07 0.11 0.13 0.19 0.05 0.16 0.41 0.14 0.34 0.35 0.48 0.09
0.96 0.25 0.5 0.46 0.16 0.07 0.43 0.45 0.11 0.08 0.09 0.86 0.52 0.08 0.06 0.13 2.07 0.1 0.14 0.15
0.07 0.06 0.77 0.05 0.09 0.3 0.03 0.09 0.04 0.23 0.7 0.09 0.27 0.71 0.08 0.26 0.08 0.16 0.09 0.13
0.1 0.08 0.11 0.33 0.11 0.28 0.07 0.1 0.32 0.22 0.07 0.05 0.24 0.38 0.1 0.15 0.08 0.14 0.1 0.07
0.04 0.19 0.56 0.14 0.58 0.32 0.82 0.74 0.15 0.47 0.17 0.44 0.15 0.5 0.48"""


def asah():
  y = np.array([int(c) for c in ASAH_OUTCOME])
  wfns = np.array([float(c) for c in ASAH_WFNS])
  s100b = np.array([float(v) for v in ASAH_S100B.split()])
  assert y.size == wfns.size == s100b.size == 113 and y.sum() == 41
  return y, s100b, wfns


def brute_delong(y, scores):
  """DeLong from the definition: psi over all m x n case/control pairs (ties 1/2).

  Returns (aucs (k,), covariance (k, k)) with covariance S10/m + S01/n, sample (ddof=1) estimates.
  """
  y = np.asarray(y).astype(bool)
  aucs, v10s, v01s = [], [], []
  for s in scores:
    s = np.asarray(s, float)
    x, z = s[y], s[~y]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    aucs.append(psi.mean())
    v10s.append(psi.mean(axis=1))    # V10_i = mean_j psi(X_i, Y_j)
    v01s.append(psi.mean(axis=0))    # V01_j = mean_i psi(X_i, Y_j)
  m, n = int(y.sum()), int((~y).sum())
  cov = np.atleast_2d(np.cov(np.array(v10s))) / m + np.atleast_2d(np.cov(np.array(v01s))) / n
  return np.array(aucs), cov


def _data(seed, n=150, levels=None, prevalence=0.35):
  """Random labels and two correlated scores; ``levels`` bins them into that many values (ties)."""
  rng = np.random.default_rng(seed)
  y = (rng.random(n) < prevalence).astype(int)
  y[:2], y[2:4] = 1, 0                     # both classes, at least two of each
  common = rng.normal(size=n)
  a = y * 0.8 + common + 0.7 * rng.normal(size=n)
  b = y * 0.5 + common + 0.9 * rng.normal(size=n)
  if levels:
    a = np.digitize(a, np.quantile(a, np.linspace(0, 1, levels + 1)[1:-1])).astype(float)
    b = np.digitize(b, np.quantile(b, np.linspace(0, 1, levels + 1)[1:-1])).astype(float)
  return y, a, b


CASES = [(0, None), (1, 20), (2, 4), (3, 2), (4, None)]   # (seed, number of distinct values)


@pytest.mark.parametrize("seed,levels", CASES)
def test_auc_equals_sklearn_with_ties(seed, levels):
  y, a, _ = _data(seed, levels=levels)
  assert roc_auc(y, a) == pytest.approx(skm.roc_auc_score(y, a), abs=1e-12)
  assert delong_ci(y, a)["auc"] == pytest.approx(skm.roc_auc_score(y, a), abs=1e-12)


@pytest.mark.parametrize("seed,levels", CASES)
@pytest.mark.parametrize("level", [0.95, 0.8])
def test_delong_ci_equals_brute_force(seed, levels, level):
  y, a, _ = _data(seed, levels=levels)
  auc, cov = brute_delong(y, [a])
  se = np.sqrt(cov[0, 0])
  half = sps.norm.ppf((1 + level) / 2) * se
  got = delong_ci(y, a, level=level)
  assert got["auc"] == pytest.approx(auc[0], abs=1e-12)
  assert got["se"] == pytest.approx(se, rel=1e-10)
  assert got["ci_low"] == pytest.approx(max(0.0, auc[0] - half), abs=1e-12)
  assert got["ci_high"] == pytest.approx(min(1.0, auc[0] + half), abs=1e-12)
  assert (got["n_cases"], got["n_controls"]) == (int(y.sum()), int((1 - y).sum()))
  assert all(type(got[k]) is float for k in ("auc", "se", "ci_low", "ci_high"))


@pytest.mark.parametrize("seed,levels", CASES)
def test_delong_paired_test_equals_brute_force(seed, levels):
  y, a, b = _data(seed, levels=levels)
  auc, cov = brute_delong(y, [a, b])
  se_diff = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
  z = (auc[0] - auc[1]) / se_diff
  got = delong_test(y, a, b)
  assert (got["auc_a"], got["auc_b"]) == pytest.approx(tuple(auc), abs=1e-12)
  assert (got["var_a"], got["var_b"], got["cov"]) == pytest.approx(
      (cov[0, 0], cov[1, 1], cov[0, 1]), rel=1e-9)
  assert got["se_diff"] == pytest.approx(se_diff, rel=1e-9)
  assert got["z"] == pytest.approx(z, rel=1e-9)
  assert got["p_value"] == pytest.approx(2 * sps.norm.sf(abs(z)), rel=1e-9)
  assert type(got["z"]) is float and type(got["p_value"]) is float


def test_clipped_ci_near_perfect_separation():
  y, a, _ = _data(7, n=40)
  a = a + 3.0 * y                          # nearly separated: AUC close to 1, interval clipped
  got = delong_ci(y, a)
  auc, cov = brute_delong(y, [a])
  assert got["ci_high"] == min(1.0, auc[0] + sps.norm.ppf(0.975) * np.sqrt(cov[0, 0]))
  assert got["ci_high"] <= 1.0


def test_proc_reference_values_on_asah():
  """pROC 1.18: roc.test(roc(outcome, s100b), roc(outcome, wfns), method="delong", paired=TRUE)
  and ci.auc(roc(outcome, s100b), method="delong") (both with direction "<")."""
  y, s100b, wfns = asah()
  test = delong_test(y, s100b, wfns)
  assert test["auc_a"] == pytest.approx(0.7313686, abs=1e-7)
  assert test["auc_b"] == pytest.approx(0.8236789, abs=1e-7)
  assert test["z"] == pytest.approx(-2.2089835914, abs=1e-9)
  assert test["p_value"] == pytest.approx(0.02717578223, abs=1e-10)
  ci = delong_ci(y, s100b)
  assert ci["ci_low"] == pytest.approx(0.6301182118, abs=1e-9)
  assert ci["ci_high"] == pytest.approx(0.8326189156, abs=1e-9)


def test_zero_variance_difference_is_defined():
  y, a, _ = _data(3, levels=3)
  same = delong_test(y, a, a.copy())
  assert (same["z"], same["p_value"], same["se_diff"]) == (0.0, 1.0, 0.0)
  # A perfect score against its mirror image: the components differ by a constant.
  perfect = delong_test(y, y.astype(float), -y.astype(float))
  assert (perfect["auc_a"], perfect["auc_b"]) == (1.0, 0.0)
  assert perfect["z"] == float("inf") and perfect["p_value"] == 0.0


def test_no_direction_flipping():
  y, a, _ = _data(5)
  assert roc_auc(y, -a) == pytest.approx(1 - roc_auc(y, a), abs=1e-12)
  assert roc_auc(y, -a) < 0.5


def test_too_few_cases_has_no_variance():
  y = np.array([1, 0, 0, 0])
  got = delong_ci(y, [0.9, 0.1, 0.5, 0.95])
  assert got["auc"] == pytest.approx(2 / 3) and got["se"] is None and got["ci_low"] is None
  assert delong_test(y, [0.9, 0.1, 0.5, 0.95], [0.1, 0.2, 0.3, 0.4])["z"] is None


@pytest.mark.parametrize("seed,levels", CASES)
def test_roc_curve_equals_sklearn(seed, levels):
  y, a, _ = _data(seed, levels=levels)
  fpr, tpr, thr = roc_curve(y, a)
  sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, a, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr, atol=1e-15)
  np.testing.assert_allclose(tpr, sk_tpr, atol=1e-15)
  assert thr[0] == np.inf
  np.testing.assert_array_equal(thr[1:], sk_thr[1:])
  assert all(isinstance(v, list) for v in (fpr, tpr, thr))
  area = np.sum(np.diff(fpr) * (np.asarray(tpr[1:]) + tpr[:-1]) / 2)   # trapezoids
  assert area == pytest.approx(roc_auc(y, a), abs=1e-12)


@pytest.mark.parametrize("labels,scores,match", [
    ([0, 1, 0, 1, 1], [0.1, 0.2, float("nan"), float("inf"), 0.3],
     r"scores has 2 non-finite values \(NaN or inf\); the first at index 2"),
    ([0, 1, 2, 1], [0.1, 0.2, 0.3, 0.4],
     r"labels must be 0 \(control\) or 1 \(case\); got 2 at index 2"),
    ([1, 1, 1], [0.1, 0.2, 0.3], r"needs both classes; got only label 1 \(n=3\)"),
    ([0, 0], [0.1, 0.2], r"needs both classes; got only label 0 \(n=2\)"),
    ([0, 1, 1], [0.1, 0.2], "same length; got 3 and 2"),
    (["a", "b"], [0.1, 0.2], "labels must be 0"),
])
def test_bad_input_raises_one_clear_error(labels, scores, match):
  for fn in (delong_ci, roc_auc, roc_curve):
    with pytest.raises(ValueError, match=match):
      fn(labels, scores)
  with pytest.raises(ValueError):
    delong_test(labels, scores, scores)


def test_bad_level_raises():
  with pytest.raises(ValueError, match="level must be in"):
    delong_ci([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], level=95)
