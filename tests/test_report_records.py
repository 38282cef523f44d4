"""`report` trusts no record: a truncated predictions.csv, a corrupt sweep.json or run.json, a
results.csv without header or binary, a backup copy of a run, an unwritable output directory are
each one line naming the file (and report.json / report.md are written atomically)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from radimagenet_jax import cli
from radimagenet_jax.evaluate import read_predictions, write_report
from tests.test_report import make_sweep

RUN = "resnet50-top10-lr0.001-radimagenet-fold0"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("sweep") / "sweep")
  make_sweep(root)
  for name in os.listdir(os.path.join(root, "runs")):   # the ids each run was to test
    pred = os.path.join(root, "runs", name, "predictions.csv")
    if os.path.isfile(pred):
      with open(os.path.join(root, "runs", name, "splits.json"), "w") as f:
        json.dump({"train": [], "validation": [], "test": read_predictions(pred).ids}, f)
  return root


@pytest.fixture
def sweep(sweep_dir, tmp_path):
  return shutil.copytree(sweep_dir, tmp_path / "sweep")


def _error(capsys, *args):
  assert cli.main(["report", *map(str, args)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  return err[0]


def test_a_truncated_predictions_csv_is_a_named_error_not_a_smaller_auc(sweep, capsys):
  pred = sweep / "runs" / RUN / "predictions.csv"
  lines = pred.read_text().splitlines(keepends=True)
  pred.write_text("".join(lines[:18]))                  # cut at a row boundary: 17 of 30 rows
  assert _error(capsys, sweep) == (
      f"radimagenet-jax report: error: {pred} has 17 rows; expected 30, one per test id in "
      "splits.json (truncated or mixed records); re-run the sweep command: it trains a damaged "
      "run again.")
  assert not os.path.exists(sweep / "report.json")


@pytest.mark.parametrize("name,content,expected", [
    ("sweep.json", b'{"inits": ["radimagenet", ', r"sweep.json is not valid JSON \(Expecting"),
    ("results.csv", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", r"results.csv is not text \(binary "
                                                            r"content\); expected a CSV with the "
                                                            r"header run,model,"),
    ("results.csv", b"resnet50-all,resnet50,radimagenet\n",
     r"results.csv starts with 'resnet50-all,resnet50,radimagenet'; expected the header run,"),
    (f"runs/{RUN}/run.json", b"", r"run.json is not valid JSON"),
])
def test_a_damaged_sweep_record_is_one_line_naming_the_file(sweep, capsys, name, content,
                                                            expected):
  (sweep / name).write_bytes(content)
  line = _error(capsys, sweep)
  assert line.startswith(f"radimagenet-jax report: error: {sweep / name} ")
  assert __import__("re").search(expected, line), line


def test_a_backup_copy_of_a_run_is_left_out(sweep):
  (sweep / "runs" / RUN / "spec.json").write_text(json.dumps({"name": RUN}))
  shutil.copytree(sweep / "runs" / RUN, sweep / "runs" / f"{RUN}.bak")
  report = write_report(str(sweep))
  assert not [s for s in report["scenarios"] for i in s["inits"].values()
              for f in i["folds"] if f["run"].endswith(".bak")]


def test_an_unwritable_output_directory_is_refused_before_any_work(sweep, capsys, monkeypatch):
  out = sweep / "out"
  out.mkdir()
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, m: os.fspath(p) != str(out) and real(p, m))
  line = _error(capsys, sweep, "--out", out)
  assert line == (f"radimagenet-jax report: error: the report's directory {out} cannot be "
                  f"written ({out} is read-only or not writable by this user); make it writable "
                  "or choose another directory")
  assert os.listdir(out) == []


def test_the_report_files_are_written_atomically(sweep, monkeypatch):
  from radimagenet_jax import _files
  written = []
  real = _files.write_text_atomic
  monkeypatch.setattr(_files, "write_text_atomic", lambda p, t: (written.append(p), real(p, t)))
  stale = sweep / "report.json.1a2b3c4d.tmp"      # left by a report killed while writing
  stale.write_text('{"kind": "sw')
  report = write_report(str(sweep))
  assert not stale.exists()
  assert written == [os.path.join(report["out_dir"], f) for f in ("report.md", "report.json")]
  assert json.load(open(sweep / "report.json"))["inits"] == report["inits"]
