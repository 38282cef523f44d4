"""The paper's fine-tuning scenarios x inits x folds as a resumable, shardable sweep of runs.

The runs (presets, names, shards) come from `finetune.scenarios`:

    runs = scenarios.preset_runs("paper", inits=("radimagenet", "imagenet"), folds=range(5))
    runs = scenarios.shard(runs, "0/4")              # this host's quarter (0-based i/n)
    rows = sweep.run_sweep(settings, workdir, runs, run_one)

The sweep directory:
  sweep.json           the sweep's identity (dataset, models, scenarios, inits, folds) and settings;
                       a workdir holding ANOTHER sweep (another dataset) is refused before
                       anything is written; more models, scenarios, inits or folds EXTEND it
                       (sweep.json then lists the union; finished runs are kept)
  runs/<name>/         one run (name e.g. resnet50-top10-lr0.01-radimagenet-fold0): spec.json
                       (written here), run.json and metrics.json (written by run_one), failed.json
                       (here, when run_one raised: the one-line error and the traceback)
  results.csv          one row per run directory on disk (all shards), rebuilt atomically after
                       every run: RESULT_COLUMNS

A run is finished when its metrics.json exists and its run.json has "status": "done": it is skipped.
Any other run is called again (run_one resumes from its own checkpoint). A run that raises is
recorded as failed and the sweep goes on; SIGTERM (`Preempted`: the run saved its checkpoint) and
KeyboardInterrupt stop the sweep (results.csv is still rebuilt), and the next call resumes that run.
With several processes, every process records the same outcome of each run
(`distributed.agree_on_outcome`).
"""
from __future__ import annotations

import csv
import io
import json
import os
import traceback
from typing import Callable, Sequence

from radimagenet_jax import distributed
from radimagenet_jax._files import write_json_atomic, write_text_atomic as _write_atomic  # noqa: F401
from radimagenet_jax.finetune.scenarios import (RunSpec, Scenario, _check_unique, _fold,
                                                _model_name, _scenario)
from radimagenet_jax.train import config as config_lib, preemption

IDENTITY_KEYS = ("dataset", "models", "scenarios", "inits", "folds")
RESULT_COLUMNS = ("run", "model", "init", "freeze", "lr", "fold", "status", "auc", "ci_low",
                  "ci_high", "accuracy", "best_epoch", "trainable_params", "error")
METRIC_KEYS = ("auc", "ci_low", "ci_high", "accuracy")  # top-level keys of metrics.json
RUN_KEYS = ("best_epoch", "trainable_params")            # top-level keys of run.json


def sweep_identity(settings: dict) -> dict:
  """The IDENTITY_KEYS of ``settings``, normalised (canonical model names, sorted lists)."""
  missing = [k for k in IDENTITY_KEYS if k not in settings]
  if missing:
    raise ValueError(f"sweep settings lack {missing}; expected keys {list(IDENTITY_KEYS)}")
  folds = [_fold(f) for f in settings["folds"]]
  return {
      "dataset": str(settings["dataset"]),
      "models": sorted({_model_name(m) for m in settings["models"]}),
      "scenarios": sorted({tuple(_scenario(s)) for s in settings["scenarios"]}),
      "inits": sorted({str(i) for i in settings["inits"]}),
      "folds": sorted(set(folds), key=lambda f: -1 if f is None else f),
  }


def _jsonable(identity: dict) -> dict:
  return json.loads(json.dumps(identity, default=str))


def _extended(old: dict, identity: dict, sweep_settings: dict) -> dict:
  """sweep.json for a sweep grown by ``identity``: each identity list the union of the old and the
  new (the dataset is the same), the init order the old one then the new inits."""
  union = {k: list(old.get(k) or []) + list(identity[k]) for k in IDENTITY_KEYS if k != "dataset"}
  grown = _jsonable(sweep_identity({"dataset": old["dataset"], **union}))
  settings = dict(old.get("settings") or {})
  if "init_order" in settings:
    new_order = sweep_settings.get("init_order") or identity["inits"]
    settings["init_order"] = settings["init_order"] + [
        i for i in new_order if i not in settings["init_order"]]
  return {**old, **grown, "settings": settings}


def _check_runs(runs: Sequence[RunSpec], identity: dict) -> None:
  scenarios = {Scenario(*s) for s in identity["scenarios"]}
  for r in runs:
    for what, value, allowed in (("model", r.model, identity["models"]),
                                 ("init", r.init, identity["inits"]),
                                 ("fold", r.fold, identity["folds"]),
                                 ("scenario", r.scenario, scenarios)):
      if value not in allowed:
        raise ValueError(f"run {r.name!r}: {what} {value!r} is not in the sweep's {what}s "
                         f"{sorted(allowed, key=str)}")


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      value = json.load(f)
    return value if isinstance(value, dict) else None
  except (OSError, ValueError):
    return None


def is_finished(run_dir: str) -> bool:
  run = _read_json(os.path.join(run_dir, "run.json")) or {}
  return os.path.isfile(os.path.join(run_dir, "metrics.json")) and run.get("status") == "done"


def read_row(run_dir: str) -> dict:
  """The results.csv row of one run directory (values as read; '' where unknown)."""
  spec = _read_json(os.path.join(run_dir, "spec.json")) or {}
  run = _read_json(os.path.join(run_dir, "run.json")) or {}
  metrics = _read_json(os.path.join(run_dir, "metrics.json")) or {}
  failed = _read_json(os.path.join(run_dir, "failed.json"))
  if is_finished(run_dir):
    status = "done"
  else:
    status = "failed" if failed else str(run.get("status") or "incomplete")
  row = {"run": os.path.basename(os.path.normpath(run_dir)), "status": status,
         "error": (failed or {}).get("error", "") if status == "failed" else ""}
  for key in ("model", "init", "freeze", "lr", "fold"):
    row[key] = spec.get(key, run.get(key))
  row.update({k: metrics.get(k) for k in METRIC_KEYS})
  row.update({k: run.get(k) for k in RUN_KEYS})
  return {k: "" if row[k] is None else row[k] for k in RESULT_COLUMNS}


def collect(workdir: str) -> list[dict]:
  """Rows of every run directory under ``workdir``/runs, sorted by name."""
  root = os.path.join(workdir, "runs")
  names = sorted(os.listdir(root)) if os.path.isdir(root) else []
  return [read_row(os.path.join(root, n)) for n in names if os.path.isdir(os.path.join(root, n))]


def write_results(workdir: str) -> list[dict]:
  """Rebuilds ``workdir``/results.csv from the run directories on disk; returns its rows."""
  rows = collect(workdir)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  _write_atomic(os.path.join(workdir, "results.csv"), buf.getvalue())
  return rows


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def run_sweep(sweep_settings: dict, workdir: str, runs: Sequence[RunSpec],
              run_one: Callable[[RunSpec, str], None] | None, *, write: bool = True,
              log: Callable[[str], None] = print,
              chunks: Callable[[list[RunSpec]], list[list[RunSpec]]] | None = None,
              run_chunk: Callable[[list[RunSpec], list[str]], list[BaseException | None]]
              | None = None) -> list[dict]:
  """Runs ``runs`` (skipping finished ones) in ``workdir``; returns their results.csv rows.

  sweep_settings: IDENTITY_KEYS (dataset, models, scenarios as (freeze, lr) pairs, inits, folds)
    plus any other settings, all saved in sweep.json; a sweep.json whose identity differs is an
    error and nothing is written.
  run_one(spec, run_dir): trains one run; must leave metrics.json and run.json with
    "status": "done" in run_dir when it succeeds (written atomically, e.g. write_json_atomic).
  write: False on the non-main processes of a multi-host run (they run, the main process writes).
  A run that raises Exception is recorded as failed (failed.json, results.csv) and the sweep goes
  on, except `preemption.Preempted` (SIGTERM), which stops the sweep; callers report failure with
  ``[r for r in rows if r["status"] == "failed"]``.
  chunks, run_chunk: batched runs instead of run_one (`finetune.parallel`): the unfinished runs
    are cut into chunks(runs), and run_chunk(chunk, run_dirs) trains each, returning per run None
    (done) or the exception that failed it (an exception it raises fails every run of the chunk);
    every run is recorded as with run_one.
  """
  workdir = config_lib.resolve_workdir(workdir)
  identity = sweep_identity(sweep_settings)
  _check_unique(runs)
  _check_runs(runs, identity)
  sweep_file = os.path.join(workdir, "sweep.json")
  if os.path.exists(sweep_file):
    old = _read_json(sweep_file)
    if old is None:
      raise ValueError(f"{sweep_file} is unreadable; expected a sweep.json written by run_sweep")
    new = _jsonable(identity)
    differ = [k for k in IDENTITY_KEYS if old.get(k) != new[k]]
    if "dataset" in differ:  # more models/scenarios/inits/folds extend it (finished runs kept)
      raise ValueError(f"{workdir} holds another sweep: sweep.json differs in {differ} "
                       f"({', '.join(f'{k}={old.get(k)!r}, now {new[k]!r}' for k in differ)}); "
                       "expected the same sweep or an empty --workdir")
    if differ:
      extended = _extended(old, identity, sweep_settings)
      if extended != old and write:
        added = {k: [v for v in extended[k] if v not in old.get(k, [])] for k in differ}
        log(f"extending the sweep in {workdir}: " + ", ".join(
            f"+{k} {v}" for k, v in added.items() if v))
        write_json_atomic(sweep_file, extended)
  elif write:
    os.makedirs(workdir, exist_ok=True)
    extra = {k: v for k, v in sweep_settings.items() if k not in IDENTITY_KEYS}
    write_json_atomic(sweep_file, {**identity, "settings": extra})
  def begin(i: int, spec: RunSpec) -> str | None:
    """The run's directory, ready to run; None when it is finished (skipped)."""
    run_dir = os.path.join(workdir, "runs", spec.name)
    if is_finished(run_dir):
      log(f"[{i + 1}/{len(runs)}] {spec.name}: finished, skipped")
      return None
    os.makedirs(run_dir, exist_ok=True)
    failed_file = os.path.join(run_dir, "failed.json")
    if write:
      write_json_atomic(os.path.join(run_dir, "spec.json"), spec.to_dict())
      if os.path.exists(failed_file):
        os.remove(failed_file)
    log(f"[{i + 1}/{len(runs)}] {spec.name}: running in {run_dir}")
    return run_dir

  def record(i: int, spec: RunSpec, run_dir: str, error: BaseException | None) -> None:
    where = f"[{i + 1}/{len(runs)}] {spec.name}"
    if error is None and not is_finished(run_dir):
      error = RuntimeError(f"{'run_one' if run_chunk is None else 'run_chunk'} returned but "
                           f"{run_dir} has no metrics.json and run.json with status 'done'")
    if error is None:
      log(f"{where}: done")
    else:
      log(f"{where}: FAILED: {_one_line(error)}")
      if write:
        write_json_atomic(os.path.join(run_dir, "failed.json"), {
            "error": _one_line(error),
            "traceback": "".join(traceback.format_exception(error))})

  try:
    if run_chunk is None:
      for i, spec in enumerate(runs):
        run_dir = begin(i, spec)
        if run_dir is None:
          continue
        try:
          run_one(spec, run_dir)
          error = None
        except preemption.Preempted:  # SIGTERM: the run saved its checkpoint; the sweep stops
          raise
        except Exception as e:  # pylint: disable=broad-except
          error = e
        # Several processes: all record the same outcome (the failing process's own error) and
        # go on together; one stuck in a collective the other left ends the job instead.
        error = distributed.agree_on_outcome(spec.name, error, describe=_one_line)
        record(i, spec, run_dir, error)
        if write:
          write_results(workdir)
    else:
      order = {spec.name: i for i, spec in enumerate(runs)}
      pending = {}
      for i, spec in enumerate(runs):
        run_dir = begin(i, spec)
        if run_dir is not None:
          pending[spec.name] = run_dir
      for group in chunks([spec for spec in runs if spec.name in pending]):
        log(f"batched: {len(group)} run(s) in one step: {', '.join(s.name for s in group)}")
        try:
          errors = run_chunk(group, [pending[s.name] for s in group])
        except preemption.Preempted:
          raise
        except Exception as e:  # pylint: disable=broad-except
          errors = [e] * len(group)
        errors = [distributed.agree_on_outcome(spec.name, error, describe=_one_line)
                  for spec, error in zip(group, errors)]
        for spec, error in zip(group, errors):
          record(order[spec.name], spec, pending[spec.name], error)
        if write:
          write_results(workdir)
  finally:
    rows = write_results(workdir) if write and os.path.isdir(workdir) else collect(workdir)
  names = {r.name for r in runs}
  return [r for r in rows if r["run"] in names]
