"""`finetune`, `sweep` and `report` end to end on the demo lesion data (tiny config, ResNet50 at
32x32): model selection by validation loss, test predictions and metrics, resume of a finished
sweep, and the report's paired DeLong test recomputed from the runs' predictions."""
import csv
import json
import os

import jax
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import radimagenet_jax as rij
from radimagenet_jax import checkpoints, cli

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "finetune.py")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """A Keras .h5 file and a 16-class Orbax checkpoint of random ResNet50s (no training needed)."""
  root = tmp_path_factory.mktemp("weights")
  _, v1 = rij.models.create("resnet50", num_classes=2, rng=jax.random.key(1))
  rij.keras_io.save_h5(v1, "resnet50", str(root / "r50.weights.h5"))
  _, v16 = rij.models.create("resnet50", num_classes=16, rng=jax.random.key(2))
  checkpoints.save_variables(root / "r50_16", v16, model_name="resnet50", num_classes=16)
  return {"h5": str(root / "r50.weights.h5"), "orbax16": str(root / "r50_16"),
          "cache": str(root / "jax_cache")}


def _common(demo_data_dir, weights):
  return [f"--config.data_dir={demo_data_dir}",
          f"--config.compilation_cache_dir={weights['cache']}"]


def _predictions(run_dir):
  with open(os.path.join(run_dir, "predictions.csv")) as f:
    rows = list(csv.DictReader(f))
  return ([r["id"] for r in rows], np.array([int(r["label"]) for r in rows]),
          np.array([float(r["score_1"]) for r in rows]))


def test_finetune_keeps_the_lowest_validation_loss_and_predicts_the_test_fold(
    tmp_path, demo_data_dir, weights, capsys):
  work = tmp_path / "run"
  assert cli.main(["finetune", f"--config={CONFIG}:tiny,freeze=head,init={weights['orbax16']}",
                   f"--workdir={work}", *_common(demo_data_dir, weights)]) == 0
  out = capsys.readouterr().out
  assert "wrote" in out and "test (" in out
  run = json.load(open(work / "run.json"))
  assert run["status"] == "done" and run["fold"] == 0 and run["freeze"] == "head"
  assert "16 classes" in run["note"]                 # backbone of a 16-class checkpoint
  assert run["trainable_params"] == 2048 * 2 + 2      # the head only
  # `best` is the evaluation with the lowest validation loss in metrics.jsonl.
  evals = [json.loads(l) for l in open(work / "metrics.jsonl")]
  evals = [e for e in evals if e["split"] == "validation"]
  lowest = min(evals, key=lambda e: e["loss"])
  assert checkpoints.latest_step(work / "best") == lowest["step"] == run["best_step"]
  # Predictions cover the test fold exactly once; metrics.json is recomputable from them.
  splits = json.load(open(work / "splits.json"))
  ids, labels, scores = _predictions(work)
  assert sorted(ids) == sorted(splits["test"])
  assert not set(splits["test"]) & (set(splits["train"]) | set(splits["validation"]))
  metrics = json.load(open(work / "metrics.json"))
  assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
  assert metrics["split"] == "test" and metrics["n"] == len(ids)
  # The Youden threshold is chosen on the validation set (not on test) and applied to test.
  assert metrics["youden"]["chosen_on"] == "validation"
  assert metrics["youden"]["tp"] == int(np.sum((scores >= metrics["youden"]["threshold"])
                                               & (labels == 1)))


def test_sweep_resumes_and_report_recomputes_the_paired_delong_test(
    tmp_path, demo_data_dir, weights, capsys):
  work = tmp_path / "sweep"
  args = ["sweep", f"--config={CONFIG}:tiny", f"--workdir={work}",
          "--config.sweep_inits=imagenet,random", f"--config.inits.imagenet.resnet50={weights['h5']}",
          *_common(demo_data_dir, weights)]
  assert cli.main(args) == 0
  with open(work / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["init"] for r in rows) == ["imagenet", "random"]
  assert all(r["status"] == "done" for r in rows)
  capsys.readouterr()
  assert cli.main(args) == 0                         # a finished sweep: every run is skipped
  assert capsys.readouterr().out.count("finished, skipped") == 2

  assert cli.main(["report", str(work)]) == 0
  report = json.load(open(work / "report.json"))
  assert os.path.isfile(work / "report.md")
  (scenario,) = report["scenarios"]
  (comparison,) = scenario["comparisons"]
  assert (comparison["a"], comparison["b"]) == ("imagenet", "random")
  run_a, run_b = (work / "runs" / f"resnet50-head-lr0.01-{i}-fold0" for i in ("imagenet", "random"))
  ids_a, labels, scores_a = _predictions(run_a)
  ids_b, _, scores_b = _predictions(run_b)
  order = np.argsort(ids_b)[np.argsort(np.argsort(ids_a))]   # align b to a's ids
  with open(run_a / "predictions.csv") as f:
    patients = [r["patient"] for r in csv.DictReader(f)]
  expected = rij.evaluate.delong_test(labels, scores_a, scores_b[order], patients=patients)
  assert comparison["test"]["method"] == expected["method"]
  assert comparison["test"]["p_value"] == pytest.approx(expected["p_value"], rel=1e-9)
  assert comparison["auc_a"] == pytest.approx(roc_auc_score(labels, scores_a), abs=1e-12)

  # Grad-CAM over the sweep: each run explains its own held-out test images with its best/.
  cam = tmp_path / "cam"
  capsys.readouterr()
  gradcam_config = os.path.join(os.path.dirname(CONFIG), "gradcam.py")
  assert cli.main(["gradcam", f"--config={gradcam_config}:tiny", f"--workdir={cam}",
                   f"--config.sweep={work}", f"--config.data_dir={demo_data_dir}",
                   "--config.max_images=0"]) == 0
  out = capsys.readouterr().out
  summary = json.load(open(cam / "summary.json"))
  # At 32 px ResNet50's conv5 map is 1x1: every Grad-CAM map is constant, and it says so.
  assert "WARNING: COLLAPSED GRAD-CAM" in out and len(summary["warnings"]) == 2
  assert summary["n_runs"] == 2 and summary["init_order"] == ["imagenet", "random"]
  with open(cam / "per_image.csv") as f:
    rows = list(csv.DictReader(f))
  for run in (run_a, run_b):
    splits = json.load(open(run / "splits.json"))
    explained = [r["id"] for r in rows if r["run"] == run.name]
    assert sorted(explained) == sorted(splits["test"])          # held-out images, each once
    assert not set(explained) & (set(splits["train"]) | set(splits["validation"]))
  kept = [r for r in rows if r["mask_empty"] == "False"]
  dice = {i: {r["id"]: float(r["dice"]) for r in kept if r["init"] == i} for i in summary["inits"]}
  for init in summary["inits"]:                                  # one scenario: its mean
    assert summary["inits"][init]["mean_dice"] == pytest.approx(np.mean(list(dice[init].values())))
  patient = {r["id"]: r["patient"] for r in kept}
  pats = sorted(set(patient.values()))
  means = {i: [np.mean([d for k, d in dice[i].items() if patient[k] == p]) for p in pats]
           for i in summary["inits"]}
  comp = summary["comparisons"][0]["dice"]
  assert comp["unit"] == "patient" and comp["n"] == len(pats)
  assert comp["difference"]["mean"] == pytest.approx(np.mean(np.subtract(*means.values())))
  assert (cam / "panel.png").is_file() and (cam / "panel.pdf").is_file()


def test_evaluate_on_a_fine_tuning_run_uses_the_runs_own_sets(tmp_path, demo_data_dir, weights,
                                                              capsys):
  # The lesion set's own 'validation' split is not the run's: with folds most of it is in the run's
  # training set. `evaluate` defaults to the run's validation set (the one `best` was chosen on)
  # and reaches its test fold; a --config with preprocess=auto takes the run's resolved mode.
  work = tmp_path / "run"
  common = _common(demo_data_dir, weights)
  assert cli.main(["finetune", f"--config={CONFIG}:tiny,freeze=head,init=random",
                   f"--workdir={work}", *common]) == 0
  run = json.load(open(work / "run.json"))
  evals = [json.loads(l) for l in open(work / "metrics.jsonl")]
  last = [e for e in evals if e["split"] == "validation"][-1]
  trained = capsys.readouterr().out   # the training log: 2 classes, so no top-5 (always 1)
  assert "validation: loss" in trained and "top-5" not in trained
  assert cli.main(["evaluate", f"--workdir={work}"]) == 0
  result = json.load(open(work / f"eval_validation_step{last['step']}.json"))
  assert result["eval"]["loss"] == pytest.approx(last["loss"], rel=1e-5)   # the same examples
  assert cli.main(["evaluate", f"--config={CONFIG}:tiny", f"--workdir={work}", "--split", "test",
                   "--step", str(run["best_step"]), "--config.eval_steps=0", *common]) == 0
  test = json.load(open(work / f"eval_test_step{run['best_step']}.json"))
  metrics = json.load(open(work / "metrics.json"))   # computed with best/ on the test fold
  assert test["eval"]["count"] == metrics["n"]
  assert test["eval"]["top1"] == pytest.approx(metrics["accuracy"], abs=1e-6)
  # A binary task: the AUC with its DeLong CI (the run's own test AUC), no top-5 (always 1).
  assert test["auc"]["auc"] == pytest.approx(metrics["auc"], abs=1e-6)
  out = capsys.readouterr().out
  assert f"AUC {test['auc']['auc']:.3f} (" in out and "top-5" not in out
