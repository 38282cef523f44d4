"""The paper's fine-tuning scenarios x inits x folds as a resumable, shardable sweep of runs.

FIDELITY.md "Downstream fine-tuning": 24 scenarios per application, 4 CNNs x {unfreeze all at lr
1e-3 and 1e-4; freeze all (head only) at 1e-2 and 1e-3; top 10 layers at 1e-2 and 1e-3}, each for
every initialisation compared (RadImageNet, ImageNet, ...) and every cross-validation fold.

    runs = sweep.preset_runs("paper", inits=("radimagenet", "imagenet"), folds=range(5))
    runs = sweep.shard(runs, "0/4")                  # this host's quarter (0-based i/n)
    rows = sweep.run_sweep(settings, workdir, runs, run_one)

The sweep directory:
  sweep.json           the sweep's identity (dataset, models, scenarios, inits, folds) and settings;
                       a workdir holding ANOTHER sweep is refused before anything is written
  runs/<name>/         one run (name e.g. resnet50-top10-lr0.01-radimagenet-fold0): spec.json
                       (written here), run.json and metrics.json (written by run_one), failed.json
                       (here, when run_one raised: the one-line error and the traceback)
  results.csv          one row per run directory on disk (all shards), rebuilt atomically after
                       every run: RESULT_COLUMNS

A run is finished when its metrics.json exists and its run.json has "status": "done": it is skipped.
Any other run is called again (run_one resumes from its own checkpoint). A run that raises is
recorded as failed and the sweep goes on; KeyboardInterrupt stops the sweep (results.csv is still
rebuilt).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import traceback
from typing import Callable, Iterable, NamedTuple, Sequence

from radimagenet_jax._files import write_json_atomic, write_text_atomic as _write_atomic  # noqa: F401
from radimagenet_jax.finetune import freeze as freeze_lib
from radimagenet_jax.train import config as config_lib

PAPER_MODELS = ("resnet50", "densenet121", "inception_v3", "inception_resnet_v2")


class Scenario(NamedTuple):
  freeze: str
  lr: float


PAPER_SCENARIOS = (Scenario("all", 1e-3), Scenario("all", 1e-4), Scenario("head", 1e-2),
                   Scenario("head", 1e-3), Scenario("top10", 1e-2), Scenario("top10", 1e-3))
# folds None: the caller's (range(5) for cross-validated data sets, (None,) otherwise).
PRESETS = {
    "paper": {"models": PAPER_MODELS, "scenarios": PAPER_SCENARIOS, "folds": None},
    "demo": {"models": ("resnet50",), "folds": (0, 1),
             "scenarios": (Scenario("all", 1e-4), Scenario("head", 1e-2), Scenario("top10", 1e-2))},
    # One cheap scenario (the head alone trains): smoke tests of the whole sweep -> report path.
    "tiny": {"models": ("resnet50",), "folds": (0,), "scenarios": (Scenario("head", 1e-2),)},
}
IDENTITY_KEYS = ("dataset", "models", "scenarios", "inits", "folds")
RESULT_COLUMNS = ("run", "model", "init", "freeze", "lr", "fold", "status", "auc", "ci_low",
                  "ci_high", "accuracy", "best_epoch", "trainable_params", "error")
METRIC_KEYS = ("auc", "ci_low", "ci_high", "accuracy")  # top-level keys of metrics.json
RUN_KEYS = ("best_epoch", "trainable_params")            # top-level keys of run.json
_UNSAFE = re.compile(r"[^A-Za-z0-9._]+")


def _safe(text: str) -> str:
  """``text`` as a file-name part; characters outside [A-Za-z0-9._] -> '_' plus a short hash."""
  safe = _UNSAFE.sub("_", text)
  return safe if safe == text else f"{safe[:40]}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of a sweep; ``name`` is its directory name."""
  model: str
  freeze: str
  lr: float
  init: str
  fold: int | None = None

  @property
  def name(self) -> str:
    fold = "" if self.fold is None else f"-fold{self.fold}"
    return f"{_safe(self.model)}-{_safe(self.freeze)}-lr{self.lr:g}-{_safe(self.init)}{fold}"

  @property
  def scenario(self) -> Scenario:
    return Scenario(self.freeze, self.lr)

  def to_dict(self) -> dict:
    return dict(dataclasses.asdict(self), name=self.name)


def _model_name(model: str) -> str:
  from radimagenet_jax.models import registry  # pylint: disable=g-import-not-at-top
  return registry.get_spec(model).name


def _scenario(s) -> Scenario:
  freeze, lr = (s["freeze"], s["lr"]) if isinstance(s, dict) else s
  freeze_lib.check_mode(freeze)
  if not float(lr) > 0:
    raise ValueError(f"scenario {s!r}: expected a learning rate > 0, got {lr!r}")
  return Scenario(str(freeze), float(lr))


def _fold(f) -> int | None:
  if f is None or (isinstance(f, int) and f >= 0):
    return f
  raise ValueError(f"fold {f!r}: expected None or an integer >= 0")


def expand(models: Iterable[str], scenarios: Iterable, inits: Iterable[str],
           folds: Iterable[int | None] = (None,)) -> list[RunSpec]:
  """Every (model, scenario, init, fold), in the order init, model, scenario, fold."""
  models, scenarios = [_model_name(m) for m in models], [_scenario(s) for s in scenarios]
  inits, folds = [str(i) for i in inits], [_fold(f) for f in folds]
  runs = [RunSpec(m, s.freeze, s.lr, i, f)
          for i in inits for m in models for s in scenarios for f in folds]
  _check_unique(runs)
  return runs


def _check_unique(runs: Sequence[RunSpec]) -> None:
  seen: dict[str, RunSpec] = {}
  for r in runs:
    if r.name in seen:
      what = "is listed twice" if seen[r.name] == r else f"names two runs ({seen[r.name]} and {r})"
      raise ValueError(f"run name {r.name!r} {what}; expected each run once, with distinct names")
    seen[r.name] = r


def preset_runs(name: str, inits: Iterable[str], folds: Iterable[int | None] | None = None,
                models: Iterable[str] | None = None) -> list[RunSpec]:
  """The runs of preset ``name`` (PRESETS) for ``inits``; ``folds`` / ``models`` override the
  preset's (the paper preset has no folds of its own: default (None,))."""
  if name not in PRESETS:
    raise ValueError(f"unknown sweep preset {name!r}; choices: {', '.join(PRESETS)}")
  p = PRESETS[name]
  folds = folds if folds is not None else (p["folds"] or (None,))
  return expand(models if models is not None else p["models"], p["scenarios"], inits, folds)


def parse_shard(spec: str) -> tuple[int, int]:
  """'i/n' -> (i, n) with 0 <= i < n."""
  m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
  if not m or not int(m.group(1)) < int(m.group(2)):
    raise ValueError(f"shard {spec!r}: expected 'i/n' with 0 <= i < n, e.g. '0/4'")
  return int(m.group(1)), int(m.group(2))


def shard(runs: Sequence[RunSpec], spec: str) -> list[RunSpec]:
  """Every n-th run starting at i (round robin: shards mix models); shards 0..n-1 partition runs."""
  i, n = parse_shard(spec)
  return list(runs[i::n])


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
  on; callers report failure with ``[r for r in rows if r["status"] == "failed"]``.
  chunks, run_chunk: batched runs instead of run_one (`finetune.parallel`): the unfinished runs
    are cut into chunks(runs), and run_chunk(chunk, run_dirs) trains each, returning per run None
    (done) or the exception that failed it; every run is recorded as with run_one.
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
    if differ:
      raise ValueError(f"{workdir} holds another sweep: sweep.json differs in {differ} "
                       f"({', '.join(f'{k}={old.get(k)!r}, now {new[k]!r}' for k in differ)}); "
                       "expected the same sweep or an empty --workdir")
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
        except Exception as e:  # pylint: disable=broad-except
          error = e
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
        errors = run_chunk(group, [pending[s.name] for s in group])
        for spec, error in zip(group, errors):
          record(order[spec.name], spec, pending[spec.name], error)
        if write:
          write_results(workdir)
  finally:
    rows = write_results(workdir) if write and os.path.isdir(workdir) else collect(workdir)
  names = {r.name for r in runs}
  return [r for r in rows if r["run"] in names]
