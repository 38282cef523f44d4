"""What `evaluate` prints: the AUC with its DeLong CI for a binary task, top-5 only above 5 classes."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from radimagenet_jax.evaluate import command, roc
from radimagenet_jax.train import summary


def _summary(n_classes, auc=None):
  names = [f"c{i}" for i in range(n_classes)]
  out = {"model": "resnet50", "dataset": "d", "split": "test", "step": 3, "chance_top1": 0.5,
         "eval": {"loss": 0.7, "top1": 0.6, "top5": 1.0}, "per_class": [], "class_names": names,
         "images_per_second": 0.0}
  if auc:
    out["auc"] = auc
  return out


def test_binary_auc_is_delong_on_the_second_class_probability():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 60)
  p1 = np.clip(labels * 0.3 + rng.random(60) * 0.7, 0, 1)
  probs = np.stack([1 - p1, p1], -1)
  auc = command.binary_auc(labels, probs, ["benign", "malignant"])
  assert auc["auc"] == pytest.approx(roc_auc_score(labels, p1), abs=1e-12)
  ci = roc.delong_ci(labels, p1)
  assert (auc["ci_low"], auc["ci_high"]) == (ci["ci_low"], ci["ci_high"])
  assert auc["positive_class"] == "malignant" and auc["n"] == 60 and auc["method"] == "DeLong"
  assert command.binary_auc(np.zeros(5, int), probs[:5], ["a", "b"]) is None  # one class only
  assert command.binary_auc(labels, np.ones((60, 3)) / 3, ["a", "b", "c"]) is None


def test_summary_prints_auc_and_drops_top5_when_it_cannot_be_below_1():
  lines = []
  auc = {"auc": 0.61, "ci_low": 0.45, "ci_high": 0.77, "method": "DeLong", "positive_class": "c1",
         "n_cases": 20, "n_controls": 30, "unit": "image"}
  summary.print_summary(_summary(2, auc), console_print=lines.append)
  text = "\n".join(lines)
  assert "top-5" not in text
  assert ("AUC 0.610 (95% CI 0.450-0.770, DeLong; positive class 'c1', 20 cases / 30 controls, "
          "unit: image) - the CI includes 0.5: not distinguishable from chance") in text
  lines.clear()
  summary.print_summary(_summary(6), console_print=lines.append)
  assert "top-5 1.000" in lines[0] and not any(line.startswith("AUC") for line in lines)
