"""A fine-tuning run's records, checked before anything trusts them: the sweep (is a run done?) and
the report (may its predictions be compared?) ask here.

A run directory holds (`finetune.run`): run.json (settings, status), config.json (the engine's
config), splits.json (the example ids of train / validation / test), predictions.csv (one row per
test example, best weights) and metrics.json (computed from those rows). A run is done when
run.json says "done" AND its records parse and agree: predictions.csv has one row per id of
splits.json's test set, the same ids, as many rows as metrics.json's "n", as many score columns as
run.json's classes. Anything else is damaged: `check_run` raises `RecordError`, one line naming the
file, what is wrong in it and how to go on; the sweep runs a damaged run again (`state`).

The checks are cheap (a few JSON files and one CSV of the test set per run) and cached on the
files' size and modification time, since a sweep re-reads every run after each run.

A sweep's results.csv is built here too (`write_results`: one row per run directory, `read_row`),
and read back by the report (`read_results`); a backup copy of a run (`copy_of`: runs/X.bak,
whose spec.json names X) is no run of its own.
"""
from __future__ import annotations

import csv
import io
import json
import os

from radimagenet_jax import _files

RUN_RECORDS = ("run.json", "config.json", "splits.json", "predictions.csv", "metrics.json")
RESULT_COLUMNS = ("run", "model", "init", "freeze", "lr", "fold", "status", "auc", "ci_low",
                  "ci_high", "accuracy", "best_epoch", "trainable_params", "error")
RERUN_FIX = "re-run the sweep command: it trains a damaged run again"
METRIC_KEYS = ("auc", "ci_low", "ci_high", "accuracy")  # results.csv's keys of metrics.json
RUN_KEYS = ("best_epoch", "trainable_params")            # results.csv's keys of run.json
# The sweep's own records at the top of its workdir (stale temporary files of these are removed).
SWEEP_RECORDS = ("sweep.json", "results.csv")


class RecordError(ValueError):
  """A record that does not parse or does not agree with the run's other records."""


def read_json(path: str, expected: str = "a JSON object", fix: str = RERUN_FIX) -> dict:
  """The JSON object in ``path``; `RecordError` naming the file, the problem and ``fix`` when it
  is missing, not UTF-8 text, not JSON, or not an object."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise RecordError(f"{path} is missing; expected {expected}; {fix}.") from None
  try:
    value = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError:
    raise RecordError(f"{path} is not text (binary content); expected {expected}; {fix}.") from None
  except ValueError as e:  # json.JSONDecodeError: where it broke
    raise RecordError(f"{path} is not valid JSON ({e}; {len(raw)} bytes); expected {expected}; "
                      f"{fix}.") from None
  if not isinstance(value, dict):
    raise RecordError(f"{path} holds a JSON {type(value).__name__}; expected {expected}; {fix}.")
  return value


def read_results(path: str) -> list[dict]:
  """The rows of a sweep's results.csv; `RecordError` when it is binary or lacks its header."""
  fix = ("delete it: `radimagenet-jax report` then reads runs/*/ directly, and the sweep command "
         "writes it again")
  try:
    with open(path, "rb") as f:
      text = f.read().decode("utf-8")
  except UnicodeDecodeError:
    raise RecordError(f"{path} is not text (binary content); expected a CSV with the header "
                      f"{','.join(RESULT_COLUMNS)}; {fix}.") from None
  rows = list(csv.reader(io.StringIO(text, newline="")))
  header = rows[0] if rows else []
  if "run" not in header or "\x00" in text:
    shown = ",".join(header)[:80] if header else "nothing"
    raise RecordError(f"{path} starts with {shown!r}; expected the header "
                      f"{','.join(RESULT_COLUMNS)}; {fix}.")
  return [dict(zip(header, r)) for r in rows[1:] if r]


def copy_of(run_dir: str) -> str | None:
  """The run that ``run_dir`` is a copy of (a backup such as runs/X.bak, whose spec.json names X),
  else None: a copy is no run of its own."""
  try:
    name = read_json(os.path.join(run_dir, "spec.json")).get("name")
  except RecordError:
    return None
  base = os.path.basename(os.path.normpath(run_dir))
  return name if isinstance(name, str) and name != base else None


_cache: dict = {}


def _stamp(run_dir: str) -> tuple:
  out = []
  for name in RUN_RECORDS:
    try:
      st = os.stat(os.path.join(run_dir, name))
      out.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    except OSError:
      out.append((name, None))
  return tuple(out)


def check_run(run_dir: str, *, complete: bool = True, fix: str = RERUN_FIX) -> dict:
  """A done run's records, checked; returns {"run", "metrics", "splits", "predictions"} (None for
  a record absent when ``complete`` is False). Raises `RecordError` for the first problem.

  complete: every record of RUN_RECORDS must exist (a sweep's run); False checks the records
  present (a run directory made elsewhere may have only run.json and predictions.csv)."""
  # Here, not at the top: evaluate's package imports its report, which imports this module.
  from radimagenet_jax.evaluate.classification import read_predictions  # noqa: E501
  path = lambda name: os.path.join(run_dir, name)  # noqa: E731
  have = lambda name: complete or os.path.isfile(path(name))  # noqa: E731
  run = read_json(path("run.json"), "the run's settings and status", fix)
  if have("config.json"):
    read_json(path("config.json"), "the run's config, as the engine saved it", fix)
  metrics = read_json(path("metrics.json"), "the run's test metrics", fix) \
      if have("metrics.json") else None
  splits = read_json(path("splits.json"), "the run's train / validation / test ids", fix) \
      if have("splits.json") else None
  if not os.path.isfile(path("predictions.csv")):
    raise RecordError(f"{path('predictions.csv')} is missing; expected the test set's predictions; "
                      f"{fix}.")
  try:
    preds = read_predictions(path("predictions.csv"))
  except (ValueError, UnicodeDecodeError) as e:
    raise RecordError(f"{str(e).rstrip('.')}; {fix}.") from None
  rows = len(preds.ids)
  where = path("predictions.csv")
  if splits is not None:
    test = splits.get("test")
    if not isinstance(test, list):
      raise RecordError(f"{path('splits.json')} has no 'test' list of ids; expected the ids of "
                        f"the train, validation and test sets; {fix}.")
    if rows != len(test):
      raise RecordError(f"{where} has {rows} rows; expected {len(test)}, one per test id in "
                        f"splits.json (truncated or mixed records); {fix}.")
    if sorted(map(str, preds.ids)) != sorted(map(str, test)):
      odd = sorted(set(map(str, preds.ids)) ^ set(map(str, test)))[:3]
      raise RecordError(f"{where} has ids that differ from splits.json's test set (e.g. {odd}); "
                        f"expected the same ids; {fix}.")
  if metrics is not None and metrics.get("n") not in (None, rows):
    raise RecordError(f"{path('metrics.json')} counts n={metrics.get('n')!r} test examples but "
                      f"predictions.csv has {rows} rows; expected the same; {fix}.")
  names = run.get("class_names")
  if isinstance(names, list) and names and preds.probs.shape[1] != len(names):
    raise RecordError(f"{where} has {preds.probs.shape[1]} score columns but run.json lists "
                      f"{len(names)} classes; expected one column per class; {fix}.")
  return {"run": run, "metrics": metrics, "splits": splits, "predictions": preds}


def state(run_dir: str) -> tuple[str, str]:
  """(status, reason) of a sweep's run directory: ("done", "") when run.json says done and every
  record checks (`check_run`); ("damaged", the one-line reason) when it says done but a record
  does not; else (run.json's status or "incomplete", "")."""
  key = (os.path.abspath(run_dir), _stamp(run_dir))
  if key in _cache:
    return _cache[key]
  try:
    with open(os.path.join(run_dir, "run.json"), "rb") as f:
      status = json.loads(f.read().decode("utf-8")).get("status")
  except (OSError, ValueError, AttributeError):
    status = None
  if status != "done":
    result = (str(status or "incomplete"), "")
  else:
    try:
      check_run(run_dir, fix="the sweep trains it again")
      result = ("done", "")
    except RecordError as e:
      result = ("damaged", str(e))
  if len(_cache) > 4096:
    _cache.clear()
  _cache[key] = result
  return result


# ---- results.csv: one row per run directory ----

def is_finished(run_dir: str) -> bool:
  """run.json says "done" and the run's records parse and agree (`state`)."""
  return state(run_dir)[0] == "done"


def _read_json(path: str) -> dict | None:
  try:
    return read_json(path)
  except (OSError, ValueError):
    return None


def read_row(run_dir: str) -> dict:
  """The results.csv row of one run directory (values as read; '' where unknown)."""
  spec = _read_json(os.path.join(run_dir, "spec.json")) or {}
  run = _read_json(os.path.join(run_dir, "run.json")) or {}
  failed = _read_json(os.path.join(run_dir, "failed.json"))
  status, reason = state(run_dir)
  metrics = (_read_json(os.path.join(run_dir, "metrics.json")) or {}) if status == "done" else {}
  if status != "done" and failed:
    status, reason = "failed", failed.get("error", "")
  row = {"run": os.path.basename(os.path.normpath(run_dir)), "status": status, "error": reason}
  for key in ("model", "init", "freeze", "lr", "fold"):
    row[key] = spec.get(key, run.get(key))
  row.update({k: metrics.get(k) for k in METRIC_KEYS})
  row.update({k: run.get(k) for k in RUN_KEYS})
  return {k: "" if row[k] is None else row[k] for k in RESULT_COLUMNS}


def run_dirs(workdir: str) -> list[str]:
  """The run directories under ``workdir``/runs, sorted by name: directories whose spec.json, if
  any, names the directory (a backup copy such as runs/X.bak names X and is no run of its own)."""
  root = os.path.join(workdir, "runs")
  out = []
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    path = os.path.join(root, name)
    if not os.path.isdir(path):
      continue
    if copy_of(path) is None:
      out.append(path)
  return out


def collect(workdir: str) -> list[dict]:
  """Rows of every run directory under ``workdir``/runs (`run_dirs`), sorted by name."""
  return [read_row(d) for d in run_dirs(workdir)]


def write_results(workdir: str) -> list[dict]:
  """Rebuilds ``workdir``/results.csv from the run directories on disk; returns its rows. Holds
  the workdir's lock while it writes (shards share the file) and removes the temporary files of
  killed writers."""
  rows = collect(workdir)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  with _files.folder_lock(workdir, unsupported=False) as held:
    if held:
      _files.remove_stale_tmp(workdir, SWEEP_RECORDS)
    _files.write_text_atomic(os.path.join(workdir, "results.csv"), buf.getvalue())
  return rows
