"""The report's summaries: per init, per comparison (Holm), per application, and its warnings.

* ``summaries``: per init the scenario AUCs described (the paper's Table 2 rows); per comparison
  the gains, the per-scenario paired tests with Holm's step-down correction within each
  application (data set), and the counts of significant wins before and after it.
* ``applications``: per data set, the mean AUC per init over its scenarios and the gain of each
  init over the baseline, ``(mean_a - mean_b) / mean_b``, with a 95% CI and one P value from a
  patient-level paired bootstrap over the pooled out-of-fold predictions: patients are drawn with
  replacement (``np.random.default_rng(seed)``, ``resamples`` times; a patient's images enter
  together, as often as the patient is drawn), and in each resample every scenario's AUC is
  recomputed for both inits on the same draw, then averaged over scenarios. The CIs are percentile
  intervals; the P value is two-sided normal on ``z = D / sd(D*)`` with D the difference of the
  mean AUCs (pROC's bootstrap ``roc.test``). The unit of independence is the patient; the
  scenarios are not independent of each other (same patients), which the joint resampling keeps.
* ``warnings``: sentences a reader cannot miss: AUC CIs that include 0.5, collapsed models (score
  spread below ``COLLAPSE_TOLERANCE``), applications where no init beats chance.
"""
from __future__ import annotations

import json
import os

import numpy as np
from scipy import stats as sps

from radimagenet_jax.evaluate import clustered

ALPHA = 0.05
COLLAPSE_TOLERANCE = 1e-3   # max - min of a model's test scores below this: a collapsed model
LEVEL = 0.95


def describe(values) -> dict:
  """n, mean, SD (ddof=1), min, max of a list of floats (None where undefined)."""
  v = np.asarray(values, np.float64)
  n = int(v.size)
  return {"n": n, "mean": float(v.mean()) if n else None,
          "sd": float(v.std(ddof=1)) if n > 1 else None,
          "min": float(v.min()) if n else None, "max": float(v.max()) if n else None}


def holm(pvalues) -> list:
  """Holm's step-down adjusted P values (None stays None): sorted ascending, the i-th (from 0) of
  m is multiplied by m - i, then made non-decreasing and capped at 1."""
  known = [(p, i) for i, p in enumerate(pvalues) if p is not None]
  out = [None] * len(pvalues)
  running = 0.0
  for rank, (p, i) in enumerate(sorted(known)):
    running = max(running, min(1.0, (len(known) - rank) * p))
    out[i] = running
  return out


def summaries(scenarios, inits, pairs) -> tuple[dict, list]:
  """Per init: the scenario AUCs described (overall and per model); per pair: gains and wins.

  Sets ``p_holm`` on every scenario comparison (Holm within its application and pair)."""
  summary = {}
  for init in inits:
    rows = [(s["model"], s["inits"][init]["auc"]) for s in scenarios
            if init in s["inits"] and s["inits"][init]["auc"] is not None]
    summary[init] = dict(describe([v for _, v in rows]), by_model={
        m: describe([v for mm, v in rows if mm == m]) for m in dict.fromkeys(m for m, _ in rows)})
  comparison_summary = []
  for a, b in pairs:
    comps = [c for s in scenarios for c in s["comparisons"] if (c["a"], c["b"]) == (a, b)]
    for dataset in dict.fromkeys(s["dataset"] for s in scenarios):
      family = [c for s in scenarios if s["dataset"] == dataset for c in s["comparisons"]
                if (c["a"], c["b"]) == (a, b)]
      for c, p in zip(family, holm([(c["test"] or {}).get("p_value") for c in family])):
        c["p_holm"] = p
    tests = [(c["test"], c["p_holm"]) for c in comps
             if c["test"] and c["test"]["p_value"] is not None]
    comparison_summary.append({
        "a": a, "b": b, "n_scenarios": len(comps),
        "gain": describe([c["gain"] for c in comps if c["gain"] is not None]),
        "difference": describe([c["difference"] for c in comps if c["difference"] is not None]),
        "n_tested": len(tests),
        "a_better_p05": sum(t["p_value"] < ALPHA and t["difference"] > 0 for t, _ in tests),
        "b_better_p05": sum(t["p_value"] < ALPHA and t["difference"] < 0 for t, _ in tests),
        "a_better_holm": sum(h < ALPHA and t["difference"] > 0 for t, h in tests),
        "b_better_holm": sum(h < ALPHA and t["difference"] < 0 for t, h in tests)})
  return summary, comparison_summary


def _key(sc) -> tuple:
  return (sc["dataset"], sc["model"], sc["freeze"], sc["lr"])


def _union(sets) -> tuple:
  """(labels, patient index, count, position of each set's images) over several (ids, labels,
  probs, patients) sets; an image without a patient id is its own patient."""
  where, labels, patients = {}, [], []
  for ids, y, _, pats in sets:
    for i, lab, pat in zip(ids, y, pats):
      if i not in where:
        where[i] = len(labels)
        labels.append(int(lab))
        patients.append(str(pat).strip() or f"image:{i}")
      elif labels[where[i]] != int(lab):
        raise ValueError(f"image {i!r} has label {labels[where[i]]} in one scenario and {lab} in "
                         f"another; the scenarios do not share their test images.")
  index, count = clustered.patient_index(patients, len(patients))
  pos = [np.array([where[i] for i in ids], np.int64) for ids, *_ in sets]
  return np.array(labels, bool), index, count, pos


def _application(dataset, scs, pooled, inits, pairs, resamples, seed) -> dict:
  keys = {init: [s for s in scs if init in s["inits"] and s["inits"][init]["auc"] is not None]
          for init in inits}
  sets = [pooled[_key(s) + (init,)] for init in inits for s in keys[init]]
  labels, index, count, pos = _union(sets)
  counts = clustered.patient_draws(index, count, labels, resamples, seed)
  boot, k = {}, 0
  for init in inits:
    for s in keys[init]:
      _, _, probs, _ = sets[k]
      boot[s["scenario"], init] = clustered.resampled_aucs(
          labels[pos[k]], probs[:, 1][None], index[pos[k]], counts)[:, 0]
      k += 1
  q = [(1 - LEVEL) / 2, (1 + LEVEL) / 2]
  out = {"dataset": dataset, "n_scenarios": len(scs), "n_images": int(labels.size),
         "n_patients": count, "unit": "patient", "method": "patient-level paired bootstrap",
         "resamples": int(resamples), "seed": int(seed), "level": LEVEL, "inits": {},
         "comparisons": []}
  for init in inits:
    if keys[init]:
      mean = np.mean([s["inits"][init]["auc"] for s in keys[init]])
      draws = np.mean([boot[s["scenario"], init] for s in keys[init]], axis=0)
      lo, hi = np.nanquantile(draws, q)
      out["inits"][init] = {"n_scenarios": len(keys[init]), "mean_auc": float(mean),
                            "ci_low": float(lo), "ci_high": float(hi)}
  for a, b in pairs:
    both = [s for s in keys[a] if s in keys[b]]
    comp = {"a": a, "b": b, "n_scenarios": len(both), "mean_auc_a": None, "mean_auc_b": None,
            "difference": None, "gain": None, "gain_ci_low": None, "gain_ci_high": None,
            "z": None, "p_value": None}
    if both:
      ma = np.mean([s["inits"][a]["auc"] for s in both])
      mb = np.mean([s["inits"][b]["auc"] for s in both])
      da = np.mean([boot[s["scenario"], a] for s in both], axis=0)
      db = np.mean([boot[s["scenario"], b] for s in both], axis=0)
      ok = np.isfinite(da) & np.isfinite(db)
      gains = (da[ok] - db[ok]) / db[ok]
      sd = float(np.std(da[ok] - db[ok], ddof=1))
      diff = float(ma - mb)
      z = diff / sd if sd > 0 else (0.0 if diff == 0 else np.copysign(np.inf, diff))
      lo, hi = np.quantile(gains, q)
      comp.update(mean_auc_a=float(ma), mean_auc_b=float(mb), difference=diff,
                  gain=float(diff / mb) if mb else None, gain_ci_low=float(lo),
                  gain_ci_high=float(hi), z=float(z), p_value=float(2 * sps.norm.sf(abs(z))))
    tested = [c for s in both for c in s["comparisons"] if (c["a"], c["b"]) == (a, b)
              and c.get("p_holm") is not None]
    comp.update(n_tested=len(tested),
                a_better_holm=sum(c["p_holm"] < ALPHA and c["difference"] > 0 for c in tested),
                b_better_holm=sum(c["p_holm"] < ALPHA and c["difference"] < 0 for c in tested))
    out["comparisons"].append(comp)
  return out


def applications(scenarios, pooled, inits, pairs, resamples: int = 2000, seed: int = 0) -> list:
  """Per data set of binary scenarios: mean AUC per init and the bootstrap gains (module doc)."""
  out = []
  for dataset in dict.fromkeys(s["dataset"] for s in scenarios):
    scs = [s for s in scenarios if s["dataset"] == dataset and any(
        pooled[_key(s) + (i,)][2].shape[1] == 2 for i in s["inits"])]
    if any(s["inits"][i]["auc"] is not None for s in scs for i in s["inits"]):
      out.append(_application(dataset, scs, pooled, inits, pairs, resamples, seed))
  return out


def warnings(report: dict) -> list[str]:
  """The sentences report.md opens with (and the CLI prints): chance-level and collapsed models,
  applications where no init beats chance."""
  out = []
  chance = [f"{s['scenario']} / {i}" for s in report["scenarios"] for i, r in s["inits"].items()
            if r["ci_low"] is not None and r["ci_low"] <= 0.5 <= r["ci_high"]]
  if chance:
    out.append(f"CHANCE LEVEL: the {int(LEVEL * 100)}% AUC CI includes 0.5 for {len(chance)} "
               f"model(s): {', '.join(chance)}. These models are not shown to discriminate at all.")
  collapsed = [f"{f['run']} (spread {f['score_spread']:.2g})" for s in report["scenarios"]
               for r in s["inits"].values() for f in r["folds"]
               if f["score_spread"] is not None and f["score_spread"] < COLLAPSE_TOLERANCE]
  if collapsed:
    out.append(f"COLLAPSED MODEL: {len(collapsed)} run(s) give (almost) the same score to every "
               f"test image (max - min < {COLLAPSE_TOLERANCE:g}): {', '.join(collapsed)}. Their "
               f"AUCs and gains mean nothing.")
  for dataset in dict.fromkeys(s["dataset"] for s in report["scenarios"]):
    rs = [r for s in report["scenarios"] if s["dataset"] == dataset for r in s["inits"].values()
          if r["ci_low"] is not None]
    if rs and not any(r["ci_low"] > 0.5 for r in rs):
      out.append(f"NO INIT BEATS CHANCE on {dataset or 'this data'}: no model's {int(LEVEL * 100)}"
                 f"% AUC CI lies above 0.5, so differences between inits (gains) are not evidence "
                 f"that one initialisation is better.")
  return out


def run_warnings(metrics: dict, probs) -> list[str]:
  """What a single run's summary flags: an AUC CI including 0.5, a collapsed model."""
  out = []
  lo, hi = metrics.get("ci_low"), metrics.get("ci_high")
  if lo is not None and lo <= 0.5 <= hi:
    out.append(f"CHANCE LEVEL: the test AUC's CI [{lo:.3f}, {hi:.3f}] includes 0.5; this model "
               f"is not shown to discriminate at all.")
  spread = float(np.max(np.ptp(np.asarray(probs, np.float64), axis=0))) if len(probs) else None
  if spread is not None and spread < COLLAPSE_TOLERANCE:
    out.append(f"COLLAPSED MODEL: every test image gets (almost) the same score (max - min "
               f"{spread:.2g} < {COLLAPSE_TOLERANCE:g}).")
  return out


def gradcam_runs(sweep_dir: str) -> list[dict]:
  """The `gradcam --config.sweep` outputs of this sweep (its sub-folders holding a summary.json
  whose "sweep" is this directory): their Dice per init, comparisons and panel, for report.md."""
  sweep_dir = os.path.abspath(sweep_dir)
  out = []
  for name in sorted(os.listdir(sweep_dir)) if os.path.isdir(sweep_dir) else []:
    path = os.path.join(sweep_dir, name, "summary.json")
    try:
      with open(path) as f:
        data = json.load(f)
    except (OSError, ValueError):
      continue
    if isinstance(data, dict) and data.get("sweep") == sweep_dir and "init_order" in data:
      panel = os.path.join(name, "panel.png")
      out.append({"dir": os.path.join(sweep_dir, name), "inits": data.get("inits") or {},
                  "comparisons": data.get("comparisons") or [], "warnings":
                  data.get("warnings") or [], "n_runs": data.get("n_runs"),
                  "panel": panel if os.path.isfile(os.path.join(sweep_dir, panel)) else None})
  return out
