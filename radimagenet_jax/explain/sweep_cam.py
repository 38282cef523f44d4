"""`radimagenet-jax gradcam --config.sweep=DIR`: Grad-CAM over a sweep, the paper's Figure 5.

For every finished run of a sweep (``DIR/runs/*``; or DIR itself, one run), the run's own held-out
test set is rebuilt from its config (finetune.load_sets, the fold it was tested on) and checked
against its ``splits.json``; each image is explained with that run's ``best`` checkpoint, at the
run's input size and preprocessing. So every image is explained only by models that never trained
or selected on it.

Reported (summary.json): per scenario and init the Dice over the pooled held-out images (empty
masks left out unless ``include_empty_masks``); per init the mean of the scenario means (the
number in the paper's Figure 5); per comparison (every init against the baseline, the second init
of the sweep, as in the report) the paired test on patients: each image's Dice averaged over the
scenarios, then per patient, then ``paired_comparison`` (t-test, Wilcoxon, Shapiro-Wilk). Written:
per_image.csv (one row per run and image), summary.json, config.json and a Figure-5-style panel
(panel.png + panel.pdf: the first scenario's fold, the two inits side by side on the same images).
"""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from radimagenet_jax import _files
from radimagenet_jax.evaluate import command as evaluate_command
from radimagenet_jax.evaluate import paired as stats
from radimagenet_jax.explain import checks, console, pictures as pictures_lib, study
from radimagenet_jax.finetune import run as finetune_run


def find_runs(path: str) -> list[dict]:
  """The finished runs of a sweep directory (or the one run ``path`` is): dir and run.json."""
  path = os.path.abspath(os.path.expanduser(path))
  dirs = ([path] if os.path.isfile(os.path.join(path, "run.json")) else
          sorted(os.path.join(path, "runs", d) for d in os.listdir(os.path.join(path, "runs")))
          if os.path.isdir(os.path.join(path, "runs")) else [])
  runs, skipped = [], []
  for d in dirs:
    try:
      with open(os.path.join(d, "run.json")) as f:
        info = json.load(f)
    except (OSError, ValueError):
      skipped.append(os.path.basename(d))
      continue
    ready = all(os.path.exists(os.path.join(d, n)) for n in ("best", "splits.json", "config.json"))
    if info.get("status") == "done" and ready:
      runs.append({"dir": d, "name": os.path.basename(d), **info})
    else:
      skipped.append(os.path.basename(d))
  if not runs:
    raise ValueError(f"--config.sweep={path}: no finished fine-tuning run (run.json with status "
                     f"done, best/, splits.json, config.json) in it or under its runs/.")
  return runs


def _run_config(run: dict, config) -> ml_collections.ConfigDict:
  saved = evaluate_command.workdir_config(run["dir"])
  saved = ml_collections.ConfigDict(saved.to_dict())
  if config.data_dir:
    saved.data_dir = config.data_dir
  saved.build_dataset = False
  saved.fold = "none" if run.get("fold") is None else str(run["fold"])
  return saved


def _explain_run(run: dict, config, verbose: bool):
  """(rows, pictures, n images) of one run on its own held-out test set."""
  saved = _run_config(run, config)
  sets, sources = finetune_run.load_sets(saved)
  with open(os.path.join(run["dir"], "splits.json")) as f:
    recorded = json.load(f)
  ids = [e.id for e in sets["test"]]
  if ids != recorded.get("test"):
    raise ValueError(f"{run['dir']}: the test set rebuilt from its config.json ({len(ids)} images) "
                     f"differs from its splits.json ({len(recorded.get('test') or [])}); the data "
                     f"set changed since the run, so its held-out images are unknown.")
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.dataset, cfg.image_size, cfg.split = saved.dataset, int(saved.image_size), "test"
  cfg.model_a.name, cfg.model_a.weights = run["model"], os.path.join(run["dir"], "best")
  cfg.model_a.label, cfg.model_a.preprocess = run["init"], run.get("preprocess") or ""
  cfg.model_b.name = ""
  plans = checks.model_plans(cfg)
  models_ = study._create(plans, len(run["class_names"]))  # pylint: disable=protected-access
  source = sources["test"]
  checks.check_source(source, cfg)
  n = len(source) if not cfg.max_images else min(cfg.max_images, len(source))
  with console.Reporter(n, verbose, what=run["name"]) as reporter:
    _, empty, _, rows, pics, patients = study._compute(source, cfg, models_, reporter)  # pylint: disable=protected-access
  for r, p in zip(rows, patients):
    # The run's own example id (splits.json: unique, unlike a crop's source_id) and patient.
    example = sets["test"][r["index"]]
    r.update(run=run["name"], scenario=run.get("scenario"), init=run["init"], fold=run.get("fold"),
             id=example.id, patient=example.group or p or "")
  return rows, pics, len(empty)


def _per_init(rows, include_empty) -> dict:
  """{(scenario, init): {id: dice}} over the kept rows."""
  out = {}
  for r in rows:
    if include_empty or not r["mask_empty"]:
      out.setdefault((r["scenario"], r["init"]), {})[r["id"]] = (r["dice"], r["patient"])
  return out


def summarise(rows, inits, include_empty: bool, alpha: float = 0.05) -> dict:
  """The sweep's Dice summary (module docstring) from per-image rows."""
  table = _per_init(rows, include_empty)
  scenarios = list(dict.fromkeys(s for s, _ in table))
  out = {"scenarios": {}, "inits": {}, "comparisons": []}
  for s in scenarios:
    out["scenarios"][s] = {i: stats.describe([d for d, _ in table[s, i].values()])
                           for i in inits if (s, i) in table}
  for i in inits:
    means = [out["scenarios"][s][i]["mean"] for s in scenarios if i in out["scenarios"][s]
             and out["scenarios"][s][i]["mean"] is not None]
    out["inits"][i] = {"n_scenarios": len(means),
                       "mean_dice": float(np.mean(means)) if means else None}
  base = inits[1] if len(inits) > 1 else None
  for a in [i for i in inits if base is not None and i != base]:
    both = [s for s in scenarios if (s, a) in table and (s, base) in table]
    ids = sorted(set.intersection(*[set(table[s, a]) & set(table[s, base]) for s in both])
                 if both else set())
    va = [np.mean([table[s, a][i][0] for s in both]) for i in ids]
    vb = [np.mean([table[s, base][i][0] for s in both]) for i in ids]
    pats = [table[both[0], a][i][1] or i for i in ids]
    comp = (stats.paired_comparison(va, vb, alpha=alpha, names=(a, base), patients=pats)
            if ids else None)
    out["comparisons"].append({"a": a, "b": base, "n_scenarios": len(both), "n_images": len(ids),
                               "dice": comp})
  return out


def run(config, workdir: str, verbose: bool = False) -> dict:
  """Explains every finished run of ``config.sweep`` on its held-out images; returns summary."""
  checks.check_config(config)
  checks.check_workdir(workdir)
  runs = find_runs(config.sweep)
  inits = list(dict.fromkeys(r["init"] for r in runs))
  sweep_json = os.path.join(os.path.abspath(config.sweep), "sweep.json")
  if os.path.isfile(sweep_json):
    with open(sweep_json) as f:
      settings = json.load(f)
    ordered = (settings.get("settings") or {}).get("init_order") or settings.get("inits") or []
    inits = list(dict.fromkeys([i for i in ordered if i in inits] + inits))
  rows, panel = [], {}
  for r in runs:
    if verbose:
      print(f"gradcam: {r['name']} ({r['model']}, init {r['init']}, fold {r.get('fold')}): its "
            f"held-out test images, best checkpoint", flush=True)
    run_rows, pics, _ = _explain_run(r, config, verbose)
    rows += run_rows
    key = (r.get("scenario"), r.get("fold"))
    if not panel or next(iter(panel)) == key:
      panel.setdefault(key, {})[r["init"]] = pics
  summary = {"sweep": os.path.abspath(config.sweep), "n_runs": len(runs), "init_order": inits,
             "runs": [r["name"] for r in runs],
             "settings": {"threshold": config.threshold, "comparison": config.comparison,
                          "include_empty_masks": config.include_empty_masks},
             **summarise(rows, inits, config.include_empty_masks, config.alpha),
             "warnings": study.map_warnings(rows, "init")}
  files = _write(workdir, config, rows, summary, panel, inits, runs[0]["class_names"])
  if verbose:
    for line in ([f"WARNING: {w}" for w in summary["warnings"]] + summary_lines(summary)
                 + [f"wrote {f}" for f in files]):
      print(line)
  return summary


def summary_lines(summary) -> list[str]:
  lines = [f"gradcam over {summary['n_runs']} runs of {summary['sweep']}, each on its own held-out "
           f"test images:"]
  for i, r in summary["inits"].items():
    dice = "n/a" if r["mean_dice"] is None else f"{r['mean_dice']:.3f}"
    lines.append(f"  {i}: Dice {dice}, mean over {r['n_scenarios']} scenario(s)")
  for c in summary["comparisons"]:
    d = c["dice"] or {}
    test = d.get("recommended_test")
    p = (d.get(test) or {}).get("pvalue") if test else None
    lines.append(f"  {c['a']} vs {c['b']}: {test or 'no'} test on {d.get('n', 0)} patients' mean "
                 f"Dice, p = {'n/a' if p is None else f'{p:.3g}'}")
  return lines


def _write(workdir, config, rows, summary, panel, inits, names) -> list[str]:
  os.makedirs(workdir, exist_ok=True)
  path = lambda name: os.path.join(workdir, name)  # noqa: E731
  _files.remove_stale_tmp(workdir)  # what a killed gradcam left
  _files.write_text_atomic(path("config.json"), config.to_json_best_effort(indent=2))
  fields = ["run", "scenario", "init", "fold"] + [k for k in (rows[0] if rows else {})
                                                  if k not in ("run", "scenario", "init", "fold")]
  study.write_csv(path("per_image.csv"), rows, fields)
  _files.write_text_atomic(path("summary.json"), json.dumps(summary, indent=2))
  files = [path("per_image.csv"), path("summary.json")]
  pics = next(iter(panel.values()), {}) if panel else {}
  if len(inits) > 1 and inits[0] in pics and inits[1] in pics and config.panel_rows:
    a, b = inits[0], inits[1]
    merged = [dict(pa, **{k: {a: pa[k][a], b: pb[k][b]} for k in ("maps", "dice", "region",
                                                                  "probs")})
              for pa, pb in zip(pics[a], pics[b])]
    files += pictures_lib.save_panel(pictures_lib.panel(config, [a, b], merged, names, None),
                                     path("panel.png"), f"Grad-CAM {a} vs {b} (held-out images)")
  return files + [path("config.json")]
