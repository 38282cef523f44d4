"""The report's patient-level statistics, per-application summary, warnings and figure files.

Oracles: delong_ci / delong_test with patients= (themselves checked against a brute-force
Obuchowski in test_clustered.py); a bootstrap recomputed here by materialising every resample
(each drawn patient's rows repeated) and scoring it with scikit-learn; Holm's correction by hand.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import stats as sps
from sklearn import metrics as skm

from radimagenet_jax.evaluate import clustered, delong_ci, delong_test, report_summary
from radimagenet_jax.evaluate import write_predictions, write_report

INITS = ["radimagenet", "imagenet"]
SCENARIOS = [("resnet50", "top10", 0.001), ("densenet121", "all", 0.0001)]


def _sweep(root, strength=(1.2, 0.6), per_patient=3, constant=None, seed=0):
  """2 inits x 2 scenarios x 2 folds; 20 patients with ``per_patient`` images each, a patient
  effect shared by its images. ``constant``: (init, model) whose scores are all 0.6 (collapsed)."""
  rng = np.random.default_rng(seed)
  n_pat = 20
  pats = np.repeat([f"p{i:02d}" for i in range(n_pat)], per_patient)
  ids = [f"img{i:03d}" for i in range(pats.size)]
  y = np.repeat(np.arange(n_pat) % 2, per_patient)
  shared = np.repeat(rng.normal(size=n_pat), per_patient)
  fold = np.repeat(np.arange(n_pat) // 2 % 2, per_patient)       # patients never split across folds
  for model, freeze, lr in SCENARIOS:
    for init, s in zip(INITS, strength):
      logit = s * (2 * y - 1) + shared + rng.normal(size=y.size)
      p1 = 1 / (1 + np.exp(-logit))
      if constant == (init, model):
        p1 = np.full(y.size, 0.6)
      for f in (0, 1):
        run = os.path.join(root, "runs", f"{model}-{freeze}-{init}-fold{f}")
        os.makedirs(run)
        with open(os.path.join(run, "run.json"), "w") as fh:
          json.dump({"model": model, "init": init, "freeze": freeze, "lr": lr, "fold": f,
                     "dataset": "toy", "class_names": ["no", "yes"],
                     "scenario": f"{model}-{freeze}-lr{lr}"}, fh)
        k = fold == f
        write_predictions(os.path.join(run, "predictions.csv"), [i for i, m in zip(ids, k) if m],
                          pats[k], y[k], np.stack([1 - p1[k], p1[k]], axis=1))
  with open(os.path.join(root, "sweep.json"), "w") as fh:
    json.dump({"inits": INITS}, fh)
  return ids, pats, y


def _pooled(root, model, freeze, init):
  rows = {}
  for f in (0, 1):
    p = os.path.join(root, "runs", f"{model}-{freeze}-{init}-fold{f}", "predictions.csv")
    with open(p) as fh:
      next(fh)
      for line in fh:
        i, pat, lab, _, s1 = line.strip().split(",")
        rows[i] = (pat, int(lab), float(s1))
  return rows


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("clustered_sweep"))
  _sweep(root)
  return root, write_report(root, resamples=40, seed=5)


def test_scenario_cis_and_tests_are_patient_level(sweep):
  root, rep = sweep
  for sc in rep["scenarios"]:
    model, freeze = sc["model"], sc["freeze"]
    a, b = (_pooled(root, model, freeze, i) for i in INITS)
    ids = sorted(a)
    pats, y = [a[i][0] for i in ids], [a[i][1] for i in ids]
    want = delong_ci(y, [a[i][2] for i in ids], patients=pats)
    got = sc["inits"]["radimagenet"]
    assert got["method"] == "obuchowski" and got["n_patients"] == 20
    assert got["se"] == pytest.approx(want["se"], abs=1e-12)
    assert got["se"] > delong_ci(y, [a[i][2] for i in ids])["se"]   # wider than image-level
    t = delong_test(y, [a[i][2] for i in ids], [b[i][2] for i in ids], patients=pats)
    assert sc["comparisons"][0]["test"]["p_value"] == pytest.approx(t["p_value"], abs=1e-12)
    assert sc["comparisons"][0]["test"]["method"] == "obuchowski"


def test_holm_by_hand_and_in_the_report(sweep):
  # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max.
  assert report_summary.holm([0.01, 0.04, 0.03, 0.005, None]) == pytest.approx(
      [0.03, 0.06, 0.06, 0.02, None])
  _, rep = sweep
  ps = [sc["comparisons"][0]["test"]["p_value"] for sc in rep["scenarios"]]
  lo, hi = sorted(ps)
  want = {lo: min(1, 2 * lo), hi: max(min(1, 2 * lo), hi)}
  for sc in rep["scenarios"]:
    c = sc["comparisons"][0]
    assert c["p_holm"] == pytest.approx(want[c["test"]["p_value"]], abs=1e-15)


def test_application_bootstrap_equals_materialised_resamples(sweep):
  """Every resample rebuilt here: the drawn patients' rows repeated, AUCs by scikit-learn."""
  root, rep = sweep
  app = rep["applications"][0]
  assert (app["dataset"], app["n_patients"], app["n_images"], app["resamples"]) == (
      "toy", 20, 60, 40)
  data = {(m, i): _pooled(root, m, f, i) for m, f, _ in SCENARIOS for i in INITS}
  # The report orders images as the first pooled set (scenario order: densenet121 first).
  order = sorted(SCENARIOS, key=lambda s: tuple(str(v) for v in ("toy",) + s))
  ids = list(data[order[0][0], INITS[0]])
  pats = [data[order[0][0], INITS[0]][i][0] for i in ids]
  labels = np.array([data[order[0][0], INITS[0]][i][1] for i in ids], bool)
  index, count = clustered.patient_index(pats, len(pats))
  counts = clustered.patient_draws(index, count, labels, 40, 5)
  means = {i: [] for i in INITS}
  for r in range(40):
    reps = counts[r][index].astype(int)
    for init in INITS:
      aucs = []
      for model, *_ in SCENARIOS:
        d = data[model, init]
        aucs.append(skm.roc_auc_score(np.repeat([d[i][1] for i in ids], reps),
                                      np.repeat([d[i][2] for i in ids], reps)))
      means[init].append(np.mean(aucs))
  ma, mb = (np.array(means[i]) for i in INITS)
  comp = app["comparisons"][0]
  point = {i: np.mean([skm.roc_auc_score([data[m, i][k][1] for k in ids],
                                         [data[m, i][k][2] for k in ids])
                       for m, *_ in SCENARIOS]) for i in INITS}
  assert comp["mean_auc_a"] == pytest.approx(point["radimagenet"], abs=1e-12)
  assert comp["gain"] == pytest.approx((point["radimagenet"] - point["imagenet"])
                                       / point["imagenet"], abs=1e-12)
  lo, hi = np.quantile((ma - mb) / mb, [0.025, 0.975])
  assert (comp["gain_ci_low"], comp["gain_ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
  z = (point["radimagenet"] - point["imagenet"]) / np.std(ma - mb, ddof=1)
  assert comp["p_value"] == pytest.approx(2 * sps.norm.sf(abs(z)), abs=1e-12)
  assert app["inits"]["imagenet"]["ci_low"] == pytest.approx(np.quantile(mb, 0.025), abs=1e-12)
  md = open(os.path.join(root, "report.md")).read()
  assert "## Application: toy" in md and "patient-level paired bootstrap" in md


def test_figures_have_pdf_twins_and_metadata(sweep):
  root, rep = sweep
  for name in ("roc_curves", "auc_by_init"):
    png, pdf = (os.path.join(root, f"{name}.{ext}") for ext in ("png", "pdf"))
    assert png in rep["files"] and pdf in rep["files"]
    with Image.open(png) as im:
      assert im.info["Software"] == "radimagenet-jax report" and "AUC" in im.info["Title"]
      assert round(im.info["dpi"][0]) == 300 and im.size[0] <= 7.2 * 300 + 1
    with open(pdf, "rb") as fh:
      head = fh.read()
    assert head.startswith(b"%PDF") and b"radimagenet-jax report" in head


def test_chance_and_collapsed_models_are_flagged(tmp_path):
  root = str(tmp_path / "null")
  _sweep(root, strength=(0.0, 0.0), constant=("imagenet", "resnet50"), seed=3)
  rep = write_report(root, resamples=20)
  text = " ".join(rep["warnings"])
  assert "NO INIT BEATS CHANCE on toy" in text
  assert "CHANCE LEVEL" in text and "COLLAPSED MODEL: 2 run(s)" in text
  assert "resnet50-top10-imagenet-fold0" in text
  md = open(os.path.join(root, "report.md")).read()
  assert md.index("## WARNINGS") < md.index("## AUC per init")
  assert rep["applications"][0]["comparisons"][0]["p_value"] >= 0.05
  assert "**not significant** (p >= 0.05)" in md
  assert "**NO INIT BEATS CHANCE" in md
  good = str(tmp_path / "good")
  _sweep(good, strength=(3.0, 3.0), per_patient=1)
  rep = write_report(good, resamples=20)
  assert not any("NO INIT" in w or "COLLAPSED" in w for w in rep["warnings"])
  assert rep["scenarios"][0]["inits"]["radimagenet"]["method"] == "delong"


def test_run_warnings_flag_chance_and_collapse():
  from radimagenet_jax.evaluate import run_warnings
  probs = np.array([[0.4, 0.6], [0.3, 0.7]])
  assert run_warnings({"ci_low": 0.62, "ci_high": 0.9}, probs) == []
  chance = run_warnings({"ci_low": 0.41, "ci_high": 0.73}, probs)
  assert len(chance) == 1 and chance[0].startswith("CHANCE LEVEL: the test AUC's CI [0.410, 0.730]")
  flat = run_warnings({"ci_low": None, "ci_high": None}, np.full((5, 2), 0.5) + [0, 1e-5])
  assert len(flat) == 1 and flat[0].startswith("COLLAPSED MODEL")


def test_a_gradcam_run_over_the_sweep_is_summarised_in_the_report(tmp_path):
  root = str(tmp_path / "sweep")
  _sweep(root)
  cam = os.path.join(root, "gradcam")
  os.makedirs(cam)
  Image.new("RGB", (8, 8)).save(os.path.join(cam, "panel.png"))
  dice = {"n": 20, "unit": "patient", "difference": {"mean": 0.05}, "recommended_test":
          "ttest_rel", "ttest_rel": {"pvalue": 0.2}}
  with open(os.path.join(cam, "summary.json"), "w") as f:
    json.dump({"sweep": os.path.abspath(root), "n_runs": 8, "init_order": INITS,
               "inits": {"radimagenet": {"n_scenarios": 2, "mean_dice": 0.31},
                         "imagenet": {"n_scenarios": 2, "mean_dice": 0.26}},
               "comparisons": [{"a": "radimagenet", "b": "imagenet", "dice": dice}],
               "warnings": ["COLLAPSED GRAD-CAM: 10 of 10 maps of imagenet are constant"]}, f)
  rep = write_report(root, resamples=20)
  (g,) = rep["gradcam"]
  assert g["inits"]["radimagenet"]["mean_dice"] == 0.31 and g["panel"] == "gradcam/panel.png"
  assert any(w.startswith("COLLAPSED GRAD-CAM") for w in rep["warnings"])
  md = open(os.path.join(root, "report.md")).read()
  assert "## Grad-CAM Dice over the sweep" in md and "![Grad-CAM panel](gradcam/panel.png)" in md
  assert "| radimagenet vs imagenet | 20 | 0.050 | ttest_rel | 0.2000 | **not significant**" in md
