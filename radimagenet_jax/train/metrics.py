"""Process-0 metric writers (JSON lines + TensorBoard without TensorFlow), the progress bar and
the end-of-run summary of what the model learned."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping, Sequence

import numpy as np


class MetricWriter:
  """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors scalars to
  TensorBoard (tensorboardX) under ``tb/``. Disabled (no files) on processes other than 0."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, split: str, scalars: Mapping[str, float]):
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items() if v is not None}
    self._jsonl.write(json.dumps({"step": int(step), "split": split, **scalars}) + "\n")
    self._jsonl.flush()
    for key, value in scalars.items():
      self._tb.add_scalar(f"{split}/{key}", value, int(step))
    self._tb.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """A rich progress bar (step, loss, images/s, ETA) on process 0, or plain log lines."""

  def __init__(self, total: int, start: int, enabled: bool = True, bar: bool = True):
    self.enabled, self.total = enabled, total
    self._bar = None
    # Not a terminal (a log file, CI): plain lines, since rich would only draw the final bar.
    if enabled and bar and sys.stdout.isatty():
      from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                 TextColumn, TimeElapsedColumn, TimeRemainingColumn)
      self._bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                               TextColumn("ETA"), TimeRemainingColumn())
      self._task = self._bar.add_task("train", total=total, completed=start, info="")
      self._bar.start()

  def update(self, step: int, info: str):
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(self._task, completed=step, info=info)
    else:
      print(f"step {step}/{self.total} {info}", flush=True)

  def log(self, message: str):
    if not self.enabled:
      return
    (self._bar.console.print if self._bar is not None else print)(message)

  def close(self):
    if self._bar is not None:
      self._bar.stop()


class Throughput:
  """Images/s over the steps since the last call (host wall clock)."""

  def __init__(self):
    self.reset()
    self.total_images, self.total_seconds = 0, 0.0

  def reset(self):
    self._t, self._n = time.perf_counter(), 0

  def add(self, images: int):
    self._n += images

  def rate(self) -> float:
    now = time.perf_counter()
    dt, n = now - self._t, self._n
    self.total_images += n
    self.total_seconds += dt
    self._t, self._n = now, 0
    return n / dt if dt > 0 else 0.0

  def overall(self) -> float:
    return self.total_images / self.total_seconds if self.total_seconds else 0.0


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


def print_summary(summary: Mapping, console_print=print):
  """Human-readable end-of-run summary (a rich table when rich is available)."""
  ev = summary.get("eval") or {}
  console_print(f"\n{summary['model']} on {summary['dataset']} after {summary['step']} steps: "
                f"{summary['split']} loss {ev.get('loss', float('nan')):.4f}, "
                f"top-1 {ev.get('top1', 0):.3f} (majority-class baseline "
                f"{summary.get('chance_top1', 0):.3f}), top-5 {ev.get('top5', 0):.3f}"
                + (f"; {summary['images_per_second']:.1f} images/s (train)."
                   if summary.get("images_per_second") else "."))
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
