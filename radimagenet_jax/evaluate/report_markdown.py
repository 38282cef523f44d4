"""report.md: the report dict (report.py) rendered as Markdown; warnings first, in bold."""
from __future__ import annotations

import os


def _f(x, digits: int = 3) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


def _pct(g) -> str:
  return "–" if g is None else f"{100 * g:+.1f}%"


def _p(p) -> str:
  return "–" if p is None else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def _table(head: list, rows: list) -> list:
  return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
          + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""])


def markdown(report: dict) -> str:
  """report.md: summaries, per-scenario AUCs and tests, per-fold tests, missing runs, figures."""
  inits, scenarios = report["inits"], report["scenarios"]
  out = ["# Fine-tuning comparison report", ""]
  if report.get("warnings"):
    out += ["## WARNINGS: read these before any number below", ""]
    out += [f"- **{w}**" for w in report["warnings"]] + [""]
  methods = sorted({r.get("method") for s in scenarios for r in s["inits"].values()
                    if r.get("method")})
  out += [f"- Source ({report['kind']}): " + ", ".join(f"`{s}`" for s in report["sources"]),
          f"- Task: {report['task']}; classes: {report['class_names']}",
          f"- Inits: {', '.join(inits)}; baseline: {report['baseline']}",
          "- Every number is recomputed from the runs' predictions.csv. AUC: pooled out-of-fold "
          "predictions (each test image once), 95% CI; paired two-sided test on the same test ids; "
          "gain = (AUC_a - AUC_b) / AUC_b. Unit of independence: the patient. CI / test method: "
          + (", ".join(methods) or "none") + " (obuchowski = Obuchowski 1997 clustered "
          "nonparametric, used when a patient has several images; delong = one image per "
          "patient). Per-scenario P values are also given Holm-corrected within each application.",
          ""]
  out += _applications(report)
  out += _gradcam(report)
  out += ["## AUC per init over scenarios", ""] + _table(
      ["init", "scenarios", "mean AUC", "SD", "min", "max"],
      [[i, s["n"], _f(s["mean"]), _f(s["sd"]), _f(s["min"]), _f(s["max"])]
       for i, s in report["summary"].items()])
  out += ["### By model", ""] + _table(
      ["model", "init", "scenarios", "mean AUC", "SD"],
      [[m, i, s["by_model"][m]["n"], _f(s["by_model"][m]["mean"]), _f(s["by_model"][m]["sd"])]
       for m in dict.fromkeys(sc["model"] for sc in scenarios)
       for i, s in report["summary"].items() if m in s["by_model"]])
  if report["comparison_summary"]:
    out += ["## Comparisons", ""] + _table(
        ["a vs b", "scenarios", "mean gain", "SD gain", "tested", "a better (p<0.05)",
         "b better (p<0.05)", "a better (Holm)", "b better (Holm)"],
        [[f"{c['a']} vs {c['b']}", c["n_scenarios"], _pct(c["gain"]["mean"]),
          _pct(c["gain"]["sd"]).lstrip("+"), c["n_tested"], c["a_better_p05"], c["b_better_p05"],
          c["a_better_holm"], c["b_better_holm"]]
         for c in report["comparison_summary"]])
  rows = []
  for sc in scenarios:
    cells = [sc["scenario"]]
    for i in inits:
      r = sc["inits"].get(i)
      cells.append("–" if r is None else f"{_f(r['auc'])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}]"
                   + (f" (folds {_f(r['fold_auc_mean'])} ± {_f(r['fold_auc_sd'])})"
                      if r["n_folds"] > 1 else "") + (f" ({r['note']})" if r["note"] else ""))
    for c in sc["comparisons"]:
      t = c["test"] or {}
      cells.append(f"{_pct(c['gain'])} / z {_f(t.get('z'), 2)} / p {_p(t.get('p_value'))}"
                   f" / Holm {_p(c.get('p_holm'))}"
                   + (f" ({c['note']})" if c["note"] else ""))
    rows.append(cells + ([f"missing: {', '.join(sc['missing'])}"] if sc["missing"] else [""]))
  pairs = [f"{a} vs {b}: gain / z / p / Holm p" for a, b in report["comparisons"]]
  out += ["## Scenarios", ""] + _table(["scenario"] + [f"{i} AUC [95% CI]" for i in inits]
                                       + pairs + ["notes"], rows)
  fold_rows = [[sc["scenario"], f["fold"], f"{c['a']} vs {c['b']}", _f((f["test"] or {}).get(
      "auc_a")), _f((f["test"] or {}).get("auc_b")), _f((f["test"] or {}).get("z"), 2),
      _p((f["test"] or {}).get("p_value")), f["note"] or ""]
      for sc in scenarios for c in sc["comparisons"] for f in c["folds"]]
  if fold_rows:
    out += ["## Per-fold paired DeLong tests", ""] + _table(
        ["scenario", "fold", "a vs b", "AUC a", "AUC b", "z", "p", "note"], fold_rows)
  out += ["## Missing runs", ""]
  out += _table(["run", "init", "model", "freeze", "lr", "fold", "status", "reason"],
                [[m[k] for k in ("run", "init", "model", "freeze", "lr", "fold", "status",
                                 "reason")] for m in report["missing"]]) \
      if report["missing"] else ["None: every run is done and has predictions.", ""]
  if report["notes"]:
    out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
  pngs = [f for f in report["files"] if f.endswith(".png")]
  vectors = [os.path.basename(f) for f in report["files"] if f.endswith(".pdf")]
  if pngs:
    out += ["## Figures", ""] + [f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in pngs]
    out += ["", "Vector versions (PDF): " + ", ".join(vectors)] if vectors else []
  return "\n".join(out) + "\n"


def _applications(report: dict) -> list:
  """The per-application table: mean AUC per init, the gain with its bootstrap CI and P value,
  the per-scenario wins after Holm."""
  out = []
  for app in report.get("applications") or []:
    out += [f"## Application: {app['dataset'] or 'runs'}", "",
            f"{app['n_scenarios']} scenario(s), {app['n_images']} test images of "
            f"{app['n_patients']} patients. Mean AUC over scenarios per init; gain of the mean "
            f"AUCs with a {int(100 * app['level'])}% CI and P value from a patient-level paired "
            f"bootstrap ({app['resamples']} resamples of patients, seed {app['seed']}, percentile "
            f"CI, two-sided normal P on the difference); wins count the per-scenario paired "
            f"tests significant after Holm's correction.", ""]
    out += _table(["init", "scenarios", "mean AUC", f"{int(100 * app['level'])}% CI"],
                  [[i, r["n_scenarios"], _f(r["mean_auc"]),
                    f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]"] for i, r in app["inits"].items()])
    out += _table(["a vs b", "scenarios", "mean AUC a", "mean AUC b", "gain [95% CI]", "p",
                   "verdict", "a better (Holm)", "b better (Holm)", "tested"],
                  [[f"{c['a']} vs {c['b']}", c["n_scenarios"], _f(c["mean_auc_a"]),
                    _f(c["mean_auc_b"]), f"{_pct(c['gain'])} [{_pct(c['gain_ci_low'])}, "
                    f"{_pct(c['gain_ci_high'])}]", _p(c["p_value"]), _verdict(c["p_value"]),
                    c["a_better_holm"],
                    c["b_better_holm"], c["n_tested"]] for c in app["comparisons"]])
  return out


def _verdict(p) -> str:
  if p is None:
    return "not tested"
  return "significant (p < 0.05)" if p < 0.05 else "**not significant** (p >= 0.05)"


def _gradcam(report: dict) -> list:
  """Grad-CAM over the sweep (`gradcam --config.sweep`), when it was run into a sub-folder."""
  out = []
  for g in report.get("gradcam") or []:
    out += [f"## Grad-CAM Dice over the sweep (`{g['dir']}`)", "",
            f"{g['n_runs']} runs, each on its own held-out test images with its best checkpoint. "
            "Dice per init: the mean over scenarios of each scenario's mean Dice (the paper's "
            "Figure 5); paired test on per-patient means of the scenario-averaged Dice.", ""]
    out += _table(["init", "scenarios", "mean Dice"],
                  [[i, r.get("n_scenarios"), _f(r.get("mean_dice"))] for i, r in g["inits"].items()])
    rows = []
    for c in g["comparisons"]:
      d = c.get("dice") or {}
      test = d.get("recommended_test")
      p = (d.get(test) or {}).get("pvalue") if test else None
      rows.append([f"{c['a']} vs {c['b']}", d.get("n", 0), _f((d.get("difference") or {})
                                                               .get("mean")), test or "–", _p(p),
                   _verdict(p)])
    out += _table(["a vs b", "patients", "mean Dice difference", "test", "p", "verdict"], rows)
    if g.get("panel"):
      out += [f"![Grad-CAM panel]({g['panel']})", ""]
  return out
