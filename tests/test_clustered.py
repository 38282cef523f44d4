"""Patient-level AUC inference against oracles: an O(M N) Obuchowski (1997) written here from the
paper's formulas with explicit loops over patients, pROC's DeLong figures on aSAH (one image per
patient), scikit-learn's weighted AUC and a materialised resample (bootstrap), scipy's normal."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from radimagenet_jax.evaluate import clustered, delong_ci, delong_test, paired_comparison
from tests.test_evaluate_roc import asah


def brute_obuchowski(y, scores, patients):
  """Obuchowski (1997) section 2 from the definitions: psi over every case/control pair, then per
  patient the sums of V10 over its cases and V01 over its controls. Returns (aucs, cov (k, k))."""
  y = np.asarray(y).astype(bool)
  ids = sorted(set(patients))
  big_m, big_n, count = int(y.sum()), int((~y).sum()), len(ids)
  comps = []
  for s in scores:
    s = np.asarray(s, float)
    psi = lambda a, b: 1.0 if a > b else (0.5 if a == b else 0.0)  # noqa: E731
    auc = sum(psi(s[i], s[j]) for i in range(len(s)) if y[i] for j in range(len(s)) if not y[j])
    auc /= big_m * big_n
    x_sums, y_sums, ms, ns = [], [], [], []
    for pid in ids:
      mine = [i for i in range(len(s)) if patients[i] == pid]
      cases, ctrls = [i for i in mine if y[i]], [i for i in mine if not y[i]]
      x_sums.append(sum(sum(psi(s[i], s[j]) for j in range(len(s)) if not y[j]) / big_n
                        for i in cases))
      y_sums.append(sum(sum(psi(s[i], s[j]) for i in range(len(s)) if y[i]) / big_m
                        for j in ctrls))
      ms.append(len(cases))
      ns.append(len(ctrls))
    comps.append((auc, np.array(x_sums), np.array(y_sums)))
  ms, ns = np.array(ms), np.array(ns)
  i10, i01 = int(np.sum(ms > 0)), int(np.sum(ns > 0))
  k = len(scores)
  cov = np.zeros((k, k))
  for r in range(k):
    for q in range(k):
      ar, xr, yr = comps[r]
      aq, xq, yq = comps[q]
      s10 = i10 / ((i10 - 1) * big_m) * np.sum((xr - ms * ar) * (xq - ms * aq))
      s01 = i01 / ((i01 - 1) * big_n) * np.sum((yr - ns * ar) * (yq - ns * aq))
      s11_rq = count / (count - 1) * np.sum((xr - ms * ar) * (yq - ns * aq))
      s11_qr = count / (count - 1) * np.sum((xq - ms * aq) * (yr - ns * ar))
      cov[r, q] = s10 / big_m + s01 / big_n + (s11_rq + s11_qr) / (big_m * big_n)
  return np.array([c[0] for c in comps]), cov


def clustered_data(seed, patients=30, per=4, levels=None, effect=1.0):
  """``patients`` x up to ``per`` images; a patient effect shared by its images (correlation); the
  label varies within some patients (both cases and controls in one patient)."""
  rng = np.random.default_rng(seed)
  sizes = rng.integers(1, per + 1, patients)
  pid = np.repeat([f"p{i:02d}" for i in range(patients)], sizes)
  base = np.repeat(rng.random(patients) < 0.4, sizes)
  flip = rng.random(pid.size) < 0.15
  y = (base ^ flip).astype(int)
  y[:2], y[-2:] = 1, 0
  shared = np.repeat(rng.normal(size=patients), sizes)
  a = effect * y + shared + 0.5 * rng.normal(size=pid.size)
  b = 0.6 * effect * y + shared + 0.7 * rng.normal(size=pid.size)
  if levels:
    a, b = np.round(a * levels) / levels, np.round(b * levels) / levels
  return y, a, b, list(pid)


@pytest.mark.parametrize("seed,levels", [(0, None), (1, 2), (2, None)])
def test_obuchowski_equals_brute_force(seed, levels):
  y, a, b, pid = clustered_data(seed, levels=levels)
  aucs, cov = brute_obuchowski(y, [a, b], pid)
  ci = delong_ci(y, a, 0.9, patients=pid)
  assert ci["method"] == "obuchowski" and ci["n_patients"] == len(set(pid))
  assert ci["auc"] == pytest.approx(aucs[0], abs=1e-12)
  assert ci["se"] == pytest.approx(np.sqrt(cov[0, 0]), abs=1e-12)
  half = sps.norm.ppf(0.95) * np.sqrt(cov[0, 0])
  assert ci["ci_low"] == pytest.approx(max(0, aucs[0] - half), abs=1e-12)
  test = delong_test(y, a, b, patients=pid)
  assert test["method"] == "obuchowski"
  for key, want in (("var_a", cov[0, 0]), ("var_b", cov[1, 1]), ("cov", cov[0, 1])):
    assert test[key] == pytest.approx(want, abs=1e-12)
  se = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
  assert test["se_diff"] == pytest.approx(se, abs=1e-12)
  assert test["z"] == pytest.approx((aucs[0] - aucs[1]) / se, abs=1e-9)
  assert test["p_value"] == pytest.approx(2 * sps.norm.sf(abs(test["z"])), abs=1e-12)


def test_one_image_per_patient_is_delong_exactly():
  """pROC's aSAH (one row per patient): the default gives today's DeLong figures bit for bit, and
  Obuchowski forced on singleton patients agrees to rounding."""
  y, s100b, wfns = asah()
  pid = [f"patient{i}" for i in range(y.size)]
  for patients in (None, pid):
    t = delong_test(y, s100b, wfns, patients=patients)
    assert t["method"] == "delong"
    assert t["z"] == pytest.approx(-2.2089835914, abs=1e-9)
    assert t["p_value"] == pytest.approx(0.02717578223, abs=1e-10)
  plain, with_ids = delong_ci(y, s100b), delong_ci(y, s100b, patients=pid)
  assert {k: v for k, v in with_ids.items() if k != "n_patients"} == {
      k: v for k, v in plain.items() if k != "n_patients"}
  assert with_ids["n_patients"] == 113 and plain["n_patients"] is None
  forced = delong_ci(y, s100b, patients=pid, method="obuchowski")
  assert forced["se"] == pytest.approx(plain["se"], rel=1e-12)
  assert forced["ci_low"] == pytest.approx(0.6301182118, abs=1e-9)
  ft = delong_test(y, s100b, wfns, patients=pid, method="obuchowski")
  assert ft["z"] == pytest.approx(-2.2089835914, abs=1e-9)


def test_clustering_widens_the_interval():
  """Four strongly correlated images per patient: counting images as independent understates the
  SE; the patient-level SE is larger (the issue's chance-level example)."""
  y, a, _, pid = clustered_data(3, patients=40, per=4, effect=0.0)
  naive = delong_ci(y, a)
  patient = delong_ci(y, a, patients=pid)
  assert patient["se"] > 1.2 * naive["se"]


def test_weighted_auc_equals_sklearn_sample_weight():
  y, a, _, _ = clustered_data(4, levels=2)
  w = np.random.default_rng(0).integers(0, 4, size=(5, y.size)).astype(float)
  got = clustered._weighted_auc(y.astype(bool), a, w)
  for r in range(5):
    assert got[r] == pytest.approx(skm.roc_auc_score(y, a, sample_weight=w[r]), abs=1e-12)


def test_bootstrap_resample_is_patients_drawn_with_replacement():
  """One resample materialised (each drawn patient's images repeated) gives the same AUC."""
  y, a, b, pid = clustered_data(5)
  index, count = clustered.patient_index(pid, y.size)
  counts = clustered.patient_draws(index, count, y, 20, seed=7)
  assert counts.shape == (20, count) and np.all(counts.sum(axis=1) == count)
  aucs = clustered.resampled_aucs(y.astype(bool), np.stack([a, b]), index, counts, chunk=6)
  for r in (0, 13):
    reps = counts[r][index].astype(int)
    yy, aa, bb = np.repeat(y, reps), np.repeat(a, reps), np.repeat(b, reps)
    assert aucs[r, 0] == pytest.approx(skm.roc_auc_score(yy, aa), abs=1e-12)
    assert aucs[r, 1] == pytest.approx(skm.roc_auc_score(yy, bb), abs=1e-12)


def test_bootstrap_is_seeded_and_agrees_with_obuchowski():
  y, a, b, pid = clustered_data(6, patients=60)
  one = delong_ci(y, a, patients=pid, method="bootstrap", resamples=1500, seed=3)
  again = delong_ci(y, a, patients=pid, method="bootstrap", resamples=1500, seed=3)
  assert one == again and one["method"] == "bootstrap" and one["resamples"] == 1500
  obu = delong_ci(y, a, patients=pid)
  assert one["se"] == pytest.approx(obu["se"], rel=0.2)     # two estimators of the same SE
  assert one["ci_low"] < one["auc"] < one["ci_high"]
  test = delong_test(y, a, b, patients=pid, method="bootstrap", resamples=1500, seed=3)
  assert test["z"] == pytest.approx(test["difference"] / test["se_diff"], abs=1e-12)
  assert test["p_value"] == pytest.approx(2 * sps.norm.sf(abs(test["z"])), abs=1e-12)
  assert test["se_diff"] == pytest.approx(delong_test(y, a, b, patients=pid)["se_diff"], rel=0.25)


def test_bad_patient_lists_are_one_line_errors():
  y, a, _, pid = clustered_data(0)
  with pytest.raises(ValueError, match="one entry per image; got 3 for"):
    delong_ci(y, a, patients=pid[:3])
  with pytest.raises(ValueError, match="1 blank ids; the first at index 4"):
    delong_ci(y, a, patients=pid[:4] + [""] + pid[5:])
  with pytest.raises(ValueError, match="method='bogus'; expected one of delong"):
    delong_ci(y, a, patients=pid, method="bogus")
  with pytest.raises(ValueError, match="needs patients="):
    delong_test(y, a, a, method="obuchowski")


def test_patient_level_methods_hold_their_error_rates_where_image_level_ones_fail():
  """300 seeded null data sets, 30 patients x 4 images sharing a patient effect (the issue's
  chance-level case): the image-level DeLong CI covers the true AUC 0.5 far less than 95% of the
  time and the image-level paired t-test rejects far more than 5%; Obuchowski's CI and the
  per-patient test keep close to their nominal rates."""
  rng = np.random.default_rng(0)
  cover_img = cover_pat = reject_img = reject_pat = 0
  sims, n, per = 300, 30, 4
  pid = np.repeat(np.arange(n), per)
  for _ in range(sims):
    y = np.repeat(rng.random(n) < 0.5, per).astype(int)
    y[:per], y[per:2 * per] = 1, 0
    score = np.repeat(rng.normal(size=n), per) + 0.3 * rng.normal(size=n * per)
    img, pat = delong_ci(y, score), delong_ci(y, score, patients=pid)
    cover_img += img["ci_low"] <= 0.5 <= img["ci_high"]
    cover_pat += pat["ci_low"] <= 0.5 <= pat["ci_high"]
    dice_a = 0.3 + np.repeat(rng.normal(0, 0.1, n), per) + 0.02 * rng.normal(size=n * per)
    dice_b = 0.3 + 0.02 * rng.normal(size=n * per)
    reject_img += paired_comparison(dice_a, dice_b)["ttest_rel"]["pvalue"] < 0.05
    reject_pat += paired_comparison(dice_a, dice_b, patients=pid)["ttest_rel"]["pvalue"] < 0.05
  assert cover_img / sims < 0.8 and cover_pat / sims >= 0.9
  assert reject_img / sims > 0.2 and reject_pat / sims <= 0.09
