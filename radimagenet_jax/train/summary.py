"""The end-of-run summary of what a classifier learned: per-class accuracy, the majority-class
baseline, and a printed table."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def per_class_report(confusion: np.ndarray, class_names: Sequence[str]) -> list[dict]:
  """Per-class support, accuracy (recall) and the class most often predicted instead."""
  confusion = np.asarray(confusion)
  rows = []
  for i, name in enumerate(class_names):
    support = int(confusion[i].sum())
    wrong = confusion[i].copy()
    wrong[i] = 0
    rows.append({"class": name, "support": support,
                 "accuracy": float(confusion[i, i] / support) if support else None,
                 "most_confused_with": class_names[int(wrong.argmax())] if wrong.any() else None})
  return rows


def chance_top1(confusion: np.ndarray) -> float:
  """Top-1 of always predicting the most frequent class: what 'learned nothing' scores."""
  support = np.asarray(confusion).sum(1)
  return float(support.max() / support.sum()) if support.sum() else 0.0


def build(config, step: int, ev: dict, class_names: Sequence[str],
          images_per_second: float) -> dict:
  """summary.json: the final evaluation, the majority baseline, per-class table and confusion."""
  ev = dict(ev)
  confusion = ev.pop("confusion")
  return {"model": config.model, "dataset": config.dataset, "split": config.eval_split,
          "step": int(step), "eval": ev, "images_per_second": images_per_second,
          "chance_top1": chance_top1(confusion),
          "per_class": per_class_report(confusion, class_names),
          "confusion": np.asarray(confusion).tolist(), "class_names": list(class_names)}


def print_summary(summary: Mapping, console_print=print):
  """Human-readable end-of-run summary (a rich table when rich is available)."""
  ev = summary.get("eval") or {}
  n_classes = len(summary.get("class_names") or ()) or None
  # Top-5 of a task with 5 classes or fewer is 1 by construction: not printed.
  top5 = f", top-5 {ev.get('top5', 0):.3f}" if n_classes is None or n_classes > 5 else ""
  console_print(f"\n{summary['model']} on {summary['dataset']} after {summary['step']} steps: "
                f"{summary['split']} loss {ev.get('loss', float('nan')):.4f}, "
                f"top-1 {ev.get('top1', 0):.3f} (majority-class baseline "
                f"{summary.get('chance_top1', 0):.3f}){top5}"
                + (f"; {summary['images_per_second']:.1f} images/s (train)."
                   if summary.get("images_per_second") else "."))
  auc = summary.get("auc")
  if auc:
    ci = ("no CI (fewer than 2 cases or controls)" if auc.get("ci_low") is None else
          f"95% CI {auc['ci_low']:.3f}-{auc['ci_high']:.3f}, {auc.get('method', 'DeLong')}")
    chance = (" - the CI includes 0.5: not distinguishable from chance"
              if auc.get("ci_low") is not None and auc["ci_low"] <= 0.5 <= auc["ci_high"] else "")
    console_print(f"AUC {auc['auc']:.3f} ({ci}; positive class {auc.get('positive_class')!r}, "
                  f"{auc.get('n_cases')} cases / {auc.get('n_controls')} controls, unit: "
                  f"{auc.get('unit', 'image')}){chance}")
  rows = summary.get("per_class") or []
  if not rows:
    return
  try:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"Per-class accuracy ({summary['split']})")
    for col in ("class", "support", "accuracy", "most confused with"):
      table.add_column(col)
    for r in rows:
      acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
      table.add_row(str(r["class"]), str(r["support"]), acc, str(r["most_confused_with"] or "-"))
    Console().print(table)
  except ImportError:
    for r in rows:
      console_print(f"  {r['class']:<30} n={r['support']:<5} acc={r['accuracy']}")
