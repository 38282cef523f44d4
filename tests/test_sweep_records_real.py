"""The record checks on a real sweep (the `tiny` preset, one ResNet50 run at 32x32 from random
weights, trained once per module and copied for each case): its records agree, a damaged run is
trained again, SIGTERM while it predicts its test set ends with the documented line and 143
after its records are written, changed settings and a corrupt config.json are one line."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat

import pytest

from radimagenet_jax import cli
from radimagenet_jax.finetune import records
from radimagenet_jax.train import inference

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "finetune.py")
RUN = "resnet50-head-lr0.01-random-fold0"


def _args(work, data_dir, cache, *extra):
  return ["sweep", f"--config={CONFIG}:tiny", f"--workdir={work}", "--config.sweep_inits=random",
          f"--config.data_dir={data_dir}", f"--config.compilation_cache_dir={cache}", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_data_dir):
  root = tmp_path_factory.mktemp("real_sweep")
  old = os.umask(0o022)
  try:
    assert cli.main(_args(root / "sweep", demo_data_dir, root / "cache")) == 0
  finally:
    os.umask(old)
  return root


@pytest.fixture
def copy(trained, tmp_path, demo_data_dir):
  work = shutil.copytree(trained / "sweep", tmp_path / "sweep")
  return work, lambda *extra: _args(work, demo_data_dir, trained / "cache", *extra)


def test_a_real_runs_records_agree_and_honour_the_umask(trained):
  run_dir = trained / "sweep" / "runs" / RUN
  got = records.check_run(str(run_dir))
  assert got["predictions"].ids == got["splits"]["test"] and got["run"]["status"] == "done"
  assert records.state(str(run_dir)) == ("done", "")
  for name in ("run.json", "metrics.json", "config.json", "splits.json", "predictions.csv",
               "summary.json", "spec.json", "../../results.csv", "../../sweep.json"):
    assert stat.S_IMODE(os.stat(run_dir / name).st_mode) == 0o644, name


def test_sigterm_while_a_damaged_run_predicts_again_stops_with_143_after_its_records(
    copy, monkeypatch, capsys):
  work, args = copy
  pred = work / "runs" / RUN / "predictions.csv"
  lines = pred.read_text().splitlines(keepends=True)
  pred.write_text("".join(lines[:len(lines) // 2]))      # truncated at a row boundary
  assert records.state(str(work / "runs" / RUN))[0] == "damaged"
  real = inference.predict

  def predict_then_term(*a, **k):   # SIGTERM arrives while the test set is being predicted
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*a, **k)

  monkeypatch.setattr(inference, "predict", predict_then_term)
  capsys.readouterr()
  assert cli.main(args()) == 143
  out, err = capsys.readouterr()
  assert "damaged records" in out and f"{pred} has" in out
  assert err.strip() == (f"radimagenet-jax sweep: stopped by SIGTERM after the run finished; its "
                         f"records are saved in {work / 'runs' / RUN}; re-run the same command "
                         "to resume.")
  assert records.state(str(work / "runs" / RUN)) == ("done", "")
  assert len(pred.read_text().splitlines()) == len(lines)
  monkeypatch.setattr(inference, "predict", real)
  assert cli.main(args()) == 0
  assert "finished, skipped" in capsys.readouterr().out


def test_a_resume_with_other_results_settings_is_one_line(copy, capsys):
  work, args = copy
  before = (work / "sweep.json").read_text()
  capsys.readouterr()
  assert cli.main(args("--config.image_size=64", "--config.num_train_steps=6")) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "holds this sweep run with other settings (image_size: saved 32, now " \
      "64; num_train_steps: saved 4, now 6)" in err[0]
  assert (work / "sweep.json").read_text() == before
  assert cli.main(args("--config.log_every=1")) == 0     # operational settings may change


def test_a_corrupt_config_json_is_named_with_its_fix(copy, capsys):
  work, args = copy
  run_dir = work / "runs" / RUN
  (run_dir / "config.json").write_text('{"model": "resnet50", ')
  os.remove(run_dir / "run.json")                         # killed before it finished
  capsys.readouterr()
  assert cli.main(args()) == 1
  failure = json.load(open(run_dir / "failed.json"))["error"]
  assert failure.startswith(f"ValueError: {run_dir / 'config.json'} is not valid JSON (")
  assert "restore it, or delete" in failure and "to train the run from scratch" in failure
