"""Figures and Grad-CAM records are written atomically: a writer that fails midway (a kill, a full
disk) leaves the previous file intact and no temporary file behind (issue 34: a kill during a
write must not leave a truncated output where the good one was)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from radimagenet_jax import _files  # noqa: E402
from radimagenet_jax.explain import study  # noqa: E402


def _figure():
  fig, ax = plt.subplots(figsize=(2, 2))
  ax.plot([0, 1], [0, 1])
  return fig


def test_a_figure_failing_midway_keeps_the_previous_files(tmp_path, monkeypatch):
  path = str(tmp_path / "roc.png")
  written = _files.save_figure(_figure(), path, "ROC", "test")
  assert written == [path, str(tmp_path / "roc.pdf")]
  before = {p: open(p, "rb").read() for p in written}
  assert before[path][:8] == b"\x89PNG\r\n\x1a\n" and before[written[1]][:5] == b"%PDF-"
  assert b"ROC" in before[written[1]]  # the title in the PDF metadata

  fig = _figure()

  def half_then_fail(fname, **kw):  # writes part of a file, then dies as a full disk would
    with open(fname, "wb") as f:
      f.write(b"\x89PNG partial")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(fig, "savefig", half_then_fail)
  with pytest.raises(OSError, match="disk is full|No space"):
    _files.save_figure(fig, path, "ROC", "test")
  assert {p: open(p, "rb").read() for p in written} == before
  assert sorted(os.listdir(tmp_path)) == ["roc.pdf", "roc.png"]  # no temporary file left


def test_gradcam_csv_failing_midway_keeps_the_previous_file(tmp_path, monkeypatch):
  path = str(tmp_path / "per_image.csv")
  study.write_csv(path, [{"index": 0, "dice": 0.5}, {"index": 1, "dice": 0.25}])
  before = open(path).read()
  assert before.splitlines() == ["index,dice", "0,0.5", "1,0.25"]

  def fail(*a, **k):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError):
    study.write_csv(path, [{"index": 0, "dice": 0.9}])
  assert open(path).read() == before
  assert os.listdir(tmp_path) == ["per_image.csv"]
