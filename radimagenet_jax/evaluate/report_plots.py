"""The report's figures (report.py computes the numbers), each as a PNG and a vector PDF.

``roc_curves`` (binary tasks; the layout of the paper's Figure 3): one panel per scenario; per
init the mean ROC curve over the folds (each fold's TPR interpolated on a common FPR grid, then
averaged) with a band of +-1 SD across folds, the chance diagonal, and in the legend the pooled
AUC, the mean +- SD of the fold AUCs and the number of test images and patients. With one fold
(no cross-validation) the curve is the run's own. ``auc_by_init``: every scenario's pooled AUC
with its 95% CI, grouped by model, one column per init, a bar at each mean, on the full [0, 1]
range with the chance line at 0.5, so that a null result looks like one.

Sizes are a journal's: 7.2 in (a two-column page width) wide at most, fonts of 6-8 pt, 300 dpi.
matplotlib with the Agg backend; PNG and PDF carry a Title (and the PNG a Software) metadata entry.
"""
from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from radimagenet_jax import _files  # noqa: E402
from radimagenet_jax.evaluate import roc  # noqa: E402

WIDTH = 7.2           # inches: a two-column journal page
DPI = 300
SOFTWARE = "radimagenet-jax report"
GRID = np.linspace(0.0, 1.0, 101)


def _colors(inits) -> dict:
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  return {init: cycle[i % len(cycle)] for i, init in enumerate(inits)}


def _save(fig, path: str, title: str) -> list:
  """Writes ``path`` (PNG) and the same figure as PDF; returns both paths."""
  written = _files.save_figure(fig, path, title, SOFTWARE, dpi=DPI)
  plt.close(fig)
  return written


def mean_roc(folds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(FPR grid, mean TPR, SD of TPR (ddof=0; zeros for one fold)) over folds of (labels, scores).

  Each fold's empirical ROC curve is interpolated on ``GRID`` (vertical averaging), starting at
  (0, 0); folds whose labels hold a single class are skipped (None when no fold is left)."""
  tprs = []
  for labels, scores in folds:
    if len(set(np.asarray(labels).tolist())) < 2:
      continue
    fpr, tpr, _ = roc.roc_curve(labels, scores)
    curve = np.interp(GRID, fpr, tpr)
    curve[0] = 0.0
    tprs.append(curve)
  if not tprs:
    return None
  tprs = np.array(tprs)
  return GRID, tprs.mean(axis=0), tprs.std(axis=0)


def _roc_figure(report: dict, pooled: dict, path: str) -> list:
  scenarios = report["scenarios"]
  cols = min(4, len(scenarios))
  rows = math.ceil(len(scenarios) / cols)
  side = min(WIDTH / cols, 2.6)
  fig, axes = plt.subplots(rows, cols, figsize=(side * cols, (side + 0.35) * rows + 0.5),
                           squeeze=False)
  colors = _colors(report["inits"])
  for ax in axes.flat[len(scenarios):]:
    ax.set_axis_off()
  for ax, sc in zip(axes.flat, scenarios):
    key = (sc["dataset"], sc["model"], sc["freeze"], sc["lr"])
    n_text, row = "", 0
    for init, res in reversed(list(sc["inits"].items())):   # first init on top
      if res["auc"] is None:                 # no curve on a one-class test set
        continue
      folds = [(y, p[:, 1]) for y, p in pooled[key + (init, "folds")]]
      # Folds of one class each (no per-fold curve): the pooled curve, without a band.
      fpr, tpr, sd = mean_roc(folds) or mean_roc([(pooled[key + (init,)][1],
                                                   pooled[key + (init,)][2][:, 1])])
      ax.fill_between(fpr, np.clip(tpr - sd, 0, 1), np.clip(tpr + sd, 0, 1), color=colors[init],
                      alpha=0.18, lw=0)
      ax.plot(fpr, tpr, color=colors[init], lw=1.1)
      spread = (f" ({res['fold_auc_mean']:.2f}±{res['fold_auc_sd']:.2f})"
                if res.get("fold_auc_sd") is not None else "")
      # The AUCs in the panel's empty corner, in the init's colour (one legend for the figure).
      ax.text(0.97, 0.05 + 0.09 * row, f"AUC {res['auc']:.3f}{spread}", color=colors[init],
              fontsize=6, ha="right", va="bottom", transform=ax.transAxes)
      row += 1
      n_text = n_text or (f"n = {res['n']} images" + (f", {res['n_patients']} pat."
                                                      if res.get("n_patients") else ""))
    ax.text(0.97, 0.05 + 0.09 * row, n_text, color="0.35", fontsize=5.5, ha="right", va="bottom",
            transform=ax.transAxes)
    ax.plot([0, 1], [0, 1], color="0.55", lw=0.7, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), aspect="equal", xticks=[0, 0.5, 1], yticks=[0, 0.5, 1])
    lr = sc["lr"] if sc["lr"] is None else f"{sc['lr']:g}"
    ax.set_title(f"{sc['model']}\n{sc['freeze']}, lr {lr}", fontsize=6.5, pad=3,
                 linespacing=1.25)
    ax.set_xlabel("1 - specificity", fontsize=6.5, labelpad=1)
    ax.set_ylabel("sensitivity", fontsize=6.5, labelpad=1)
    ax.tick_params(labelsize=5.5, length=2, pad=1)
  handles = [plt.Line2D([], [], color=colors[i], lw=1.2) for i in report["inits"]]
  handles.append(plt.Line2D([], [], color="0.55", lw=0.7, ls="--"))
  fig.legend(handles, list(report["inits"]) + ["chance"], loc="upper center", ncol=len(handles),
             fontsize=7, frameon=False, bbox_to_anchor=(0.5, 1.0))
  fig.text(0.5, 0.0, "Curves: mean over folds (band ±1 SD); AUC: pooled out-of-fold (fold mean ± "
           "SD)", fontsize=6, ha="center", va="bottom")
  height = fig.get_figheight()   # the legend and the footnote keep 0.25 in each, whatever the rows
  fig.tight_layout(pad=0.4, w_pad=0.6, h_pad=1.4, rect=(0, 0.2 / height, 1, 1 - 0.25 / height))
  return _save(fig, path, "ROC curves and AUC per scenario: mean over folds, band +-1 SD, per init")


def _strip_figure(report: dict, path: str) -> list:
  inits = report["inits"]
  models = list(dict.fromkeys(s["model"] for s in report["scenarios"]))
  colors = _colors(inits)
  width = 0.8 / max(len(inits), 1)
  fig, ax = plt.subplots(figsize=(min(WIDTH, max(3.5, 1.2 * len(models) * max(len(inits), 1))),
                                  2.8))
  for m, model in enumerate(models):
    for k, init in enumerate(inits):
      res = [s["inits"][init] for s in report["scenarios"]
             if s["model"] == model and init in s["inits"] and s["inits"][init]["auc"] is not None]
      if not res:
        continue
      aucs = np.array([r["auc"] for r in res])
      x0 = m + (k - (len(inits) - 1) / 2) * width
      # Deterministic spread instead of random jitter: the same report draws the same picture.
      x = x0 + (np.linspace(-0.3, 0.3, len(aucs)) * width if len(aucs) > 1 else np.zeros(1))
      lo = np.array([r["auc"] - r["ci_low"] if r["ci_low"] is not None else 0.0 for r in res])
      hi = np.array([r["ci_high"] - r["auc"] if r["ci_high"] is not None else 0.0 for r in res])
      ax.errorbar(x, aucs, yerr=[lo, hi], fmt="o", ms=3, color=colors[init], elinewidth=0.7,
                  capsize=1.2, alpha=0.85, label=init if m == 0 else None, zorder=3)
      ax.hlines(aucs.mean(), x0 - 0.4 * width, x0 + 0.4 * width, color="k", lw=1.3, zorder=4)
  ax.axhline(0.5, color="0.4", lw=0.8, ls="--", zorder=1)
  ax.text(len(models) - 0.5, 0.505, "chance", fontsize=6, ha="right", va="bottom", color="0.3")
  ax.set_xticks(range(len(models)), models, fontsize=7)
  ax.set_xlim(-0.5, len(models) - 0.5)
  ax.set_ylim(0, 1)
  ax.tick_params(axis="y", labelsize=6.5)
  ax.set_ylabel("AUC" + (" (macro one-vs-rest)" if report["task"] == "multiclass" else
                         " (95% CI)"), fontsize=7)
  ax.set_title("AUC per scenario by model and init (bar: mean)", fontsize=8)
  ax.grid(axis="y", color="0.92", zorder=0)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=6, loc="lower left", frameon=False)
  fig.tight_layout(pad=0.4)
  return _save(fig, path, "AUC per scenario with 95% CI, by model and initialisation")


def draw(report: dict, pooled: dict, out_dir: str) -> list:
  """Writes the report's figures into ``out_dir`` (PNG + PDF each); returns their paths (none
  without scenarios). ``pooled[key + (init, "folds")]`` holds a scenario's per-fold (labels,
  probs), ``key`` = (dataset, model, freeze, lr)."""
  files = []
  if not report["scenarios"]:
    return files
  if report["task"] == "binary":
    files += _roc_figure(report, pooled, os.path.join(report["out_dir"], "roc_curves.png"))
  files += _strip_figure(report, os.path.join(report["out_dir"], "auc_by_init.png"))
  return files
