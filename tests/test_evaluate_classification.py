"""radimagenet_jax.evaluate.classification against scikit-learn (confusion matrix, rates, AUCs) and
a brute-force Youden search; the predictions.csv round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from radimagenet_jax.evaluate import (binary_metrics, classification_metrics, delong_ci,
                                      multiclass_metrics, read_predictions, write_predictions)


def _binary(seed, n=120):
  rng = np.random.default_rng(seed)
  y = (rng.random(n) < 0.4).astype(int)
  s = 1 / (1 + np.exp(-(1.2 * y - 0.6 + rng.normal(size=n))))
  return y, np.round(s, 2)                          # rounding: ties at the thresholds


def _multiclass(seed, n=200, k=4):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
  p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  return y, p


def _plain(x):
  """True when x holds only JSON-ready Python types (no numpy scalars)."""
  if isinstance(x, dict):
    return all(isinstance(k, str) and _plain(v) for k, v in x.items())
  if isinstance(x, list):
    return all(_plain(v) for v in x)
  return x is None or type(x) in (int, float, str, bool)


def _check_rates(got, y, pred):
  tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
  assert got["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
  assert (got["tn"], got["fp"], got["fn"], got["tp"]) == (tn, fp, fn, tp)
  assert got["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
  assert got["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
  assert got["ppv"] == pytest.approx(skm.precision_score(y, pred))
  assert got["npv"] == pytest.approx(skm.precision_score(1 - y, 1 - pred))
  assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_equal_sklearn(seed):
  y, s = _binary(seed)
  got = binary_metrics(y, s, threshold=0.5)
  assert got["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
  assert (got["ci_low"], got["ci_high"]) == (delong_ci(y, s)["ci_low"], delong_ci(y, s)["ci_high"])
  assert (got["n"], got["n_positive"]) == (y.size, y.sum())
  assert got["prevalence"] == pytest.approx(y.mean())
  _check_rates(got["at_threshold"], y, (s >= 0.5).astype(int))
  # Youden: brute force over every distinct score as threshold (>= positive), highest on a tie.
  cands = np.unique(s)[::-1]
  j = [np.mean(s[y == 1] >= t) + np.mean(s[y == 0] < t) - 1 for t in cands]
  best = cands[int(np.argmax(j))]
  assert got["youden"]["threshold"] == best
  assert got["youden"]["youden_index"] == pytest.approx(max(j), abs=1e-12)
  _check_rates(got["youden"], y, (s >= best).astype(int))
  assert _plain(got)
  json.dumps(got, allow_nan=False)


def test_undefined_ratios_are_none():
  got = binary_metrics([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], threshold=0.9)
  assert got["at_threshold"]["ppv"] is None and got["at_threshold"]["sensitivity"] == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_metrics_equal_sklearn(seed):
  y, p = _multiclass(seed)
  got = multiclass_metrics(y, p, class_names=["a", "b", "c", "d"])
  assert got["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"),
                                     abs=1e-12)
  for c, row in enumerate(got["per_class"]):
    assert row["class"] == "abcd"[c]
    assert row["auc"] == pytest.approx(skm.roc_auc_score(y == c, p[:, c]), abs=1e-12)
    assert (row["ci_low"], row["ci_high"]) == (delong_ci(y == c, p[:, c])["ci_low"],
                                               delong_ci(y == c, p[:, c])["ci_high"])
  assert got["confusion_matrix"] == skm.confusion_matrix(y, p.argmax(1), labels=range(4)).tolist()
  assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
  assert [r["recall"] for r in got["per_class"]] == pytest.approx(
      list(skm.recall_score(y, p.argmax(1), average=None)))
  assert _plain(got)


def test_multiclass_absent_class_is_left_out_of_the_mean():
  y, p = _multiclass(3)
  y[y == 2] = 1
  got = multiclass_metrics(y, p)
  assert got["per_class"][2]["auc"] is None and got["auc_classes"] == 3
  want = np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in (0, 1, 3)])
  assert got["auc"] == pytest.approx(want)


def test_classification_metrics_dispatches():
  y, s = _binary(4)
  p = np.stack([1 - s, s], axis=1)
  got = classification_metrics(y, p, class_names=["benign", "malignant"])
  assert got["task"] == "binary" and got["class_names"] == ["benign", "malignant"]
  assert got["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
  assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
  assert got["confusion_matrix"] == skm.confusion_matrix(y, p.argmax(1)).tolist()
  y3, p3 = _multiclass(5, k=3)
  got3 = classification_metrics(y3, p3)
  assert got3["task"] == "multiclass" and got3["class_names"] == ["0", "1", "2"]
  assert got3["auc"] == pytest.approx(skm.roc_auc_score(y3, p3, multi_class="ovr"), abs=1e-12)
  assert _plain(got) and _plain(got3)


@pytest.mark.parametrize("labels,probs,match", [
    ([0, 1], [0.2, 0.8], r"probs must be 2-D"),
    ([0, 3], [[0.2, 0.8], [0.5, 0.5]], r"labels must be class indices 0..1"),
    ([0, 1, 1], [[0.2, 0.8], [0.5, 0.5]], r"one entry per row of probs"),
    ([0, 1], [[0.2, float("nan")], [0.5, 0.5]], r"probs has 1 non-finite values"),
])
def test_classification_metrics_bad_input(labels, probs, match):
  with pytest.raises(ValueError, match=match):
    classification_metrics(labels, probs)


def test_class_names_length_checked():
  with pytest.raises(ValueError, match="class_names has 3 names for 2 score columns"):
    classification_metrics([0, 1], [[0.2, 0.8], [0.5, 0.5]], class_names=["a", "b", "c"])


def test_predictions_round_trip(tmp_path):
  y, p = _multiclass(6, n=30, k=3)
  ids = [f"img{i:03d}" for i in range(30)]
  patients = [f"p,{i // 2}" for i in range(30)]       # a comma: quoted by the csv module
  path = write_predictions(tmp_path / "run" / "predictions.csv", ids, patients, y, p)
  with open(path) as f:
    assert f.readline().strip() == "id,patient,label,score_0,score_1,score_2"
  back = read_predictions(path)
  assert back.ids == ids and back.patients == patients
  np.testing.assert_array_equal(back.labels, y)
  np.testing.assert_array_equal(back.probs, p)          # bit for bit


def test_read_predictions_rejects_a_bad_header(tmp_path):
  path = tmp_path / "predictions.csv"
  path.write_text("id,label,score_0\na,0,0.5\n")
  with pytest.raises(ValueError, match="expected id,patient,label,score_0"):
    read_predictions(path)


def test_thresholds_chosen_on_validation_and_applied_to_test():
  """Youden and target-sensitivity thresholds by brute force on the validation scores; the test
  rates at those thresholds by scikit-learn."""
  yv, sv = _binary(5)
  yt, st = _binary(6)
  got = binary_metrics(yt, st, validation=(yv, sv), target_sensitivity=0.8)
  cands = np.unique(sv)[::-1]
  j = [np.mean(sv[yv == 1] >= t) + np.mean(sv[yv == 0] < t) - 1 for t in cands]
  best = cands[int(np.argmax(j))]
  assert got["youden"]["threshold"] == best and got["youden"]["chosen_on"] == "validation"
  assert got["youden"]["youden_index"] == pytest.approx(max(j), abs=1e-12)
  _check_rates(got["youden"], yt, (st >= best).astype(int))
  sens = max(t for t in cands if np.mean(sv[yv == 1] >= t) >= 0.8)
  assert got["at_target_sensitivity"]["threshold"] == sens
  _check_rates(got["at_target_sensitivity"], yt, (st >= sens).astype(int))
  # Without a validation set the thresholds come from the test set and say so.
  alone = binary_metrics(yt, st)
  assert alone["youden"]["chosen_on"].startswith("test (optimistic")
  one_class = binary_metrics(yt, st, validation=(np.zeros(5, int), np.arange(5.0)))
  assert "one class" in one_class["youden"]["chosen_on"]
  json.dumps(got, allow_nan=False)
