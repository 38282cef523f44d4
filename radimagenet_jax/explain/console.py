"""What the `gradcam` command prints: progress while it runs, a short summary and the files written.

``Reporter(total, enabled)`` is a context manager. On a terminal it draws a rich progress bar
(images done, ETA) and, while the bar is up, routes every log record (absl / Orbax / JAX warnings
included) through the bar's console so that a warning cannot tear it; elsewhere (a log file, CI)
it prints a plain progress line now and then (at most ~20 lines). During the run absl is silenced
below WARNING (Orbax's INFO chatter). Disabled (the library default), it prints nothing and leaves logging alone.
"""
from __future__ import annotations

import logging
import sys
import time


class Reporter:
  """Progress of a Grad-CAM run over ``total`` images; ``line`` prints past the bar."""

  def __init__(self, total: int, enabled: bool = True, what: str = "gradcam"):
    self.total, self.enabled, self.what = total, enabled, what
    self.done, self._bar, self._saved = 0, None, None
    self._every = max(1, total // 20)
    self._t0 = time.perf_counter()
    self._last_line = 0

  def __enter__(self):
    if not self.enabled:
      return self
    from absl import logging as absl_logging
    root = logging.getLogger()
    self._saved = (absl_logging.get_verbosity(), list(root.handlers), root.level)
    absl_logging.set_verbosity(absl_logging.WARNING)
    if sys.stdout.isatty():
      from rich.logging import RichHandler
      from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                 TimeElapsedColumn, TimeRemainingColumn)
      self._bar = Progress(TextColumn(f"[bold]{self.what}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("images"), TimeElapsedColumn(), TextColumn("ETA"),
                           TimeRemainingColumn())
      self._task = self._bar.add_task(self.what, total=self.total)
      self._bar.start()
      handler = RichHandler(console=self._bar.console, show_time=False, show_path=False)
      handler.setLevel(logging.WARNING)
      root.handlers = [handler]
    return self

  def advance(self, images: int) -> None:
    """Counts ``images`` more images done."""
    self.done += images
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(self._task, completed=self.done)
    elif self.done - self._last_line >= self._every or self.done >= self.total:
      self._last_line = self.done
      rate = self.done / max(time.perf_counter() - self._t0, 1e-9)
      print(f"{self.what}: {self.done}/{self.total} images ({rate:.1f} images/s)", flush=True)

  def line(self, text: str) -> None:
    if self.enabled:
      if self._bar is not None:
        self._bar.console.print(text, soft_wrap=True, highlight=False, markup=False)
      else:
        print(text, flush=True)

  def __exit__(self, *exc):
    if self._bar is not None:
      self._bar.stop()
      self._bar = None
    if self._saved is not None:
      from absl import logging as absl_logging
      verbosity, handlers, level = self._saved
      absl_logging.set_verbosity(verbosity)
      root = logging.getLogger()
      root.handlers, root.level = handlers, level
      self._saved = None
    return False


def _stat(block) -> str:
  if not block or block.get("mean") is None:
    return "n/a"
  sd = "" if block.get("sd") is None else f" +- {block['sd']:.3f}"
  return f"{block['mean']:.3f}{sd} (n={block['n']})"


def summary_lines(summary: dict) -> list[str]:
  """The end-of-run summary: counts, per-model Dice (mean +- SD), the paired comparison."""
  n, empty = summary["n_images"], summary["n_empty_masks"]
  excluded = "" if summary["settings"]["include_empty_masks"] else ", excluded from the statistics"
  lines = [f"gradcam: {n} images of {summary['dataset']}[{summary['split']}], {empty} without a "
           f"lesion (empty mask{excluded})"]
  for label, m in summary["models"].items():
    lines.append(f"  {label} ({m['architecture']}, {m['weights']}, preprocess {m['preprocess']}, "
                 f"layer {m['layer']}): Dice {_stat(m['dice'])}, IoU {_stat(m['iou'])}")
  comp = (summary.get("comparison") or {}).get("dice")
  if comp:
    test = comp.get("recommended_test")
    result = comp.get(test) or {}
    p = result.get("pvalue")
    a, b = list(summary["models"])
    diff = (comp.get("difference") or {}).get("mean")
    lines.append(f"  {a} vs {b}: Dice difference "
                 f"{'n/a' if diff is None else f'{diff:+.3f}'}, {test} p = "
                 f"{'n/a' if p is None else f'{p:.3g}'} (n={comp['n']}"
                 + (" patients, per-patient means)" if comp.get("unit") == "patient" else ")"))
  return lines
