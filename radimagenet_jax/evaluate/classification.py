"""Classification metrics of one model's test predictions, and the predictions.csv format.

``classification_metrics(labels, probs)`` is what a fine-tuning run saves as metrics.json: with two
classes, the binary metrics of the class-1 probability (AUC with DeLong CI; accuracy, sensitivity,
specificity, PPV, NPV and the confusion matrix at 0.5, at the Youden point and at a target
sensitivity, those two thresholds chosen on the validation set when it is given); with more,
accuracy, the confusion matrix and one-vs-rest AUCs with their macro mean. ``read_predictions`` and
``write_predictions`` handle predictions.csv: ``id,patient,label,score_0,...,score_{K-1}``.

Every result holds plain Python floats, ints, lists and None (JSON-ready); a ratio whose denominator
is 0 (e.g. PPV when nothing is called positive) is None.
"""
from __future__ import annotations

import csv
import io
import os
from typing import NamedTuple

import numpy as np

from radimagenet_jax import _files
from radimagenet_jax.evaluate import roc


def _ratio(num, den) -> float | None:
  return float(num) / float(den) if den else None


def _at_threshold(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
  """Confusion counts and rates when ``s >= threshold`` is called positive."""
  pred = s >= threshold
  tp = int(np.sum(pred & y))
  fp = int(np.sum(pred & ~y))
  fn = int(np.sum(~pred & y))
  tn = int(np.sum(~pred & ~y))
  return {"threshold": float(threshold), "accuracy": _ratio(tp + tn, y.size),
          "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
          "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
          # sklearn's layout: rows the true class (0, 1), columns the predicted class.
          "confusion_matrix": [[tn, fp], [fn, tp]], "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def youden_threshold(labels, scores) -> tuple[float, float]:
  """(threshold, J): the score threshold maximising J = sensitivity + specificity - 1.

  Candidates are the distinct scores (``>=`` calls positive); on a tie the highest threshold wins.
  """
  fpr, tpr, thr = roc.roc_curve(labels, scores)
  j = np.asarray(tpr[1:]) - np.asarray(fpr[1:])      # skip the inf threshold (nothing positive)
  best = int(np.argmax(j))
  return float(thr[1 + best]), float(j[best])


def sensitivity_threshold(labels, scores, target: float) -> float:
  """The highest score threshold (``>=`` calls positive) whose sensitivity is at least ``target``
  (so the most specific such rule)."""
  if not 0.0 < float(target) <= 1.0:
    raise ValueError(f"target sensitivity must be in (0, 1]; got {target!r}.")
  _, tpr, thr = roc.roc_curve(labels, scores)
  return float(thr[int(np.argmax(np.asarray(tpr) >= float(target) - 1e-12))])


def binary_metrics(labels, scores, threshold: float = 0.5, level: float = 0.95,
                   validation=None, target_sensitivity: float = 0.9) -> dict:
  """Metrics of a binary score (label 1 the positive class, higher score = more positive).

  Returns ``{"task": "binary", "n", "n_positive", "n_negative", "prevalence", "auc", "se",
  "ci_low", "ci_high", "ci_level", "at_threshold": {...}, "youden": {...},
  "at_target_sensitivity": {...}}``. Each of the three holds threshold, accuracy, sensitivity,
  specificity, ppv, npv, confusion_matrix ([[tn, fp], [fn, tp]]), the four counts and
  ``chosen_on``. ``validation=(labels, scores)``: the Youden threshold (max sensitivity +
  specificity - 1) and the most specific threshold reaching ``target_sensitivity`` are chosen on
  that set and applied here (``chosen_on`` "validation"; ``youden_index`` is the validation one).
  Without it (or with a one-class validation set) they are chosen on these labels themselves,
  ``chosen_on`` "test (optimistic)": the rates are then an upper bound, not an estimate.
  """
  y, s = roc.check_binary(labels, scores)
  ci = roc.delong_ci(y, s, level=level)
  chosen = "test (optimistic)"
  ref_y, ref_s = y, s
  if validation is not None:
    vy, vs = np.asarray(validation[0]), np.asarray(validation[1], np.float64)
    if vy.size and len(set(vy.tolist())) == 2:
      ref_y, ref_s = roc.check_binary(vy, vs, "validation scores")
      chosen = "validation"
    else:
      chosen = "test (optimistic: the validation set has one class)"
  thr, j = youden_threshold(ref_y, ref_s)
  sens_thr = sensitivity_threshold(ref_y, ref_s, target_sensitivity)
  return {"task": "binary", "n": int(y.size), "n_positive": int(y.sum()),
          "n_negative": int((~y).sum()), "prevalence": float(y.mean()),
          "auc": ci["auc"], "se": ci["se"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
          "ci_level": ci["level"],
          "at_threshold": dict(_at_threshold(y, s, threshold), chosen_on="fixed"),
          "youden": dict(_at_threshold(y, s, thr), youden_index=j, chosen_on=chosen),
          "at_target_sensitivity": dict(_at_threshold(y, s, sens_thr), chosen_on=chosen,
                                        target_sensitivity=float(target_sensitivity))}


def _check_probs(labels, probs, class_names=None) -> tuple[np.ndarray, np.ndarray, list]:
  """Validates (labels, probs) of a K-class problem; returns int labels, float probs, names."""
  p = np.asarray(probs, dtype=np.float64)
  y = np.asarray(labels)
  if p.ndim != 2 or p.shape[1] < 2:
    raise ValueError(f"probs must be 2-D (examples, classes >= 2); got shape {p.shape}.")
  if y.ndim != 1 or y.shape[0] != p.shape[0]:
    raise ValueError(f"labels must be 1-D with one entry per row of probs; got shapes {y.shape} "
                     f"and {p.shape}.")
  bad = ~np.isfinite(p)
  if bad.any():
    raise ValueError(f"probs has {int(bad.sum())} non-finite values (NaN or inf); the first in "
                     f"row {int(np.argwhere(bad)[0][0])}.")
  k = p.shape[1]
  if y.dtype.kind not in "biuf" or np.any((y < 0) | (y >= k) | (y != np.round(y))):
    values = sorted(set(y.tolist()))[:10]
    raise ValueError(f"labels must be class indices 0..{k - 1}; got {values}.")
  names = [str(c) for c in class_names] if class_names is not None else [str(c) for c in range(k)]
  if len(names) != k:
    raise ValueError(f"class_names has {len(names)} names for {k} score columns.")
  return y.astype(np.int64), p, names


def _confusion(y: np.ndarray, pred: np.ndarray, k: int) -> list:
  cm = np.zeros((k, k), np.int64)
  np.add.at(cm, (y, pred), 1)
  return cm.tolist()


def multiclass_metrics(labels, probs, class_names=None, level: float = 0.95) -> dict:
  """Accuracy (argmax), confusion matrix and one-vs-rest AUCs of a K-class problem.

  Returns ``{"task": "multiclass", "n", "n_classes", "class_names", "accuracy",
  "confusion_matrix" (rows true, columns predicted), "per_class": [{"class", "index", "n",
  "recall", "auc", "se", "ci_low", "ci_high"}], "auc" (macro mean of the one-vs-rest AUCs, as
  sklearn's ``roc_auc_score(multi_class="ovr", average="macro")``), "auc_classes", "ci_low": None,
  "ci_high": None}``. A class absent from ``labels`` has AUC None and is left out of the mean
  (``auc_classes`` counts the classes averaged).
  """
  y, p, names = _check_probs(labels, probs, class_names)
  k = p.shape[1]
  pred = np.argmax(p, axis=1)
  per_class, aucs = [], []
  for c in range(k):
    row = {"class": names[c], "index": c, "n": int(np.sum(y == c)),
           "recall": _ratio(np.sum((y == c) & (pred == c)), np.sum(y == c)),
           "auc": None, "se": None, "ci_low": None, "ci_high": None}
    if 0 < row["n"] < y.size:
      ci = roc.delong_ci(y == c, p[:, c], level=level)
      row.update(auc=ci["auc"], se=ci["se"], ci_low=ci["ci_low"], ci_high=ci["ci_high"])
      aucs.append(ci["auc"])
    per_class.append(row)
  return {"task": "multiclass", "n": int(y.size), "n_classes": k, "class_names": names,
          "accuracy": float(np.mean(pred == y)), "confusion_matrix": _confusion(y, pred, k),
          "per_class": per_class, "auc": float(np.mean(aucs)) if aucs else None,
          "auc_classes": len(aucs), "ci_low": None, "ci_high": None}


def classification_metrics(labels, probs, class_names=None, level: float = 0.95,
                           validation=None) -> dict:
  """The metrics a fine-tuning run saves: binary for 2 columns of ``probs``, multiclass for more.

  Two classes: ``binary_metrics(labels, probs[:, 1])`` (threshold 0.5) plus ``accuracy`` and
  ``confusion_matrix`` of the argmax (which differs from ``>= 0.5`` only for a probability of
  exactly 0.5), ``n_classes`` and ``class_names``; ``validation=(labels, probs)`` of the validation
  set chooses the Youden and target-sensitivity thresholds (see binary_metrics). More:
  ``multiclass_metrics``. Both have the keys ``task, n, n_classes, class_names, accuracy,
  confusion_matrix, auc, ci_low, ci_high``.
  """
  y, p, names = _check_probs(labels, probs, class_names)
  if p.shape[1] > 2:
    return multiclass_metrics(y, p, names, level=level)
  val = None if validation is None else (validation[0], np.asarray(validation[1])[:, 1])
  out = binary_metrics(y, p[:, 1], threshold=0.5, level=level, validation=val)
  pred = np.argmax(p, axis=1)
  out.update(n_classes=2, class_names=names, accuracy=float(np.mean(pred == y)),
             confusion_matrix=_confusion(y, pred, 2))
  return out


class Predictions(NamedTuple):
  """The contents of one predictions.csv: ids and patients (str), labels (int), probs (N, K)."""
  ids: list
  patients: list
  labels: np.ndarray
  probs: np.ndarray


def write_predictions(path, ids, patients, labels, probs) -> str:
  """Writes predictions.csv (``id,patient,label,score_0..score_{K-1}``); returns the path.

  Scores are written with ``repr`` so they read back bit for bit.
  """
  p = np.asarray(probs, dtype=np.float64)
  ids, patients, labels = list(ids), list(patients), np.asarray(labels).tolist()
  if p.ndim != 2 or not (len(ids) == len(patients) == len(labels) == p.shape[0]):
    raise ValueError(f"ids, patients, labels and probs (2-D) need one entry per example; got "
                     f"{len(ids)}, {len(patients)}, {len(labels)} and shape {p.shape}.")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(["id", "patient", "label"] + [f"score_{k}" for k in range(p.shape[1])])
  for i in range(p.shape[0]):
    w.writerow([ids[i], patients[i], int(labels[i])] + [repr(float(v)) for v in p[i]])
  _files.write_text_atomic(os.fspath(path), buf.getvalue())  # never half a file, even if killed
  return str(path)


def read_predictions(path) -> Predictions:
  """Reads predictions.csv into a ``Predictions`` (ids, patients, labels, probs)."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  if not rows:
    raise ValueError(f"{path} is empty; expected the header id,patient,label,score_0,...")
  head = rows[0]
  k = len(head) - 3
  want = ["id", "patient", "label"] + [f"score_{c}" for c in range(k)]
  if k < 1 or head != want:
    raise ValueError(f"{path} has header {','.join(head)}; expected id,patient,label,score_0,...")
  body = rows[1:]
  for i, r in enumerate(body):
    if len(r) != len(head):
      raise ValueError(f"{path} line {i + 2} has {len(r)} fields; expected {len(head)}.")
  try:
    labels = np.array([int(r[2]) for r in body], dtype=np.int64)
    probs = np.array([[float(v) for v in r[3:]] for r in body], dtype=np.float64).reshape(-1, k)
  except ValueError as e:
    raise ValueError(f"{path}: labels must be integers and scores numbers ({e}).") from None
  return Predictions([r[0] for r in body], [r[1] for r in body], labels, probs)
