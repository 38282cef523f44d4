"""The sweep: the paper's scenarios, names, shards, resume, failures, results.csv (fake runs)."""
from __future__ import annotations

import csv
import json
import os
import re

import pytest

from radimagenet_jax.evaluate import write_predictions
from radimagenet_jax.finetune import scenarios, sweep

# docs/fidelity.md "Downstream fine-tuning": 4 CNNs x {unfreeze all at 1e-3 and 1e-4; freeze all (head
# only) at 1e-2 and 1e-3; top 10 layers at 1e-2 and 1e-3}.
FIDELITY_SCENARIOS = {(m, f, lr) for m in ("resnet50", "densenet121", "inception_v3",
                                           "inception_resnet_v2")
                      for f, lr in (("all", 1e-3), ("all", 1e-4), ("head", 1e-2), ("head", 1e-3),
                                    ("top10", 1e-2), ("top10", 1e-3))}
INITS = ("radimagenet", "imagenet")


def settings(runs, dataset="busi/benign_vs_malignant", **extra):
  return dict(dataset=dataset, models=sorted({r.model for r in runs}),
              scenarios=sorted({r.scenario for r in runs}), inits=sorted({r.init for r in runs}),
              folds=sorted({r.fold for r in runs}, key=lambda f: -1 if f is None else f), **extra)


class FakeRun:
  """Writes run.json / metrics.json like the engine; raises on the runs named in ``fail``."""

  def __init__(self, fail=(), interrupt_at=None):
    self.calls, self.fail, self.interrupt_at = [], set(fail), interrupt_at

  def __call__(self, spec, run_dir):
    self.calls.append(spec.name)
    with open(os.path.join(run_dir, "run.json"), "w") as f:
      json.dump({"status": "running", "model": spec.model}, f)
    if len(self.calls) == self.interrupt_at:
      raise KeyboardInterrupt
    if spec.name in self.fail:
      raise ValueError(f"bad weights for {spec.model}\nsecond line")
    write_records(run_dir, spec, len(self.calls))


def write_records(run_dir, spec, calls=1, n=4):
  """The records of a finished run, as `finetune.run.finish` writes them (4 test examples)."""
  auc = (len(spec.name) % 17) / 20
  ids = [f"x{k}" for k in range(n)]
  sweep.write_json_atomic(os.path.join(run_dir, "config.json"), {"model": spec.model})
  sweep.write_json_atomic(os.path.join(run_dir, "splits.json"),
                          {"train": ["t0", "t1"], "validation": ["v0"], "test": ids})
  write_predictions(os.path.join(run_dir, "predictions.csv"), ids, ids, [k % 2 for k in range(n)],
                    [[0.5, 0.5]] * n)
  sweep.write_json_atomic(os.path.join(run_dir, "metrics.json"),
                          {"auc": auc, "ci_low": auc - 0.1, "ci_high": auc + 0.1, "n": n,
                           "accuracy": 0.5, "confusion": [[1, 2], [3, 4]]})
  sweep.write_json_atomic(os.path.join(run_dir, "run.json"),
                          {"status": "done", "best_epoch": calls, "model": spec.model,
                           "trainable_params": 1000 + len(spec.name),
                           "class_names": ["benign", "malignant"]})


def read_csv(workdir):
  with open(os.path.join(workdir, "results.csv"), newline="") as f:
    return list(csv.DictReader(f))


def test_paper_preset_is_the_24_scenarios_per_init():
  runs = scenarios.preset_runs("paper", INITS)
  assert len(runs) == 48
  for init in INITS:
    mine = [(r.model, r.freeze, r.lr) for r in runs if r.init == init]
    assert len(mine) == 24 and set(mine) == FIDELITY_SCENARIOS
  folds = scenarios.preset_runs("paper", INITS, folds=range(5))
  assert len(folds) == 240 and {r.fold for r in folds} == set(range(5))
  names = [r.name for r in folds]
  assert len(set(names)) == len(names)
  assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
  assert "resnet50-top10-lr0.01-radimagenet-fold0" in names
  assert "inception_resnet_v2-all-lr0.0001-imagenet" in {r.name for r in runs}
  demo = scenarios.preset_runs("demo", ("demo", "random"))
  assert {(r.model, r.freeze) for r in demo} == {("resnet50", f) for f in ("all", "head", "top10")}
  assert len(demo) == 3 * 2 * 2 and {r.fold for r in demo} == {0, 1}


def test_names_are_filesystem_safe_and_unique():
  rules = ["rules:^predictions/=train;.=freeze", "rules:^predictions/=train;^(?!pred)=freeze"]
  runs = scenarios.expand(["irv2"], [(r, 1e-3) for r in rules], ["imagenet", "my weights/v2"],
                          [None, 3])
  names = [r.name for r in runs]
  assert len(set(names)) == len(names) == 8
  assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
  assert all(r.model == "inception_resnet_v2" for r in runs)
  with pytest.raises(ValueError, match="listed twice"):
    scenarios.expand(["resnet50"], [("all", 1e-3)] * 2, ["imagenet"])
  with pytest.raises(ValueError, match="unknown freeze mode 'freeze_all'"):
    scenarios.expand(["resnet50"], [("freeze_all", 1e-3)], ["imagenet"])
  with pytest.raises(ValueError, match="Unknown model"):
    scenarios.expand(["vgg16"], [("all", 1e-3)], ["imagenet"])


def test_shards_are_disjoint_and_cover():
  runs = scenarios.preset_runs("paper", INITS, folds=range(5))
  for n in (1, 2, 3, 7):
    parts = [scenarios.shard(runs, f"{i}/{n}") for i in range(n)]
    assert sorted(r.name for p in parts for r in p) == sorted(r.name for r in runs)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == [scenarios.shard(runs, f"{i}/{n}") for i in range(n)]
  for bad in ("4/4", "1", "a/b", "-1/2", "0/0", "1/2/3"):
    with pytest.raises(ValueError, match=f"shard {re.escape(repr(bad))}: expected 'i/n'"):
      scenarios.shard(runs, bad)


def test_interrupted_sweep_resumes_and_skips_finished_runs(tmp_path):
  runs = scenarios.preset_runs("demo", ("demo",))
  first = FakeRun(interrupt_at=4)
  with pytest.raises(KeyboardInterrupt):
    sweep.run_sweep(settings(runs), tmp_path, runs, first, log=lambda _: None)
  assert first.calls == [r.name for r in runs[:4]]
  rows = {r["run"]: r for r in read_csv(tmp_path)}
  assert [rows[r.name]["status"] for r in runs[:4]] == ["done"] * 3 + ["running"]
  second = FakeRun()
  rows = sweep.run_sweep(settings(runs), tmp_path, runs, second, log=lambda _: None)
  assert second.calls == [r.name for r in runs[3:]]
  assert [r["status"] for r in rows] == ["done"] * len(runs)
  third = FakeRun()
  sweep.run_sweep(settings(runs), tmp_path, runs, third, log=lambda _: None)
  assert third.calls == []


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
  runs = scenarios.preset_runs("demo", ("demo",))
  fake = FakeRun(fail={runs[1].name})
  rows = sweep.run_sweep(settings(runs), tmp_path, runs, fake, log=lambda _: None)
  assert fake.calls == [r.name for r in runs]
  failed = [r for r in rows if r["status"] == "failed"]
  assert [r["run"] for r in failed] == [runs[1].name]
  assert failed[0]["error"] == "ValueError: bad weights for resnet50"
  assert read_csv(tmp_path)[[r["run"] for r in rows].index(runs[1].name)]["status"] == "failed"
  failure = json.load(open(tmp_path / "runs" / runs[1].name / "failed.json"))
  assert "Traceback" in failure["traceback"]
  # A run_one that returns without finishing is a failure too.
  retry = sweep.run_sweep(settings(runs), tmp_path, runs, lambda s, d: None, log=lambda _: None)
  assert [r["error"] for r in retry if r["status"] == "failed"] == [
      f"RuntimeError: run_one returned but {tmp_path / 'runs' / runs[1].name} has no run.json "
      "with status 'done'"]
  # The next sweep retries it; success clears the failure.
  rows = sweep.run_sweep(settings(runs), tmp_path, runs, FakeRun(), log=lambda _: None)
  assert all(r["status"] == "done" and r["error"] == "" for r in rows)
  assert not os.path.exists(tmp_path / "runs" / runs[1].name / "failed.json")


def _snapshot(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dirpath, f)
      out[p] = (open(p, "rb").read(), os.stat(p).st_mtime_ns)
  return out


def test_another_sweep_is_refused_and_nothing_is_written(tmp_path):
  runs = scenarios.preset_runs("demo", ("demo",))
  sweep.run_sweep(settings(runs, epochs=3), tmp_path, runs[:2], FakeRun(), log=lambda _: None)
  before = _snapshot(tmp_path)
  others = scenarios.preset_runs("demo", ("demo", "random"))
  fake = FakeRun()
  with pytest.raises(ValueError, match=r"holds another sweep: sweep.json differs in \['dataset', "
                                       r"'inits'\]"):
    sweep.run_sweep(settings(others, dataset="ddti/tirads4"), tmp_path, others, fake)
  assert fake.calls == [] and _snapshot(tmp_path) == before
  # Other settings (epochs) do not make it another sweep; runs outside the sweep are refused.
  sweep.run_sweep(settings(runs, epochs=5), tmp_path, runs[2:4], FakeRun(), log=lambda _: None)
  with pytest.raises(ValueError, match=r"init 'random' is not in the sweep's inits \['demo'\]"):
    sweep.run_sweep(settings(runs), tmp_path, others, FakeRun())
  assert json.load(open(tmp_path / "sweep.json"))["settings"] == {"epochs": 3}


def test_results_csv_equals_the_run_directories_of_all_shards(tmp_path):
  runs = scenarios.preset_runs("paper", ("radimagenet",), folds=(0, 1))[:10]
  for i in range(3):  # three "hosts" sharing one directory
    sweep.run_sweep(settings(runs), tmp_path, scenarios.shard(runs, f"{i}/3"), FakeRun(),
                    log=lambda _: None)
  rows = read_csv(tmp_path)
  assert list(rows[0]) == list(sweep.RESULT_COLUMNS)
  assert [r["run"] for r in rows] == sorted(r.name for r in runs)
  for row in rows:
    run_dir = tmp_path / "runs" / row["run"]
    spec = json.load(open(run_dir / "spec.json"))
    run = json.load(open(run_dir / "run.json"))
    metrics = json.load(open(run_dir / "metrics.json"))
    expected = {k: str(spec[k]) for k in ("model", "init", "freeze", "lr", "fold")}
    expected.update({k: str(metrics[k]) for k in ("auc", "ci_low", "ci_high", "accuracy")})
    expected.update(best_epoch=str(run["best_epoch"]),
                    trainable_params=str(run["trainable_params"]), status="done", error="")
    assert {k: row[k] for k in expected} == expected
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
