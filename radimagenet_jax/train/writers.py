"""Process-0 metric writers (JSON lines + TensorBoard without TensorFlow), the progress display
and the images/s meter."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping



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
    # Non-finite values are written as null: a bare NaN is not valid JSON.
    line = {k: (v if math.isfinite(v) else None) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), "split": split, **line}) + "\n")
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
    self.enabled, self.total, self.start = enabled, total, start
    self._bar = None
    self._t0 = time.perf_counter()
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
      elapsed = time.perf_counter() - self._t0
      done = step - self.start
      eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
      print(f"step {step}/{self.total} {info} [elapsed {_clock(elapsed)}, ETA {_clock(eta)}]",
            flush=True)

  def log(self, message: str):
    if not self.enabled:
      return
    (self._bar.console.print if self._bar is not None else print)(message)

  def close(self):
    if self._bar is not None:
      self._bar.stop()


def _clock(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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
