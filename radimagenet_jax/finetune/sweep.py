"""The paper's fine-tuning scenarios x inits x folds as a resumable, shardable sweep of runs.

The runs (presets, names, shards) come from `finetune.scenarios`:

    runs = scenarios.preset_runs("paper", inits=("radimagenet", "imagenet"), folds=range(5))
    runs = scenarios.shard(runs, "0/4")              # this host's quarter (0-based i/n)
    rows = sweep.run_sweep(settings, workdir, runs, run_one)

The sweep directory:
  sweep.json           the sweep's identity (dataset, models, scenarios, inits, folds), the run
                       config's settings that change results (`run_config`) and other settings;
                       a workdir holding ANOTHER sweep (another dataset), or this sweep with other
                       `run_config` values, is refused before anything is written; more models,
                       scenarios, inits or folds EXTEND it (sweep.json then lists the union;
                       finished runs are kept)
  runs/<name>/         one run (name e.g. resnet50-top10-lr0.01-radimagenet-fold0): spec.json
                       (written here), run.json, metrics.json, predictions.csv, splits.json and
                       config.json (written by run_one), failed.json (here, when run_one raised:
                       the one-line error and the traceback)
  results.csv          one row per run directory on disk (all shards), rebuilt atomically after
                       every run: RESULT_COLUMNS

A run is finished when its run.json has "status": "done" and its records parse and agree
(`finetune.records`): it is skipped. A damaged finished run and any other run are called again
(run_one resumes from its own checkpoint). While a process works on a run it holds the run
directory's lock (flock; the kernel drops it when the process dies), so two sweeps or shards on
one workdir never run the same run: the second skips it, saying so. A run that raises is recorded
as failed and the sweep goes on, except on a full disk, which stops the sweep in one line (re-run
after freeing space). SIGTERM, in any phase, stops the sweep after the current run's step
(`Preempted`: its checkpoint or its records saved), KeyboardInterrupt at once (results.csv is still
rebuilt); the next call resumes. With several processes, every process records the same outcome of
each run (`distributed.agree_on_outcome`).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import traceback
from typing import Callable, Sequence

from radimagenet_jax import _files, distributed
from radimagenet_jax._files import write_json_atomic, write_text_atomic as _write_atomic  # noqa: F401
from radimagenet_jax.finetune import records
# The results.csv side lives in `records`; these names are the sweep's public interface too.
from radimagenet_jax.finetune.records import (RESULT_COLUMNS, collect, is_finished,  # noqa: F401
                                              read_row, run_dirs, write_results)
from radimagenet_jax.finetune.scenarios import (RunSpec, Scenario, _check_unique, _fold,
                                                _model_name, _scenario)
from radimagenet_jax.train import config as config_lib, preemption

IDENTITY_KEYS = ("dataset", "models", "scenarios", "inits", "folds")
RUN_CONFIG_KEY = "run_config"  # settings that change results: must not change on resume


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


def _check_same_sweep(sweep_file: str, workdir: str, identity: dict, run_config) -> dict:
  """The saved sweep.json; refuses (before anything is written) a workdir whose sweep.json is
  another sweep (another dataset), or this sweep with other settings that change results: finished
  runs would be mixed with new ones. Other models, scenarios, inits or folds extend the sweep."""
  old = records.read_json(sweep_file, "the sweep.json that the sweep command wrote",
                          "delete it and re-run the same sweep command to write it again (the "
                          "runs are kept), or use an empty --workdir")
  new = _jsonable(identity)
  differ = [k for k in IDENTITY_KEYS if old.get(k) != new[k]]
  if "dataset" in differ:
    raise ValueError(f"{workdir} holds another sweep: sweep.json differs in {differ} "
                     f"({', '.join(f'{k}={old.get(k)!r}, now {new[k]!r}' for k in differ)}); "
                     "expected the same sweep or an empty --workdir")
  saved = old.get(RUN_CONFIG_KEY)
  if run_config is None or not isinstance(saved, dict):
    return old  # a sweep.json of an older version records none: nothing to compare
  now = _jsonable(run_config)
  changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
  if changed:
    diffs = "; ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in changed)
    fix = " ".join(f"--config.{k}={saved[k]}" for k in changed
                   if k in saved and not isinstance(saved[k], dict))
    raise ValueError(f"{workdir} holds this sweep run with other settings ({diffs}); its finished "
                     f"runs would be mixed with runs of the new settings. Nothing was written. "
                     f"Resume with the saved settings{(' (' + fix + ')') if fix else ''}, or use "
                     f"another --workdir for the new settings.")
  return old


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"[:600]  # long paths, then the fix


class RunLocked(RuntimeError):
  """Another process holds a run's lock (it is running that run now)."""


def run_sweep(sweep_settings: dict, workdir: str, runs: Sequence[RunSpec],
              run_one: Callable[[RunSpec, str], None] | None, *, write: bool = True,
              log: Callable[[str], None] = print,
              chunks: Callable[[list[RunSpec]], list[list[RunSpec]]] | None = None,
              run_chunk: Callable[[list[RunSpec], list[str]], list[BaseException | None]]
              | None = None) -> list[dict]:
  """Runs ``runs`` (skipping finished ones) in ``workdir``; returns their results.csv rows.

  sweep_settings: IDENTITY_KEYS (dataset, models, scenarios as (freeze, lr) pairs, inits, folds),
    optionally RUN_CONFIG_KEY (the run config's fields that change results, as a dict), plus any
    other settings, all saved in sweep.json; a sweep.json whose identity or run_config differs is
    an error and nothing is written.
  run_one(spec, run_dir): trains one run; must leave run.json with "status": "done" and the records
    `finetune.records.check_run` checks in run_dir when it succeeds (written atomically).
  write: False on the non-main processes of a multi-host run (they run, the main process writes).
  A run that raises Exception is recorded as failed (failed.json, results.csv) and the sweep goes
  on, except `preemption.Preempted` (SIGTERM), which stops the sweep, and a full disk, which stops
  it with `_files.RecordWriteError`; callers report failure with
  ``[r for r in rows if r["status"] == "failed"]``.
  chunks, run_chunk: batched runs instead of run_one (`finetune.parallel`): the unfinished runs
    are cut into chunks(runs), and run_chunk(chunk, run_dirs) trains each, returning per run None
    (done) or the exception that failed it (an exception it raises fails every run of the chunk);
    every run is recorded as with run_one.
  """
  workdir = config_lib.resolve_workdir(workdir)
  identity = sweep_identity(sweep_settings)
  run_config = sweep_settings.get(RUN_CONFIG_KEY)
  _check_unique(runs)
  _check_runs(runs, identity)
  if write:
    config_lib.check_workdir_writable(workdir)
  sweep_file = os.path.join(workdir, "sweep.json")
  if os.path.exists(sweep_file):
    old = _check_same_sweep(sweep_file, workdir, identity, run_config)
    differ = [k for k in IDENTITY_KEYS if old.get(k) != _jsonable(identity)[k]]
    if differ:  # more models/scenarios/inits/folds extend it (finished runs kept)
      extended = _extended(old, identity, sweep_settings)
      if extended != old and write:
        added = {k: [v for v in extended[k] if v not in old.get(k, [])] for k in differ}
        log(f"extending the sweep in {workdir}: " + ", ".join(
            f"+{k} {v}" for k, v in added.items() if v))
        write_json_atomic(sweep_file, extended)
  elif write:
    os.makedirs(workdir, exist_ok=True)
    extra = {k: v for k, v in sweep_settings.items() if k not in IDENTITY_KEYS + (RUN_CONFIG_KEY,)}
    saved = {**identity, "settings": extra}
    if run_config is not None:
      saved[RUN_CONFIG_KEY] = run_config
    write_json_atomic(sweep_file, saved)
  held = {}  # run name -> the ExitStack holding its lock while this process works on it
  skipped = []

  def release(name: str) -> None:
    if name in held:
      held.pop(name).close()

  def begin(i: int, spec: RunSpec) -> str | None:
    """The run's directory, locked and ready to run; None when it is finished or another process
    holds it (skipped)."""
    run_dir = os.path.join(workdir, "runs", spec.name)
    where = f"[{i + 1}/{len(runs)}] {spec.name}"
    if is_finished(run_dir):
      log(f"{where}: finished, skipped")
      return None
    os.makedirs(run_dir, exist_ok=True)
    stack, locked, got = contextlib.ExitStack(), None, None
    if write:  # the main process locks; with several processes all agree on the outcome
      got = stack.enter_context(_files.folder_lock(run_dir, blocking=False, unsupported=None))
      if got is False:
        locked = RunLocked(f"{run_dir} is locked: another process (a second sweep or shard on "
                           "this workdir) is running it")
    # (Not f"{name}/...": the run's own outcome below reads every key under f"{name}/".)
    locked = distributed.agree_on_outcome(f"lock-{spec.name}", locked, describe=_one_line)
    if locked is not None:
      stack.close()
      skipped.append(spec.name)
      log(f"{where}: skipped, another process is running it (its directory is locked); re-run "
          "this command after that process ends to collect it")
      return None
    held[spec.name] = stack
    state, reason = records.state(run_dir)
    if state == "done":  # finished by another process while this one waited for the lock
      release(spec.name)
      log(f"{where}: finished, skipped")
      return None
    if got:  # under the lock nobody else writes here: temporary files are a killed writer's
      _files.remove_stale_tmp(run_dir)
    if write:
      write_json_atomic(os.path.join(run_dir, "spec.json"), spec.to_dict())
      failed_file = os.path.join(run_dir, "failed.json")
      if os.path.exists(failed_file):
        os.remove(failed_file)
    if state == "damaged":
      log(f"{where}: damaged records ({reason}); running it again")
    log(f"{where}: running in {run_dir}")
    return run_dir

  def record(i: int, spec: RunSpec, run_dir: str, error: BaseException | None) -> None:
    where = f"[{i + 1}/{len(runs)}] {spec.name}"
    try:
      if error is None and not is_finished(run_dir):
        state, reason = records.state(run_dir)
        error = RuntimeError(
            f"{'run_one' if run_chunk is None else 'run_chunk'} returned but {run_dir} "
            + (f"has damaged records: {reason}" if state == "damaged" else
               "has no run.json with status 'done'"))
      if error is not None and _files.is_disk_full(error):
        # Not the run's fault, and every run after it would fail the same way: stop in one line.
        raise _files.RecordWriteError(
            errno.ENOSPC, f"the disk is full: {spec.name} stopped ({_one_line(error)}); nothing "
            f"was recorded as failed: free space on the file system of {run_dir} and re-run the "
            "same command to resume") from error
      if error is None:
        log(f"{where}: done")
      else:
        log(f"{where}: FAILED: {_one_line(error)}")
        if write:
          write_json_atomic(os.path.join(run_dir, "failed.json"), {
              "error": _one_line(error),
              "traceback": "".join(traceback.format_exception(error))})
    finally:
      release(spec.name)

  def stop_if_asked(after: str) -> None:
    if preemption.stop_agreed():  # every process stops after the same run
      raise preemption.Preempted(None, workdir, after=after)

  rows, ok = None, False
  try:
    with preemption.catch_sigterm():  # SIGTERM between and around runs: stop after the run
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
          stop_if_asked(f"run {spec.name}")
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
          stop_if_asked(f"runs {', '.join(s.name for s in group)}")
    if skipped:
      log(f"{len(skipped)} run(s) skipped: another process is running them "
          f"({', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''})")
    ok = True
  finally:
    for name in list(held):
      release(name)
    try:
      rows = write_results(workdir) if write and os.path.isdir(workdir) else collect(workdir)
    except OSError:
      # A failure already on its way out (a full disk, say) says more than this second one.
      if ok:
        raise
  rows = rows if rows is not None else collect(workdir)
  names = {r.name for r in runs}
  return [r for r in rows if r["run"] in names]

