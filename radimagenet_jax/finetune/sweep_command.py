"""`radimagenet-jax sweep`: the config's scenarios x inits x folds, each a `finetune` run.

    radimagenet-jax sweep --config=configs/finetune.py:busi,sweep=paper --workdir=runs/busi_sweep \
        [--config.shard=0/4]

The config names the preset (`sweep`: paper | demo) or its own scenarios (`sweep_scenarios`:
FREEZE@LR,... or a file; they replace the preset's), the models (`sweep_models`), the inits
compared in order, candidate first (`sweep_inits`, e.g. `radimagenet,imagenet`, each a label of
`config.inits` or `random`) and the folds (`sweep_folds`: all | none | 0,1,...). Every run gets the
sweep's config with its model, init, freeze mode, learning rate and fold set, in
`<workdir>/runs/<name>/`; see `finetune.scenarios` for presets and shards, `finetune.sweep` for
resume and results.csv.
`--config.parallel_runs=K` (K > 1) trains up to K runs of one architecture, input size and fold
in one compiled step (`finetune.parallel`), with the same per-run results.
"""
from __future__ import annotations

import functools

import ml_collections

from radimagenet_jax import distributed
from radimagenet_jax.finetune import parallel, run as run_lib
from radimagenet_jax.finetune import scenarios, sweep


def _list(text: str) -> list[str]:
  return [t.strip() for t in str(text).split(",") if t.strip()]


def folds_of(config) -> list[int | None]:
  if config.sweep_folds == "none":
    return [None]
  if config.sweep_folds == "all":
    return list(range(config.num_folds))
  return [int(f) for f in _list(config.sweep_folds)]


# Config fields that may change between invocations of one sweep: where things are, how they are
# logged, saved and batched, not what a run computes (`parallel_runs`: finetune.parallel's
# guarantee). Every other field, except the per-run ones set by `run_config`, is saved in
# sweep.json and refused when changed on resume (`sweep.RUN_CONFIG_KEY`).
OPERATIONAL_FIELDS = ("progress_bar", "log_every", "checkpoint_every", "keep_checkpoints",
                      "worker_count", "data_dir", "build_dataset", "eval_batch_size",
                      "compilation_cache_dir", "shard", "parallel_runs")
PER_RUN_FIELDS = ("model", "init", "freeze", "learning_rate", "fold")
# What the sweep is made of (sweep.json's identity): more of it extends the sweep (`sweep.run_sweep`).
SWEEP_FIELDS = ("sweep", "sweep_models", "sweep_inits", "sweep_folds", "sweep_scenarios")


def results_config(config) -> dict:
  """The config's fields that change a run's results and are the same for all its runs."""
  return {k: v for k, v in config.to_dict().items()
          if k not in OPERATIONAL_FIELDS + PER_RUN_FIELDS + SWEEP_FIELDS}


def plan(config) -> tuple[dict, list[scenarios.RunSpec]]:
  """(sweep settings for sweep.json, this shard's runs), checked before anything runs. With
  ``parallel_runs`` K > 1 a shard holds whole chunks of K runs (`parallel.shard`), else every n-th
  run (`scenarios.shard`)."""
  inits = _list(config.sweep_inits)
  if not inits:
    raise ValueError("config.sweep_inits is empty; expected e.g. 'radimagenet,imagenet'.")
  if config.get("sweep_scenarios"):  # the user's own list (FREEZE@LR,... or a file)
    runs = scenarios.expand(_list(config.sweep_models),
                            scenarios.parse_scenarios(config.sweep_scenarios), inits,
                            folds_of(config))
  else:
    runs = scenarios.preset_runs(config.sweep, inits, folds=folds_of(config),
                                 models=_list(config.sweep_models))
  settings = {"dataset": config.dataset, "models": sorted({r.model for r in runs}),
              "scenarios": sorted({tuple(r.scenario) for r in runs}), "inits": inits,
              "folds": sorted({r.fold for r in runs}, key=lambda f: -1 if f is None else f),
              "init_order": inits, "preset": config.sweep,
              "image_size": config.image_size, "num_epochs": config.num_epochs,
              "batch_size": config.batch_size, sweep.RUN_CONFIG_KEY: results_config(config)}
  k = parallel.check_parallel_runs(config.parallel_runs)
  if k == 1:
    return settings, scenarios.shard(runs, config.shard)
  return settings, parallel.shard(runs, functools.partial(run_config, config), k, config.shard)


def run_config(config, spec: scenarios.RunSpec) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.model, c.init, c.freeze, c.learning_rate = spec.model, spec.init, spec.freeze, spec.lr
  c.fold = "none" if spec.fold is None else str(spec.fold)
  return c


def run(config, workdir: str) -> int:
  """Runs this shard of the sweep; returns the number of failed runs."""
  settings, runs = plan(config)
  k = config.parallel_runs  # checked by plan
  config_of = functools.partial(run_config, config)
  for spec in runs:  # every run's config is valid before the first one trains
    run_lib.validate_config(config_of(spec))
  distributed.initialize()
  batched = {} if k == 1 else {  # K runs of one architecture per compiled step (finetune.parallel)
      "chunks": lambda specs: parallel.plan(specs, config_of, k),
      "run_chunk": lambda specs, dirs: parallel.run_chunk(specs, dirs, config_of)}
  rows = sweep.run_sweep(settings, workdir, runs,
                         lambda spec, run_dir: run_lib.finetune(config_of(spec), run_dir),
                         write=distributed.is_main_process(), **batched)
  failed = [r for r in rows if r["status"] == "failed"]
  done = sum(r["status"] == "done" for r in rows)
  other = len(rows) - done - len(failed)  # e.g. running in another process (locked)
  if distributed.is_main_process():
    print(f"sweep: {done} of {len(rows)} run(s) of this shard done"
          + (f", {len(failed)} failed" if failed else "")
          + (f", {other} not finished (another process is running them)" if other else "")
          + f"; wrote {workdir}/results.csv. Next: radimagenet-jax report {workdir}")
  return len(failed)
