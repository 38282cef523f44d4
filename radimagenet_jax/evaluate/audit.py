"""The audit: how much of RadImageNet's published AUC gain survives the corrected protocol.

    radimagenet-jax audit runs/acl_paper runs/acl_corrected [--out runs/acl_audit]
    audit = rij.evaluate.audit.audit(["runs/acl_paper", "runs/acl_corrected"])

Input: two (or more) sweep directories of the same application, typically one per protocol
(`sweep=paper` and `sweep=corrected`, finetune/protocols.py). For each sweep, each scenario (model,
freeze, lr) and each init, the out-of-fold test predictions of its folds are pooled (every image
tested once) and scored by AUC; the scenario's gain is (AUC_candidate - AUC_baseline) /
AUC_baseline (docs/fidelity.md), with the paired DeLong test of the two inits on the same pooled
images. Per sweep: the mean AUC per init over the scenarios, the gain of those means (the paper's
figure), the mean and SD of the scenario gains and the scenarios won at p < 0.05 either way. Across
sweeps: each sweep's gain as a share of the first sweep's ("survives") and of the published gain
of the application.

Units and method, stated in the output: the unit is the image (pooled out-of-fold predictions,
not patients: with several images per patient these P values are too small; see
docs/evaluation.md); P values are per scenario, not corrected for multiple comparisons; a gain
whose scenarios are not significantly better is reported as not shown.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from radimagenet_jax import _files
from radimagenet_jax.evaluate import report_summary, roc
from radimagenet_jax.finetune import records

# docs/fidelity.md "Evaluation": the paper's gains over ImageNet (AUC), per application.
PUBLISHED_GAIN = {"thyroid": 0.094, "breast": 0.040, "acl": 0.048, "meniscus": 0.045,
                  "pneumonia": 0.019, "covid19": 0.061, "sars_cov_2": 0.017, "hemorrhage": 0.009}
APPLICATION = {"official/thyroid": "thyroid", "ddti": "thyroid", "official/breast": "breast",
               "busi": "breast", "official/acl": "acl", "mrnet/acl_sagittal": "acl",
               "official/meniscus": "meniscus", "mrnet/meniscus_sagittal": "meniscus",
               "rsna_pneumonia": "pneumonia", "cc_ccii": "sars_cov_2", "rsna_ich": "hemorrhage"}
COLLAPSED_SPREAD = 1e-6  # scores spread below this: one score for every image (a collapsed model)
METHOD = ("unit: image (out-of-fold test predictions pooled over the folds, each image once); "
          "AUC per scenario and init; gain = (AUC_candidate - AUC_baseline) / AUC_baseline; paired "
          "two-sided DeLong test per scenario (pROC's), not corrected for multiple comparisons and "
          "not clustered by patient")


def application(dataset: str | None) -> str | None:
  """The paper's application of a data set name ('official/acl' -> 'acl'), None if not one."""
  if not dataset:
    return None
  return APPLICATION.get(dataset, APPLICATION.get(dataset.split("/")[0]))


def _runs(sweep: str) -> list[dict]:
  """The finished runs of a sweep: settings, protocol and predictions."""
  from radimagenet_jax.finetune import protocols  # pylint: disable=g-import-not-at-top
  runs_dir = os.path.join(sweep, "runs")
  out = []
  for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
    d = os.path.join(runs_dir, name)
    if not os.path.isfile(os.path.join(d, "predictions.csv")):
      continue
    run = records.read_json(os.path.join(d, "run.json"))
    if run.get("status") != "done":
      continue
    checked = records.check_run(d, complete=False)  # the records parse and agree (splits.json)
    config = records.read_json(os.path.join(d, "config.json")) if os.path.isfile(
        os.path.join(d, "config.json")) else {}
    out.append({"run": name, "model": run["model"], "freeze": run["freeze"],
                "lr": float(run["lr"]), "init": run["init"], "fold": run.get("fold"),
                "protocol": protocols.name_of(config), "dataset": run.get("dataset"),
                "preds": checked["predictions"]})
  return out


def _pooled(runs: list[dict]):
  """{id: (label, positive score)} over a scenario-init's folds (an image tested twice: error)."""
  pooled = {}
  for r in runs:
    p = r["preds"]
    if p.probs.shape[1] != 2:
      raise ValueError(f"run {r['run']}: {p.probs.shape[1]} classes; the audit compares binary "
                       "tasks (the paper's AUC).")
    for i, label, score in zip(p.ids, p.labels, p.probs[:, 1]):
      if i in pooled:
        raise ValueError(f"run {r['run']}: image {i} is tested in two folds of one scenario; "
                         "expected each image in one test fold.")
      pooled[i] = (int(label), float(score))
  return pooled


def _describe(values) -> dict:
  return report_summary.describe([x for x in values if x is not None])


def audit_sweep(sweep: str, candidate: str | None = None, baseline: str | None = None) -> dict:
  """One sweep's per-scenario and overall gains of ``candidate`` over ``baseline``."""
  settings = records.read_json(os.path.join(sweep, "sweep.json")) if os.path.isfile(
      os.path.join(sweep, "sweep.json")) else {}
  runs = _runs(sweep)
  if not runs:
    raise ValueError(f"{sweep}: no finished runs (runs/<name>/ with run.json status 'done' and "
                     "predictions.csv); expected a sweep directory (radimagenet-jax sweep).")
  order = (settings.get("settings") or {}).get("init_order") or settings.get("inits") or []
  inits = list(dict.fromkeys(list(order) + [r["init"] for r in runs]))
  candidate = candidate or inits[0]
  baseline = baseline or (inits[1] if len(inits) > 1 else None)
  for init in (candidate, baseline):
    if init not in inits:
      raise ValueError(f"{sweep}: init {init!r} not among its runs' inits {inits}; pass "
                       "--candidate / --baseline.")
  scenarios = []
  for key in sorted({(r["model"], r["freeze"], r["lr"]) for r in runs}, key=str):
    of = lambda init: [r for r in runs if (r["model"], r["freeze"], r["lr"]) == key  # noqa: E731
                       and r["init"] == init]
    a, b = _pooled(of(candidate)), _pooled(of(baseline))
    ids = sorted(set(a) & set(b))
    entry = {"model": key[0], "freeze": key[1], "lr": key[2], "n_images": len(ids),
             "folds": sorted({r["fold"] for r in of(candidate)}, key=str),
             "auc_candidate": None, "auc_baseline": None, "gain": None, "p_value": None,
             "collapsed": [init for init, p in ((candidate, a), (baseline, b)) if ids and np.ptp(
                 [p[i][1] for i in ids]) < COLLAPSED_SPREAD]}
    if ids:
      y = np.asarray([a[i][0] for i in ids])
      if len(set(y)) == 2:
        t = roc.delong_test(y, [a[i][1] for i in ids], [b[i][1] for i in ids])
        entry.update(auc_candidate=t["auc_a"], auc_baseline=t["auc_b"], p_value=t["p_value"],
                     gain=(t["auc_a"] - t["auc_b"]) / t["auc_b"] if t["auc_b"] else None)
    scenarios.append(entry)
  mean_a = _describe(s["auc_candidate"] for s in scenarios)["mean"]
  mean_b = _describe(s["auc_baseline"] for s in scenarios)["mean"]
  tested = [s for s in scenarios if s["p_value"] is not None]
  protocols_seen = sorted({r["protocol"] for r in runs})
  dataset = settings.get("dataset") or runs[0]["dataset"]
  return {"sweep": os.path.abspath(sweep), "dataset": dataset, "application": application(dataset),
          "protocol": protocols_seen[0] if len(protocols_seen) == 1 else "MIXED: " + "; ".join(
              protocols_seen),
          "candidate": candidate, "baseline": baseline, "scenarios": scenarios,
          "mean_auc_candidate": mean_a, "mean_auc_baseline": mean_b,
          "gain_of_means": (mean_a - mean_b) / mean_b if mean_a is not None and mean_b else None,
          "scenario_gain": _describe(s["gain"] for s in scenarios),
          "n_tested": len(tested),
          "collapsed": [f"{s['model']}-{s['freeze']}-lr{s['lr']:g} {init}" for s in scenarios
                        for init in s["collapsed"]],
          "candidate_better_p05": sum(s["p_value"] < 0.05 and s["gain"] > 0 for s in tested),
          "baseline_better_p05": sum(s["p_value"] < 0.05 and s["gain"] < 0 for s in tested)}


def audit(sweeps: Sequence[str], out_dir: str | None = None, candidate: str | None = None,
          baseline: str | None = None) -> dict:
  """Audits ``sweeps`` (the first is the reference, e.g. the paper protocol's); writes audit.md
  and audit.json to ``out_dir`` (default: next to the first sweep, '<sweep>_audit') atomically."""
  if len(sweeps) < 2:
    raise ValueError(f"audit needs two or more sweep directories (e.g. the paper and the corrected "
                     f"protocol's); got {list(sweeps)}.")
  for s in sweeps:
    if not os.path.isdir(s):
      raise ValueError(f"{s}: not a directory; expected a sweep directory.")
  results = [audit_sweep(s, candidate, baseline) for s in sweeps]
  apps = {r["application"] for r in results}
  if len({r["dataset"] for r in results}) > 1:
    raise ValueError("the sweeps are of different data sets (" + ", ".join(
        f"{r['sweep']}: {r['dataset']}" for r in results) + "); audit one application at a time.")
  app = next(iter(apps))
  published = PUBLISHED_GAIN.get(app) if app else None
  ref = results[0]["gain_of_means"]
  for r in results:
    g = r["gain_of_means"]
    # A share of a gain only means something when that gain is positive.
    r["share_of_reference_gain"] = g / ref if g is not None and ref and ref > 0 else None
    r["share_of_published_gain"] = g / published if g is not None and published else None
    r["verdict"] = verdict(r)
  report = {"application": app, "published_gain": published, "method": METHOD,
            "reference": results[0]["sweep"], "sweeps": results}
  out_dir = os.fspath(out_dir or os.path.normpath(sweeps[0]) + "_audit")
  os.makedirs(out_dir, exist_ok=True)
  report["files"] = [os.path.join(out_dir, "audit.json"), os.path.join(out_dir, "audit.md")]
  _files.write_json_atomic(report["files"][0], report)
  _files.write_text_atomic(report["files"][1], markdown(report))
  return report


def verdict(r: dict) -> str:
  """Words a reader cannot miss: whether the sweep shows a gain at all."""
  g = r["gain_of_means"]
  collapsed = (f"; {len(r['collapsed'])} COLLAPSED model(s) (one score for every image: "
               f"{', '.join(r['collapsed'])})" if r["collapsed"] else "")
  if g is None:
    return "no gain computable (missing runs or a single class)" + collapsed
  if r["candidate_better_p05"] == 0:
    return (f"gain {100 * g:+.1f}% NOT SHOWN: no scenario significantly better "
            f"({r['baseline_better_p05']} significantly worse, of {r['n_tested']})" + collapsed)
  return (f"gain {100 * g:+.1f}%; {r['candidate_better_p05']} of {r['n_tested']} scenarios "
          f"significantly better, {r['baseline_better_p05']} worse" + collapsed)


def _pct(x) -> str:
  return "n/a" if x is None else f"{100 * x:+.1f}%"


def _share(x) -> str:
  return "n/a (no positive gain to share)" if x is None else f"{100 * x:.0f}%"


def _points(r) -> str:
  sd = r["scenario_gain"]["sd"]
  return "n/a" if sd is None else f"{100 * sd:.1f}"


def _num(x, fmt=".3f") -> str:
  return "n/a" if x is None else format(x, fmt)


def lines(report: dict) -> list[str]:
  """The summary the command prints."""
  pub = report["published_gain"]
  out = [f"audit of {report['application'] or 'a non-paper data set'}: published gain "
         f"{_pct(pub) if pub is not None else 'none (not one of the paper applications)'}"]
  for r in report["sweeps"]:
    out.append(f"{r['protocol']}: {r['candidate']} AUC {_num(r['mean_auc_candidate'])} vs "
               f"{r['baseline']} {_num(r['mean_auc_baseline'])} over {len(r['scenarios'])} "
               f"scenario(s): {r['verdict']}; share of the first sweep's gain "
               f"{_share(r['share_of_reference_gain'])}"
               + (f", of the published {_share(r['share_of_published_gain'])}"
                  if r["share_of_published_gain"] is not None else "") + f" ({r['sweep']})")
  out.append(f"method: {report['method']}")
  return out


def markdown(report: dict) -> str:
  first = report["sweeps"][0]
  text = [f"# Audit: the AUC gain of {first['candidate']} over {first['baseline']} under each "
          "protocol", ""]
  text += [f"- {line}" for line in lines(report)] + [""]
  for r in report["sweeps"]:
    text += [f"## {r['protocol']}", "", f"Sweep `{r['sweep']}`, data set {r['dataset']}, "
             f"{r['candidate']} (candidate) vs {r['baseline']} (baseline).", "",
             "| model | freeze | lr | images | AUC candidate | AUC baseline | gain | DeLong p |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in r["scenarios"]:
      flag = f" (collapsed: {', '.join(s['collapsed'])})" if s["collapsed"] else ""
      text.append(f"| {s['model']} | {s['freeze']} | {s['lr']:g}{flag} | {s['n_images']} | "
                  f"{_num(s['auc_candidate'])} | {_num(s['auc_baseline'])} | {_pct(s['gain'])} | "
                  f"{_num(s['p_value'], '.3g')} |")
    text += ["", f"Mean over scenarios: {_num(r['mean_auc_candidate'])} vs "
             f"{_num(r['mean_auc_baseline'])}, gain of the means {_pct(r['gain_of_means'])}; "
             f"scenario gains {_pct(r['scenario_gain']['mean'])} (SD {_points(r)} points, n "
             f"{r['scenario_gain']['n']}). "
             f"Verdict: {r['verdict']}.", ""]
  return "\n".join(text) + "\n"
