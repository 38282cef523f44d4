"""A sweep trusts no record it did not check (fake runs, no training): damaged records re-run,
locked runs are skipped, changed settings are refused, a full disk stops in one line, SIGTERM
stops after the run, killed writers' temporary files go, records honour the umask."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat

import pytest

from radimagenet_jax import _files, cli
from radimagenet_jax.finetune import records, scenarios, sweep
from radimagenet_jax.train import preemption
from tests.test_sweep import FakeRun, read_csv, settings

ALL = scenarios.preset_runs("demo", ("demo",))
RUNS = ALL[:4]
QUIET = {"log": lambda _: None}


def _done(workdir):
  sweep.run_sweep(settings(ALL), workdir, RUNS, FakeRun(), **QUIET)
  return [os.path.join(workdir, "runs", r.name) for r in RUNS]


def _snapshot(root):
  return {os.path.join(d, f): open(os.path.join(d, f), "rb").read()
          for d, _, files in os.walk(root) for f in files}


@pytest.mark.parametrize("damage", ["truncate_predictions", "corrupt_metrics", "other_ids",
                                    "delete_splits", "binary_run_json_status_kept"])
def test_a_damaged_finished_run_is_run_again(tmp_path, damage):
  dirs = _done(tmp_path)
  target = dirs[1]
  pred = os.path.join(target, "predictions.csv")
  if damage == "truncate_predictions":   # cut at a row boundary: 2 of 4 rows
    lines = open(pred).read().splitlines(keepends=True)
    open(pred, "w").write("".join(lines[:3]))
  elif damage == "corrupt_metrics":
    open(os.path.join(target, "metrics.json"), "w").write('{"auc": 0.7, ')
  elif damage == "other_ids":
    open(pred, "w").write(open(pred).read().replace("x3,x3", "y3,y3"))
  elif damage == "delete_splits":
    os.remove(os.path.join(target, "splits.json"))
  else:   # run.json still says done, config.json is binary
    open(os.path.join(target, "config.json"), "wb").write(b"\x89PNG\x00\xff")
  status, reason = records.state(target)
  assert status == "damaged" and target in reason
  assert {r["run"]: r["status"] for r in sweep.collect(tmp_path)}[RUNS[1].name] == "damaged"
  logs, fake = [], FakeRun()
  rows = sweep.run_sweep(settings(ALL), tmp_path, RUNS, fake, log=logs.append)
  assert fake.calls == [RUNS[1].name]                     # only the damaged run, again
  assert any("damaged records" in line and RUNS[1].name in line for line in logs)
  assert [r["status"] for r in rows] == ["done"] * 4
  records.check_run(target)                               # whole again


def test_check_run_names_the_file_the_problem_and_the_fix(tmp_path):
  target = _done(tmp_path)[0]
  pred = os.path.join(target, "predictions.csv")
  lines = open(pred).read().splitlines(keepends=True)
  open(pred, "w").write("".join(lines[:3]))
  with pytest.raises(records.RecordError, match=rf"{pred} has 2 rows; expected 4, one per test id "
                                                r"in splits.json .*re-run the sweep command"):
    records.check_run(target)
  open(os.path.join(target, "config.json"), "w").write("{nope")
  with pytest.raises(records.RecordError, match=r"config.json is not valid JSON \(Expecting "):
    records.check_run(target)


def test_a_locked_run_is_skipped_by_a_second_sweep_and_left_clean(tmp_path):
  # The second sweep starts while the first one runs RUNS[1]: it skips that run (locked) and runs
  # the others; the first then finds them finished under their locks and skips them.
  second_logs, second = [], FakeRun()

  class First(FakeRun):
    def __call__(self, spec, run_dir):
      if spec.name == RUNS[1].name:
        sweep.run_sweep(settings(ALL), tmp_path, RUNS, second, log=second_logs.append)
      super().__call__(spec, run_dir)

  first_logs, first = [], First()
  rows = sweep.run_sweep(settings(ALL), tmp_path, RUNS, first, log=first_logs.append)
  assert first.calls == [r.name for r in RUNS[:2]]
  assert second.calls == [r.name for r in RUNS[2:]]       # RUNS[0] done, RUNS[1] locked
  assert any(RUNS[1].name in l and "skipped, another process is running it" in l
             for l in second_logs)
  assert sum("finished, skipped" in l for l in first_logs) == 2
  assert [r["status"] for r in rows] == ["done"] * 4
  assert not [d for d in os.listdir(tmp_path / "runs")
              if os.path.exists(tmp_path / "runs" / d / "failed.json")]


def test_changed_results_settings_are_refused_on_resume_naming_the_fields(tmp_path):
  base = settings(ALL, run_config={"image_size": 32, "num_train_steps": 4, "seed": 0})
  sweep.run_sweep(base, tmp_path, RUNS[:2], FakeRun(), **QUIET)
  before = _snapshot(tmp_path)
  other = settings(ALL, run_config={"image_size": 64, "num_train_steps": 6, "seed": 0})
  fake = FakeRun()
  with pytest.raises(ValueError, match=r"holds this sweep run with other settings \(image_size: "
                                       r"saved 32, now 64; num_train_steps: saved 4, now 6\).*"
                                       r"--config.image_size=32 --config.num_train_steps=4"):
    sweep.run_sweep(other, tmp_path, RUNS, fake, **QUIET)
  assert fake.calls == [] and _snapshot(tmp_path) == before
  sweep.run_sweep(base, tmp_path, RUNS, FakeRun(), **QUIET)    # the same settings resume
  assert json.load(open(tmp_path / "sweep.json"))["run_config"]["image_size"] == 32


def test_the_sweep_command_saves_every_results_setting_but_the_operational_ones():
  from radimagenet_jax.finetune import sweep_command
  from radimagenet_jax import config_files
  import ml_collections
  path = config_files.resolve("configs/finetune.py")
  import importlib.util
  spec = importlib.util.spec_from_file_location("finetune_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = ml_collections.ConfigDict(module.get_config("tiny").to_dict())
  saved, _ = sweep_command.plan(config)
  kept = saved[sweep.RUN_CONFIG_KEY]
  assert {"image_size", "num_train_steps", "num_epochs", "batch_size", "seed", "eval_every",
          "inits", "augment", "dataset"} <= set(kept)
  left_out = set(sweep_command.OPERATIONAL_FIELDS + sweep_command.PER_RUN_FIELDS
                 + sweep_command.SWEEP_FIELDS)
  assert not set(kept) & left_out
  assert set(kept) | left_out == set(config.to_dict()) | set(sweep_command.SWEEP_FIELDS)


def test_a_full_disk_stops_the_sweep_in_one_line_and_resume_works(tmp_path, monkeypatch):
  _done(tmp_path)
  runs = ALL[:6]

  class Full(FakeRun):
    def __call__(self, spec, run_dir):
      self.calls.append(spec.name)
      raise RuntimeError("checkpoint write failed") from OSError(errno.ENOSPC, "No space left")

  with pytest.raises(_files.RecordWriteError, match=rf"^the disk is full: {runs[4].name} stopped "
                                                    r"\(RuntimeError: checkpoint write failed\)"):
    sweep.run_sweep(settings(ALL), tmp_path, runs, Full(), **QUIET)
  assert not os.path.exists(tmp_path / "runs" / runs[4].name / "failed.json")
  before = open(tmp_path / "results.csv").read()
  assert before.count("\n") == 6 and ",incomplete," in before
  # The disk stays full for results.csv too: the old file stays whole and no temporary is left.
  real_open = os.open
  monkeypatch.setattr(_files.os, "open", lambda p, *a, **k: (_ for _ in ()).throw(
      OSError(errno.ENOSPC, "No space left on device", p)) if str(p).endswith(".tmp")
      else real_open(p, *a, **k))
  with pytest.raises(_files.RecordWriteError, match="the disk is full"):
    sweep.run_sweep(settings(ALL), tmp_path, runs, Full(), **QUIET)
  assert open(tmp_path / "results.csv").read() == before
  assert not [f for d, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".tmp")]
  monkeypatch.undo()                                    # space freed: resume finishes
  rows = sweep.run_sweep(settings(ALL), tmp_path, runs, FakeRun(), **QUIET)
  assert [r["status"] for r in rows] == ["done"] * 6


def test_an_atomic_write_on_a_full_disk_keeps_the_old_record(tmp_path, monkeypatch):
  target = tmp_path / "metrics.json"
  _files.write_json_atomic(str(target), {"auc": 0.5})

  class FullFile:
    def __init__(self, f):
      self.f = f

    def __enter__(self):
      return self

    def __exit__(self, *a):
      self.f.close()

    def write(self, text):
      self.f.write(text[:3])
      raise OSError(errno.ENOSPC, "No space left on device")

  real = os.fdopen
  monkeypatch.setattr(_files.os, "fdopen", lambda fd, *a, **k: FullFile(real(fd, *a, **k)))
  with pytest.raises(_files.RecordWriteError) as e:
    _files.write_json_atomic(str(target), {"auc": 0.9})
  assert str(e.value) == (f"the disk is full: cannot write {target} (no space left on the file "
                          f"system of {tmp_path}); nothing was half-written: free space there and "
                          "re-run the same command to resume")
  assert json.load(open(target)) == {"auc": 0.5} and os.listdir(tmp_path) == ["metrics.json"]


@pytest.mark.parametrize("code,says", [
    # The figures are written first (atomically too), so the first file named may be one of them.
    (errno.ENOSPC, "the disk is full: cannot write {dir}/"),
    (errno.EROFS, "{dir} is not writable (read-only or no permission): cannot write {dir}/")])
def test_report_on_a_full_disk_or_read_only_file_system_is_one_line(tmp_path, monkeypatch, capsys,
                                                                    code, says):
  from tests.test_report import make_sweep
  make_sweep(str(tmp_path))
  monkeypatch.setattr(_files.os, "replace", lambda *a: (_ for _ in ()).throw(
      OSError(code, os.strerror(code))))
  assert cli.main(["report", str(tmp_path)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("radimagenet-jax report: error: "
                                             + says.format(dir=tmp_path)), err
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp") or f.startswith("report.")
              or f.endswith((".png", ".pdf"))]


def test_sigterm_while_a_run_writes_its_records_stops_after_that_run(tmp_path):
  class Term(FakeRun):
    def __call__(self, spec, run_dir):
      if len(self.calls) == 1:   # the second run: SIGTERM while it "predicts the test set"
        os.kill(os.getpid(), signal.SIGTERM)
      super().__call__(spec, run_dir)

  fake = Term()
  with pytest.raises(preemption.Preempted, match=rf"stopped by SIGTERM after run {RUNS[1].name}; "
                                                 r"its records are saved in .*re-run the same"):
    sweep.run_sweep(settings(ALL), tmp_path, RUNS, fake, **QUIET)
  assert fake.calls == [r.name for r in RUNS[:2]]
  assert [r["status"] for r in read_csv(tmp_path)] == ["done", "done"]
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  rest = FakeRun()
  sweep.run_sweep(settings(ALL), tmp_path, RUNS, rest, **QUIET)
  assert rest.calls == [r.name for r in RUNS[2:]]


def test_nested_sigterm_blocks_keep_a_signal_received_between_them():
  with preemption.catch_sigterm():
    os.kill(os.getpid(), signal.SIGTERM)          # e.g. while a run loads its data
    with preemption.catch_sigterm():              # the engine's own block
      assert preemption.stop_agreed()
    assert preemption.stop_agreed()
  with preemption.catch_sigterm():
    assert not preemption.stop_agreed()


def test_killed_writers_temporary_files_are_removed_on_the_next_run(tmp_path):
  dirs = _done(tmp_path)
  os.remove(os.path.join(dirs[2], "run.json"))      # killed before it finished
  stale = [os.path.join(dirs[2], "metrics.json.1a2b3c4d.tmp"),
           os.path.join(dirs[2], "predictions.csv.k9_x0z1y.tmp"),   # mkstemp's older names
           str(tmp_path / "results.csv.0f0f0f0f.tmp")]
  for p in stale:
    open(p, "w").write("half")
  kept = os.path.join(dirs[0], "notes.tmp")         # not a record's temporary file
  open(kept, "w").write("mine")
  sweep.run_sweep(settings(ALL), tmp_path, RUNS, FakeRun(), **QUIET)
  assert not any(os.path.exists(p) for p in stale) and os.path.exists(kept)


def test_records_honour_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    _done(tmp_path)
    for name in ("results.csv", "sweep.json", f"runs/{RUNS[0].name}/run.json",
                 f"runs/{RUNS[0].name}/metrics.json", f"runs/{RUNS[0].name}/predictions.csv",
                 f"runs/{RUNS[0].name}/spec.json"):
      assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
    os.umask(0o077)
    _files.write_text_atomic(str(tmp_path / "private.txt"), "x")
    assert stat.S_IMODE(os.stat(tmp_path / "private.txt").st_mode) == 0o600
  finally:
    os.umask(old)


def test_a_backup_copy_of_a_run_is_no_run(tmp_path):
  dirs = _done(tmp_path)
  shutil.copytree(dirs[0], dirs[0] + ".bak")
  rows = sweep.write_results(tmp_path)
  assert [r["run"] for r in rows] == sorted(r.name for r in RUNS)


def test_a_workdir_that_is_a_file_or_read_only_is_refused_before_anything_runs(tmp_path,
                                                                             monkeypatch):
  afile = tmp_path / "notes.txt"
  afile.write_text("x")
  fake = FakeRun()
  with pytest.raises(FileExistsError, match=rf"--workdir={afile} is a file; expected a directory"):
    sweep.run_sweep(settings(ALL), afile, RUNS, fake, **QUIET)
  ro = tmp_path / "ro"
  ro.mkdir()
  monkeypatch.setattr(os, "access", lambda p, mode: os.fspath(p) != str(ro))  # root ignores modes
  with pytest.raises(PermissionError, match=rf"--workdir={ro}: {ro} is not writable"):
    sweep.run_sweep(settings(ALL), ro, RUNS, fake, **QUIET)
  assert fake.calls == [] and os.listdir(ro) == []


def test_a_native_libraries_full_disk_error_is_recognised():
  # What Orbax's TensorStore raised on a real full tmpfs: a ValueError carrying ENOSPC in its text.
  native = ValueError("RESOURCE_EXHAUSTED: Error writing \"params.conv1_conv.kernel/0\" in OCDBT "
                      "database: Failed to write 35966976 bytes to file 14: No space left on "
                      "device [os_error_code='28']")
  assert _files.is_disk_full(native)
  try:
    raise RuntimeError("checkpoint save failed") from native
  except RuntimeError as chained:
    assert _files.is_disk_full(chained)
  assert not _files.is_disk_full(ValueError("RESOURCE_EXHAUSTED: out of device memory"))
  assert not _files.is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_closed_event_loop_noise_is_dropped_and_other_unraisables_kept(monkeypatch):
  import sys
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
  cli.quiet_closed_loop_noise()
  cli.quiet_closed_loop_noise()   # once only: no hook stacked on the hook

  class Unraisable:
    def __init__(self, error):
      self.exc_type, self.exc_value, self.exc_traceback = type(error), error, None
      self.err_msg, self.object = None, None

  sys.unraisablehook(Unraisable(RuntimeError("Event loop is closed")))
  sys.unraisablehook(Unraisable(RuntimeError("something else")))
  sys.unraisablehook(Unraisable(ValueError("Event loop is closed")))
  assert seen == ["something else", "Event loop is closed"]
