"""write_report on fake sweeps and runs built here: every number it reports is recomputed in the
test straight from the predictions.csv files (csv module + the DeLong functions), and mean / SD over
scenarios from numpy."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from radimagenet_jax.evaluate import delong_ci, delong_test, write_predictions, write_report

INITS = ["radimagenet", "imagenet"]
SCENARIOS = [("resnet50", "top10", 0.001), ("densenet121", "all", 0.0001)]
FIELDS = ["run", "model", "init", "freeze", "lr", "fold", "status", "auc", "ci_low", "ci_high",
          "accuracy", "best_epoch", "trainable_params"]


def _run(run_dir, rng, model, init, freeze, lr, fold, ids, labels, strength, classes=2,
         shuffle=False):
  """A run directory: run.json and predictions.csv of softmax scores with a signal ``strength``."""
  k = len(ids)
  logits = rng.normal(size=(k, classes)) + strength * np.eye(classes)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  order = rng.permutation(k) if shuffle else np.arange(k)   # row order must not matter
  os.makedirs(run_dir, exist_ok=True)
  names = ["benign", "malignant"] if classes == 2 else [f"c{c}" for c in range(classes)]
  with open(os.path.join(run_dir, "run.json"), "w") as f:
    json.dump({"model": model, "init": init, "init_source": f"/w/{init}.h5", "freeze": freeze,
               "lr": lr, "fold": fold, "dataset": "busi/benign_vs_malignant", "class_names": names,
               "trainable_params": 123, "best_step": 40, "best_epoch": 4,
               "scenario": f"{model}-{freeze}-lr{lr}"}, f)
  write_predictions(os.path.join(run_dir, "predictions.csv"), [ids[i] for i in order],
                    [f"pat{ids[i]}" for i in order], labels[order], probs[order])


def make_sweep(root, seed=0):
  """2 inits x 2 scenarios x 2 folds (60 examples, 30 per fold), one failed run, one done run
  without predictions; imagenet's rows are shuffled so the report must join on id."""
  rng = np.random.default_rng(seed)
  ids = [f"x{i:02d}" for i in range(60)]
  labels = (rng.random(60) < 0.4).astype(int)
  labels[:2], labels[30:32], labels[2:4], labels[32:34] = 1, 1, 0, 0
  rows = []
  for model, freeze, lr in SCENARIOS:
    for init in INITS:
      for fold in (0, 1):
        name = f"{model}-{freeze}-lr{lr}-{init}-fold{fold}"
        sl = slice(30 * fold, 30 * fold + 30)
        _run(os.path.join(root, "runs", name), rng, model, init, freeze, lr, fold, ids[sl],
             labels[sl], 1.5 if init == "radimagenet" else 1.0, shuffle=init == "imagenet")
        rows.append({"run": name, "model": model, "init": init, "freeze": freeze, "lr": lr,
                     "fold": fold, "status": "done", "auc": 0.5})   # the report must ignore auc
  rows.append({"run": "inception_v3-all-lr0.001-radimagenet-fold0", "model": "inception_v3",
               "init": "radimagenet", "freeze": "all", "lr": 0.001, "fold": 0, "status": "failed"})
  os.makedirs(os.path.join(root, "runs", "nopreds"))
  rows.append({"run": "nopreds", "model": "inception_v3", "init": "imagenet", "freeze": "all",
               "lr": 0.001, "fold": 0, "status": "done"})
  with open(os.path.join(root, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, FIELDS)
    w.writeheader()
    w.writerows(rows)
  with open(os.path.join(root, "sweep.json"), "w") as f:
    json.dump({"inits": INITS, "models": ["resnet50", "densenet121"]}, f)
  return root


def _csv(path):
  """{id: (label, score of class 1)} read with the csv module alone."""
  with open(path, newline="") as f:
    return {r["id"]: (int(r["label"]), float(r["score_1"])) for r in csv.DictReader(f)}


def _pooled(root, model, freeze, lr, init):
  out = {}
  for fold in (0, 1):
    out.update(_csv(os.path.join(root, "runs", f"{model}-{freeze}-lr{lr}-{init}-fold{fold}",
                                 "predictions.csv")))
  return out


def test_sweep_report_equals_direct_recomputation(tmp_path):
  root = make_sweep(str(tmp_path / "sweep"))
  rep = write_report(root)
  assert rep["kind"] == "sweep" and rep["inits"] == INITS and rep["baseline"] == "imagenet"
  assert rep["comparisons"] == [["radimagenet", "imagenet"]] and rep["task"] == "binary"
  by_name = {s["scenario"]: s for s in rep["scenarios"]}
  assert set(by_name) == {f"{m}-{f}-lr{lr}" for m, f, lr in SCENARIOS}
  per_init = {i: [] for i in INITS}
  for model, freeze, lr in SCENARIOS:
    sc = by_name[f"{model}-{freeze}-lr{lr}"]
    pooled = {}
    for init in INITS:
      pooled[init] = _pooled(root, model, freeze, lr, init)
      ids = sorted(pooled[init])
      y = [pooled[init][i][0] for i in ids]
      want = delong_ci(y, [pooled[init][i][1] for i in ids])
      got = sc["inits"][init]
      for k in ("auc", "se", "ci_low", "ci_high"):
        assert got[k] == pytest.approx(want[k], abs=1e-12)
      folds = []
      for fold in (0, 1):
        d = _csv(os.path.join(root, "runs", f"{model}-{freeze}-lr{lr}-{init}-fold{fold}",
                              "predictions.csv"))
        folds.append(skm.roc_auc_score([v[0] for v in d.values()], [v[1] for v in d.values()]))
        assert got["folds"][fold]["auc"] == pytest.approx(folds[-1], abs=1e-12)
      assert got["fold_auc_mean"] == pytest.approx(np.mean(folds), abs=1e-12)
      assert got["fold_auc_sd"] == pytest.approx(np.std(folds, ddof=1), abs=1e-12)
      per_init[init].append(want["auc"])
    ids = sorted(pooled["radimagenet"])
    y = [pooled["radimagenet"][i][0] for i in ids]
    want = delong_test(y, [pooled["radimagenet"][i][1] for i in ids],
                       [pooled["imagenet"][i][1] for i in ids])
    comp = sc["comparisons"][0]
    for k in ("auc_a", "auc_b", "z", "p_value", "se_diff"):
      assert comp["test"][k] == pytest.approx(want[k], abs=1e-12)
    assert comp["gain"] == pytest.approx((want["auc_a"] - want["auc_b"]) / want["auc_b"], abs=1e-12)
    for fold in (0, 1):
      da = _csv(os.path.join(root, "runs", f"{model}-{freeze}-lr{lr}-radimagenet-fold{fold}",
                             "predictions.csv"))
      db = _csv(os.path.join(root, "runs", f"{model}-{freeze}-lr{lr}-imagenet-fold{fold}",
                             "predictions.csv"))
      fid = sorted(da)
      wf = delong_test([da[i][0] for i in fid], [da[i][1] for i in fid], [db[i][1] for i in fid])
      assert comp["folds"][fold]["fold"] == fold
      assert comp["folds"][fold]["test"]["z"] == pytest.approx(wf["z"], abs=1e-12)
  for init in INITS:
    assert rep["summary"][init]["n"] == 2
    assert rep["summary"][init]["mean"] == pytest.approx(np.mean(per_init[init]), abs=1e-12)
    assert rep["summary"][init]["sd"] == pytest.approx(np.std(per_init[init], ddof=1), abs=1e-12)
  gains = [s["comparisons"][0]["gain"] for s in rep["scenarios"]]
  assert rep["comparison_summary"][0]["gain"]["mean"] == pytest.approx(np.mean(gains), abs=1e-12)

  missing = {m["run"]: m for m in rep["missing"]}
  assert missing["inception_v3-all-lr0.001-radimagenet-fold0"]["reason"] == "status failed"
  assert missing["nopreds"]["reason"] == "no run.json"
  files = {os.path.basename(f) for f in rep["files"]}
  assert files == {"report.md", "report.json", "roc_curves.png", "auc_by_init.png",
                   "roc_curves.pdf", "auc_by_init.pdf"}
  for f in rep["files"]:
    assert os.path.isfile(f) and os.path.dirname(f) == os.path.abspath(root)
  with open(os.path.join(root, "report.json")) as f:
    assert json.load(f) == rep
  md = open(os.path.join(root, "report.md")).read()
  assert "inception_v3-all-lr0.001-radimagenet-fold0" in md and "## Missing runs" in md
  assert "![roc_curves.png](roc_curves.png)" in md


def test_run_directories_baseline_and_out_dir(tmp_path):
  root = make_sweep(str(tmp_path / "sweep"))
  a = os.path.join(root, "runs", "resnet50-top10-lr0.001-radimagenet-fold0")
  b = os.path.join(root, "runs", "resnet50-top10-lr0.001-imagenet-fold0")
  rep = write_report([a, b], baseline="radimagenet")
  assert rep["kind"] == "runs" and rep["out_dir"] == os.path.join(root, "runs")
  assert rep["comparisons"] == [["imagenet", "radimagenet"]] and rep["missing"] == []
  da, db = _csv(os.path.join(a, "predictions.csv")), _csv(os.path.join(b, "predictions.csv"))
  ids = sorted(da)
  want = delong_test([da[i][0] for i in ids], [db[i][1] for i in ids], [da[i][1] for i in ids])
  assert rep["scenarios"][0]["comparisons"][0]["test"]["z"] == pytest.approx(want["z"], abs=1e-12)
  out = tmp_path / "elsewhere"
  rep2 = write_report([a, b], out_dir=out)
  assert (out / "report.md").is_file() and rep2["baseline"] == "imagenet"


def test_different_test_ids_are_flagged_not_tested(tmp_path):
  rng = np.random.default_rng(1)
  labels = np.array([0, 1] * 10)
  ids = [f"i{k}" for k in range(20)]
  _run(str(tmp_path / "a"), rng, "resnet50", "radimagenet", "all", 0.01, None, ids, labels, 1.0)
  _run(str(tmp_path / "b"), rng, "resnet50", "imagenet", "all", 0.01, None,
       ids[:-1] + ["other"], labels, 1.0)
  rep = write_report([tmp_path / "a", tmp_path / "b"])
  comp = rep["scenarios"][0]["comparisons"][0]
  assert comp["test"] is None
  assert "ids differ (1 only in radimagenet, 1 only in imagenet)" in comp["note"]
  assert comp["gain"] is not None     # each init's own AUC is still reported


def test_a_single_class_test_set_is_noted_not_fatal(tmp_path):
  rng = np.random.default_rng(4)
  ids = [f"i{k}" for k in range(10)]
  for init in INITS:
    _run(str(tmp_path / init), rng, "resnet50", init, "all", 0.01, None, ids, np.zeros(10, int),
         1.0)
  rep = write_report([tmp_path / i for i in INITS])
  res = rep["scenarios"][0]["inits"]["radimagenet"]
  assert res["auc"] is None and "needs both classes; got only label 0 (n=10)" in res["note"]
  comp = rep["scenarios"][0]["comparisons"][0]
  assert comp["gain"] is None and comp["test"] is None and "needs both classes" in comp["note"]
  assert rep["summary"]["radimagenet"]["n"] == 0


def test_multiclass_runs_have_no_delong_test(tmp_path):
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 3, 45)
  ids = [f"i{k}" for k in range(45)]
  for init in INITS:
    _run(str(tmp_path / init), rng, "resnet50", init, "all", 0.01, None, ids, labels, 1.0,
         classes=3)
  rep = write_report([tmp_path / i for i in INITS])
  assert rep["task"] == "multiclass" and rep["notes"]
  got = rep["scenarios"][0]["inits"]["imagenet"]["auc"]
  with open(tmp_path / "imagenet" / "predictions.csv") as f:
    rows = list(csv.DictReader(f))
  p = np.array([[float(r[f"score_{c}"]) for c in range(3)] for r in rows])
  want = skm.roc_auc_score([int(r["label"]) for r in rows], p, multi_class="ovr")
  assert got == pytest.approx(want, abs=1e-12)
  assert rep["scenarios"][0]["comparisons"][0]["test"] is None
  assert {os.path.basename(f) for f in rep["files"]} == {"auc_by_init.png", "auc_by_init.pdf",
                                                         "report.md", "report.json"}


def test_bad_inputs(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=r"empty is neither a sweep directory .* nor a run "):
    write_report(tmp_path / "empty")
  rng = np.random.default_rng(3)
  ids = [f"i{k}" for k in range(30)]
  labels = np.array([0, 1, 2] * 10)
  _run(str(tmp_path / "two"), rng, "resnet50", "a", "all", 0.01, None, ids, labels % 2, 1.0)
  _run(str(tmp_path / "three"), rng, "resnet50", "b", "all", 0.01, None, ids, labels, 1.0,
       classes=3)
  with pytest.raises(ValueError, match="different class lists"):
    write_report([tmp_path / "two", tmp_path / "three"])
  with pytest.raises(ValueError, match="baseline 'nope' is not one of the inits"):
    write_report([tmp_path / "two"], baseline="nope")
