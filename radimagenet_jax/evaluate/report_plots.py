"""Rendering of the comparison report (report.py computes it): the PNGs and report.md.

``draw`` writes ``roc_curves.png`` (binary tasks: one panel per scenario, one pooled out-of-fold
ROC curve per init) and ``auc_by_init.png`` (every scenario's AUC as a point, grouped by model, one
column per init, a bar at each mean: the layout of the paper's Figures 3-4). ``markdown`` renders
the report dict as report.md. matplotlib with the Agg backend, one figure per file: it stays fast.
"""
from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from radimagenet_jax.evaluate import roc  # noqa: E402


def _colors(inits) -> dict:
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  return {init: cycle[i % len(cycle)] for i, init in enumerate(inits)}


def _roc_figure(report: dict, pooled: dict, path: str) -> None:
  scenarios = report["scenarios"]
  cols = min(4, len(scenarios))
  rows = math.ceil(len(scenarios) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
  colors = _colors(report["inits"])
  for ax in axes.flat[len(scenarios):]:
    ax.set_axis_off()
  for ax, sc in zip(axes.flat, scenarios):
    for init, res in sc["inits"].items():
      if res["auc"] is None:                 # no curve on a one-class test set
        continue
      _, labels, probs = pooled[sc["model"], sc["freeze"], sc["lr"], init]
      fpr, tpr, _ = roc.roc_curve(labels, probs[:, 1])
      ax.plot(fpr, tpr, color=colors[init], lw=1.2, label=f"{init} {res['auc']:.3f}")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", title=sc["scenario"])
    ax.title.set_fontsize(8)
    ax.set_xlabel("1 - specificity", fontsize=7)
    ax.set_ylabel("sensitivity", fontsize=7)
    ax.tick_params(labelsize=6)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=6, loc="lower right", title="AUC", title_fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _strip_figure(report: dict, path: str) -> None:
  inits = report["inits"]
  models = list(dict.fromkeys(s["model"] for s in report["scenarios"]))
  colors = _colors(inits)
  width = 0.8 / max(len(inits), 1)
  fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(models) * max(len(inits), 1)), 3.6))
  for m, model in enumerate(models):
    for k, init in enumerate(inits):
      aucs = [s["inits"][init]["auc"] for s in report["scenarios"]
              if s["model"] == model and init in s["inits"] and s["inits"][init]["auc"] is not None]
      if not aucs:
        continue
      x0 = m + (k - (len(inits) - 1) / 2) * width
      # Deterministic spread instead of random jitter: the same report draws the same picture.
      spread = np.linspace(-0.3, 0.3, len(aucs)) * width if len(aucs) > 1 else np.zeros(1)
      ax.scatter(x0 + spread, aucs, s=14, color=colors[init], alpha=0.8,
                 label=init if m == 0 else None, zorder=3)
      ax.hlines(np.mean(aucs), x0 - 0.4 * width, x0 + 0.4 * width, color="k", lw=1.5, zorder=4)
  ax.set_xticks(range(len(models)), models, fontsize=8)
  ax.set_ylabel("AUC" + (" (macro one-vs-rest)" if report["task"] == "multiclass" else ""))
  ax.set_title("AUC per scenario, by model and initialisation (bar: mean)", fontsize=9)
  ax.grid(axis="y", color="0.9", zorder=0)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def draw(report: dict, pooled: dict, out_dir: str) -> list:
  """Writes the report's PNGs into ``out_dir``; returns their paths (none without scenarios).

  ``pooled[(model, freeze, lr, init)]`` holds a scenario's pooled (ids, labels, probs).
  """
  files = []
  if not report["scenarios"]:
    return files
  if report["task"] == "binary":
    files.append(os.path.join(report["out_dir"], "roc_curves.png"))
    _roc_figure(report, pooled, files[-1])
  files.append(os.path.join(report["out_dir"], "auc_by_init.png"))
  _strip_figure(report, files[-1])
  return files


def _f(x, digits: int = 3) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


def _pct(g) -> str:
  return "–" if g is None else f"{100 * g:+.1f}%"


def _p(p) -> str:
  return "–" if p is None else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def _table(head: list, rows: list) -> list:
  return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
          + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""])


def markdown(report: dict) -> str:
  """report.md: summaries, per-scenario AUCs and tests, per-fold tests, missing runs, figures."""
  inits, scenarios = report["inits"], report["scenarios"]
  out = ["# Fine-tuning comparison report", "",
         f"- Source ({report['kind']}): " + ", ".join(f"`{s}`" for s in report["sources"]),
         f"- Task: {report['task']}; classes: {report['class_names']}",
         f"- Inits: {', '.join(inits)}; baseline: {report['baseline']}",
         "- Every number is recomputed from the runs' predictions.csv. AUC: pooled out-of-fold "
         "predictions, 95% DeLong CI; paired two-sided DeLong test on the same test ids; "
         "gain = (AUC_a - AUC_b) / AUC_b.", ""]
  out += ["## AUC per init over scenarios", ""] + _table(
      ["init", "scenarios", "mean AUC", "SD", "min", "max"],
      [[i, s["n"], _f(s["mean"]), _f(s["sd"]), _f(s["min"]), _f(s["max"])]
       for i, s in report["summary"].items()])
  out += ["### By model", ""] + _table(
      ["model", "init", "scenarios", "mean AUC", "SD"],
      [[m, i, s["by_model"][m]["n"], _f(s["by_model"][m]["mean"]), _f(s["by_model"][m]["sd"])]
       for m in dict.fromkeys(sc["model"] for sc in scenarios)
       for i, s in report["summary"].items() if m in s["by_model"]])
  if report["comparison_summary"]:
    out += ["## Comparisons", ""] + _table(
        ["a vs b", "scenarios", "mean gain", "SD gain", "tested", "a better (p<0.05)",
         "b better (p<0.05)"],
        [[f"{c['a']} vs {c['b']}", c["n_scenarios"], _pct(c["gain"]["mean"]),
          _pct(c["gain"]["sd"]).lstrip("+"), c["n_tested"], c["a_better_p05"], c["b_better_p05"]]
         for c in report["comparison_summary"]])
  rows = []
  for sc in scenarios:
    cells = [sc["scenario"]]
    for i in inits:
      r = sc["inits"].get(i)
      cells.append("–" if r is None else f"{_f(r['auc'])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}]"
                   + (f" (folds {_f(r['fold_auc_mean'])} ± {_f(r['fold_auc_sd'])})"
                      if r["n_folds"] > 1 else "") + (f" ({r['note']})" if r["note"] else ""))
    for c in sc["comparisons"]:
      t = c["test"] or {}
      cells.append(f"{_pct(c['gain'])} / z {_f(t.get('z'), 2)} / p {_p(t.get('p_value'))}"
                   + (f" ({c['note']})" if c["note"] else ""))
    rows.append(cells + ([f"missing: {', '.join(sc['missing'])}"] if sc["missing"] else [""]))
  pairs = [f"{a} vs {b}: gain / z / p" for a, b in report["comparisons"]]
  out += ["## Scenarios", ""] + _table(["scenario"] + [f"{i} AUC [95% CI]" for i in inits]
                                       + pairs + ["notes"], rows)
  fold_rows = [[sc["scenario"], f["fold"], f"{c['a']} vs {c['b']}", _f((f["test"] or {}).get(
      "auc_a")), _f((f["test"] or {}).get("auc_b")), _f((f["test"] or {}).get("z"), 2),
      _p((f["test"] or {}).get("p_value")), f["note"] or ""]
      for sc in scenarios for c in sc["comparisons"] for f in c["folds"]]
  if fold_rows:
    out += ["## Per-fold paired DeLong tests", ""] + _table(
        ["scenario", "fold", "a vs b", "AUC a", "AUC b", "z", "p", "note"], fold_rows)
  out += ["## Missing runs", ""]
  out += _table(["run", "init", "model", "freeze", "lr", "fold", "status", "reason"],
                [[m[k] for k in ("run", "init", "model", "freeze", "lr", "fold", "status",
                                 "reason")] for m in report["missing"]]) \
      if report["missing"] else ["None: every run is done and has predictions.", ""]
  if report["notes"]:
    out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
  pngs = [f for f in report["files"] if f.endswith(".png")]
  if pngs:
    out += ["## Figures", ""] + [f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in pngs]
  return "\n".join(out) + "\n"
