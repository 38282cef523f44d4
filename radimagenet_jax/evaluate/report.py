"""The comparison report of fine-tuning runs: ``write_report(paths, out_dir=None, baseline=None)``.

Input: one sweep directory (sweep.json and/or results.csv, runs/<name>/) or one or more run
directories (run.json, predictions.csv). Every number is recomputed from the runs' predictions.csv
(never read from results.csv or metrics.json), so it can be audited.

A scenario is (data set, model, freeze, lr). An init's AUC in a scenario is the AUC of its pooled
out-of-fold predictions (each example tested once) with its CI, plus the mean and SD of its
per-fold AUCs; without folds it is the run's AUC. Inits are compared on the SAME test examples
(joined on id) with the paired test, per fold and pooled; gain = (AUC_a - AUC_b) / AUC_b. The unit
of independence is the patient (predictions.csv's ``patient`` column): when a patient has several
images the CI and the paired test are Obuchowski's clustered ones, else DeLong's (clustered.py).
Per application (data set), report_summary.py adds the scenario-averaged gain with a patient-level
paired bootstrap CI and P value, Holm-corrected per-scenario tests and the warnings. Multi-class
runs use the macro one-vs-rest AUC and get no test. Runs not "done", or without predictions.csv or
run.json, are listed under "missing".
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from radimagenet_jax import _files
from radimagenet_jax.evaluate import report_summary, roc
from radimagenet_jax.evaluate.classification import multiclass_metrics
from radimagenet_jax.finetune import records

MULTICLASS_NOTE = "multi-class runs: macro one-vs-rest AUC, no DeLong CI or test"
_describe = report_summary.describe


def _json(path: str) -> dict:
  return records.read_json(path)  # a damaged file is a one-line error naming it


def _fold(v) -> int | None:
  return None if v in (None, "", "None", "none", "null") else int(float(v))


def _load_run(run_dir: str, name: str, row: dict | None = None) -> dict:
  """One run as a dict: its settings, status, predictions (None if unusable) and the reason."""
  info = _json(os.path.join(run_dir, "run.json")) if os.path.isfile(
      os.path.join(run_dir, "run.json")) else {}
  row = row or {}
  get = lambda k: info.get(k, row.get(k))  # noqa: E731  (run.json first, results.csv second)
  lr = get("lr")
  run = {"run": name, "dir": run_dir, "dataset": get("dataset"), "model": get("model"),
         "init": get("init"), "freeze": get("freeze"), "lr": None if lr in (None, "") else float(lr),
         "fold": _fold(get("fold")), "scenario": info.get("scenario"),
         "class_names": info.get("class_names"), "preds": None, "reason": None}
  pred_path = os.path.join(run_dir, "predictions.csv")
  run["status"] = row.get("status") or ("done" if os.path.isfile(pred_path) else "missing")
  if run["status"] != "done":
    run["reason"] = f"status {run['status']}" + (f": {row['error']}" if row.get("error") else "")
  elif not os.path.isdir(run_dir):
    run["reason"] = "no run directory"
  elif not info:
    run["reason"] = "no run.json"
  elif not os.path.isfile(pred_path):
    run["reason"] = "no predictions.csv"
  else:
    run["preds"] = records.check_run(run_dir, complete=False)["predictions"]  # parse and agree
    if run["preds"].probs.shape[1] != len(run["class_names"] or []):
      raise ValueError(f"{pred_path} has {run['preds'].probs.shape[1]} score columns but run.json "
                       f"lists {len(run['class_names'] or [])} classes.")
  return run


def _collect(paths) -> tuple[str, dict, list]:
  """(kind "sweep" | "runs", sweep.json settings, runs) of the report's input paths."""
  def is_sweep(p):
    return any(os.path.isfile(os.path.join(p, f)) for f in ("sweep.json", "results.csv"))
  for p in paths:
    if not os.path.isdir(p) or not (is_sweep(p) or os.path.isfile(os.path.join(p, "run.json"))):
      raise ValueError(f"{p} is neither a sweep directory (sweep.json or results.csv) nor a run "
                       f"directory (run.json).")
  if len(paths) == 1 and is_sweep(paths[0]):
    sweep = paths[0]
    settings = _json(os.path.join(sweep, "sweep.json")) if os.path.isfile(
        os.path.join(sweep, "sweep.json")) else {}
    rows = []
    if os.path.isfile(os.path.join(sweep, "results.csv")):
      rows = records.read_results(os.path.join(sweep, "results.csv"))
    runs_dir = os.path.join(sweep, "runs")
    names = [r["run"] for r in rows]
    extra = sorted(d for d in (os.listdir(runs_dir) if os.path.isdir(runs_dir) else [])
                   if d not in names and os.path.isfile(os.path.join(runs_dir, d, "run.json"))
                   and records.copy_of(os.path.join(runs_dir, d)) is None)  # not runs/X.bak
    runs = [_load_run(os.path.join(runs_dir, r["run"]), r["run"], r) for r in rows]
    runs += [_load_run(os.path.join(runs_dir, d), d) for d in extra]
    return "sweep", settings, runs
  for p in paths:
    if is_sweep(p):
      raise ValueError(f"{p} is a sweep directory; give one sweep, or run directories only.")
  return "runs", {}, [_load_run(p, os.path.basename(os.path.normpath(p))) for p in paths]


def _by_fold(folds: dict) -> list:
  """The folds of a {fold: run} dict in order (0, 1, ..., then None)."""
  return sorted(folds, key=lambda f: (f is None, f or 0))


def _pool(by_fold: dict, where: str):
  """(ids, labels, probs, patients) of the folds' predictions, concatenated; the ids must be
  unique (each example tested once)."""
  folds = [by_fold[f]["preds"] for f in _by_fold(by_fold)]
  ids = [i for p in folds for i in p.ids]
  if len(set(ids)) != len(ids):
    dup = next(i for i in ids if ids.count(i) > 1)
    raise ValueError(f"{where}: id {dup!r} is tested in more than one fold; out-of-fold "
                     f"predictions must test each example once.")
  return (ids, np.concatenate([p.labels for p in folds]), np.concatenate([p.probs for p in folds]),
          [q for p in folds for q in p.patients])


def _patients(patients):
  """The patient ids, or None when a set does not record them (blank column)."""
  return None if any(str(p).strip() == "" for p in patients) else list(patients)


def _score(labels, probs, patients=None) -> dict:
  """AUC (+ CI when binary) of labels / probs; macro one-vs-rest AUC when multi-class.

  The CI is Obuchowski's when a patient has several images, else DeLong's. ``score_spread`` is
  the largest range (max - min) of a score column: near 0 is a collapsed model. A set the AUC is
  undefined on (e.g. a fold with one class) gets AUC None and the reason in "note", so that one
  bad fold does not stop the report.
  """
  patients = _patients(patients) if patients is not None else None
  out = {"auc": None, "se": None, "ci_low": None, "ci_high": None, "n": int(labels.size),
         "n_patients": None if patients is None else len(set(patients)), "method": None,
         "score_spread": float(np.max(np.ptp(probs, axis=0))) if labels.size else None,
         "note": None}
  try:
    if probs.shape[1] == 2:
      ci = roc.delong_ci(labels, probs[:, 1], patients=patients)
      out.update({k: ci[k] for k in ("auc", "se", "ci_low", "ci_high", "n_cases", "n_controls",
                                     "method")})
    else:
      out["auc"] = multiclass_metrics(labels, probs)["auc"]
  except ValueError as e:
    out["note"] = str(e)
  return out


def _paired(a, b, names) -> tuple:
  """Joins two (ids, labels, probs, ...) on id: (labels, probs_a, probs_b, None) or a refusal."""
  pos_b = {i: k for k, i in enumerate(b[0])}
  only_a = [i for i in a[0] if i not in pos_b]
  only_b = len(set(b[0]) - set(a[0]))
  if only_a or only_b:
    return None, None, None, (f"test ids differ ({len(only_a)} only in {names[0]}, {only_b} only "
                              f"in {names[1]}); no paired test")
  order = np.array([pos_b[i] for i in a[0]], np.int64)
  if np.any(a[1] != b[1][order]):
    return None, None, None, "labels differ between the two runs for the same ids; no paired test"
  return a[1], a[2], b[2][order], None


def _compare(pa, pb, names) -> dict:
  """Paired test of two (ids, labels, probs, patients) sets (Obuchowski's when a patient has
  several images, else DeLong's), or the reason it was refused."""
  y, qa, qb, why = _paired(pa, pb, names)
  if why is None and qa.shape[1] != 2:
    why = MULTICLASS_NOTE
  if why is not None:
    return {"test": None, "note": why}
  try:
    return {"test": roc.delong_test(y, qa[:, 1], qb[:, 1], patients=_patients(pa[3])),
            "note": None}
  except ValueError as e:
    return {"test": None, "note": str(e)}


def _scenario(key, name, runs, inits, pairs, missing, pooled) -> dict:
  """One scenario's entry: per init AUC (pooled and per fold), per pair the paired tests.

  ``runs[init][fold]`` are the scenario's runs; fills ``pooled[key + (init,)]`` with the pooled
  (ids, labels, probs, patients) and ``pooled[key + (init, "folds")]`` with each fold's (labels,
  probs), for the statistics and the pictures.
  """
  dataset, model, freeze, lr = key
  sc = {"scenario": name, "dataset": dataset, "model": model, "freeze": freeze, "lr": lr,
        "inits": {}, "comparisons": [],
        "missing": [m["run"] for m in missing
                    if (m["dataset"], m["model"], m["freeze"], m["lr"]) == key]}
  for init in [i for i in inits if i in runs]:
    pooled[key + (init,)] = _pool(runs[init], f"{name} / {init}")
    preds = {f: runs[init][f]["preds"] for f in _by_fold(runs[init])}
    pooled[key + (init, "folds")] = [(p.labels, p.probs) for p in preds.values()]
    folds = [dict(fold=f, run=runs[init][f]["run"], **_score(p.labels, p.probs, p.patients))
             for f, p in preds.items()]
    fold_stats = _describe([f["auc"] for f in folds if f["auc"] is not None])
    sc["inits"][init] = dict(_score(*pooled[key + (init,)][1:]), n_folds=len(folds),
                             fold_auc_mean=fold_stats["mean"], fold_auc_sd=fold_stats["sd"],
                             folds=folds)
  for a, b in pairs:
    if a not in sc["inits"] or b not in sc["inits"]:
      continue
    auc_a, auc_b = sc["inits"][a]["auc"], sc["inits"][b]["auc"]
    comp = {"a": a, "b": b, "auc_a": auc_a, "auc_b": auc_b,
            "difference": None if None in (auc_a, auc_b) else auc_a - auc_b,
            "gain": None if not auc_b or auc_a is None else (auc_a - auc_b) / auc_b,
            **_compare(pooled[key + (a,)], pooled[key + (b,)], (a, b)), "folds": []}
    for f in sorted(set(runs[a]) & set(runs[b]) - {None}):
      one = [(r["preds"].ids, r["preds"].labels, r["preds"].probs, r["preds"].patients)
             for r in (runs[a][f], runs[b][f])]
      comp["folds"].append({"fold": f, **_compare(one[0], one[1], (a, b))})
    sc["comparisons"].append(comp)
  return sc


def _finite(x):
  """The report with non-finite floats (a z of +-inf) as None, so report.json is strict JSON."""
  if isinstance(x, dict):
    return {k: _finite(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_finite(v) for v in x]
  return None if isinstance(x, float) and not math.isfinite(x) else x


def write_report(paths, out_dir=None, baseline: str | None = None, resamples: int = 2000,
                 seed: int = 0) -> dict:
  """Recomputes and compares runs; writes report.md, report.json and figures; returns the report.

  ``paths``: a sweep directory, or one or more run directories. ``out_dir`` defaults to the sweep
  directory, or for run directories to the parent of the first one. Inits are ordered as in
  sweep.json's "inits" (then by first appearance); the baseline ``b`` is ``baseline`` or the second
  init, and every other init ``a`` is compared with it. ``resamples`` and ``seed``: the
  patient-level bootstrap of the per-application summary. Returns a dict (JSON-ready, identical
  to report.json) whose "files" lists what was written.
  """
  from radimagenet_jax.evaluate import report_markdown, report_plots  # matplotlib only here
  paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
  if not paths:
    raise ValueError("write_report needs at least one sweep or run directory; got none.")
  kind, settings, runs = _collect(paths)
  out_dir = os.fspath(out_dir or (paths[0] if kind == "sweep" else
                                  os.path.dirname(os.path.abspath(paths[0]))))
  _files.check_writable(out_dir, "the report's directory")  # before any work
  usable = [r for r in runs if r["preds"] is not None]
  for r in usable[1:]:
    if r["class_names"] != usable[0]["class_names"]:
      raise ValueError(f"runs {usable[0]['run']} and {r['run']} have different class lists "
                       f"({usable[0]['class_names']} vs {r['class_names']}); only runs of the same "
                       f"task can be compared.")
  class_names = usable[0]["class_names"] if usable else None
  # The sweep's own order (candidate first, baseline second): `settings.init_order`, as the sweep
  # command records it; sweep.json's identity lists the inits sorted.
  ordered = (settings.get("settings") or {}).get("init_order") or settings.get("inits") or []
  inits = list(dict.fromkeys(list(ordered) + [r["init"] for r in runs
                                                                  if r["init"] is not None]))
  if baseline is not None and baseline not in inits:
    raise ValueError(f"baseline {baseline!r} is not one of the inits {inits}.")
  base = baseline if baseline is not None else (inits[1] if len(inits) > 1 else None)
  pairs = [(a, base) for a in inits if base is not None and a != base]

  groups, names = {}, {}
  for r in usable:
    key = (r["dataset"], r["model"], r["freeze"], r["lr"])
    names.setdefault(key, r["scenario"] or f"{r['model']}-{r['freeze']}-lr{r['lr']}")
    slot = groups.setdefault(key, {}).setdefault(r["init"], {})
    if r["fold"] in slot:
      raise ValueError(f"runs {slot[r['fold']]['run']} and {r['run']} have the same data set, "
                       f"init, model, freeze, lr and fold; if one is a copy of the other, move it "
                       f"out of the report's input, else give them different init labels in "
                       f"run.json.")
    slot[r["fold"]] = r
  missing = [{k: r[k] for k in ("run", "dataset", "init", "model", "freeze", "lr", "fold", "status",
                                "reason")} for r in runs if r["preds"] is None]

  scenarios, pooled = [], {}
  for key in sorted(groups, key=lambda k: tuple(str(v) for v in k)):
    scenarios.append(_scenario(key, names[key], groups[key], inits, pairs, missing, pooled))
  summary, comparison_summary = report_summary.summaries(scenarios, inits, pairs)
  applications = report_summary.applications(scenarios, pooled, inits, pairs, resamples, seed)

  task = None if class_names is None else ("binary" if len(class_names) == 2 else "multiclass")
  notes = [MULTICLASS_NOTE] if task == "multiclass" else []
  from radimagenet_jax.finetune import protocols  # which protocol made the numbers (issue 30)
  notes.append(protocols.report_line([r["dir"] for r in usable]))
  report = {"kind": kind, "sources": [os.path.abspath(p) for p in paths],
            "out_dir": os.path.abspath(out_dir), "task": task, "class_names": class_names,
            "inits": inits, "baseline": base, "comparisons": [list(p) for p in pairs],
            "summary": summary, "comparison_summary": comparison_summary,
            "applications": applications, "scenarios": scenarios, "missing": missing,
            "notes": notes, "files": []}
  report["warnings"] = report_summary.warnings(report)
  report["gradcam"] = report_summary.gradcam_runs(paths[0]) if kind == "sweep" else []
  report["warnings"] += [f"{w} (gradcam in {g['dir']})" for g in report["gradcam"]
                         for w in g["warnings"]]
  os.makedirs(out_dir, exist_ok=True)
  report["files"] = report_plots.draw(report, pooled, out_dir)
  report["files"] += [os.path.join(report["out_dir"], f) for f in ("report.md", "report.json")]
  report = _finite(report)
  _files.remove_stale_tmp(report["out_dir"], ("report.md", "report.json"))  # a killed report's
  _files.write_text_atomic(report["files"][-2], report_markdown.markdown(report))
  _files.write_text_atomic(report["files"][-1], json.dumps(report, indent=1, allow_nan=False))
  return report
