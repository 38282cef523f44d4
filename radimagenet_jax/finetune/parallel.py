"""A sweep's runs trained K at a time in one compiled step (`--config.parallel_runs=K`).

Runs batch together when everything that determines their data stream and compiled shapes is
the same (`group_key`: the run config without init, freeze, learning rate and preprocessing, i.e.
model, image size, data set, fold, batch size, steps, seed, dtype, ...): then they see the same
batches in the same order alone, and `train.loop.fit_runs` trains them on ONE loader with
one batch per step. Groups are cut into chunks of at most K runs, and a chunk's runs that stopped
at different checkpoint steps (a killed group saves its runs one after the other) resume as
separate chunks, each from its own step, so every run resumes exactly.

Per run the outputs are `finetune`'s: the engine's files from `fit_runs`, then `run.finish`
(test predictions with `best`, predictions.csv, metrics.json, splits.json, run.json). A run that
fails before training (bad weights), while training (NaN) or after (prediction) fails alone; the
sweep records it as it records a failed `finetune`.
"""
from __future__ import annotations

import json
from typing import Callable, Sequence

from radimagenet_jax import checkpoints
from radimagenet_jax.finetune import run as run_lib
from radimagenet_jax.finetune import scenarios
from radimagenet_jax.train import loop, preemption, vmapped

# Config fields that differ between runs that batch together.
PER_RUN_FIELDS = vmapped.PER_RUN_FIELDS + ("inits",)


def check_parallel_runs(value) -> int:
  """``config.parallel_runs`` as an int >= 1, else a one-line error."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"config.parallel_runs={value!r}: expected an integer >= 1 (the number of "
                     "runs trained together in one compiled step; 1 = one run at a time)")
  return value


def group_key(config) -> str:
  """What runs batched together must share: the run config minus PER_RUN_FIELDS (as JSON)."""
  from radimagenet_jax import models  # pylint: disable=g-import-not-at-top
  values = {k: v for k, v in config.to_dict().items() if k not in PER_RUN_FIELDS}
  values["model"] = models.get_spec(config.model).name
  return json.dumps(values, sort_keys=True, default=str)


def plan(specs: Sequence[scenarios.RunSpec], config_of: Callable[[scenarios.RunSpec], object],
         parallel_runs: int) -> list[list[scenarios.RunSpec]]:
  """The runs in chunks of at most ``parallel_runs`` sharing a `group_key`, in the order of each
  group's first run."""
  groups: dict[str, list[scenarios.RunSpec]] = {}
  for spec in specs:
    groups.setdefault(group_key(config_of(spec)), []).append(spec)
  return [members[i:i + parallel_runs] for members in groups.values()
          for i in range(0, len(members), parallel_runs)]


def shard(specs: Sequence[scenarios.RunSpec], config_of: Callable[[scenarios.RunSpec], object],
          parallel_runs: int, spec: str) -> list[scenarios.RunSpec]:
  """Shard ``spec`` ('i/n') of the runs when they train ``parallel_runs`` at a time: whole chunks
  of `plan`, so no chunk is split between hosts, balanced by cost. A chunk costs its runs times
  their model's forward FLOPs per image at their input size (`models.flops`; the sweep's runs
  share their data and schedule), so an Inception-ResNet-v2 run weighs 2.4 DenseNet121 ones at
  256 px. The chunks are dealt costliest first, each to the shard with the least cost so far
  (ties: the lowest index; `plan`'s order among equal chunks), so shards differ by at most one
  chunk's cost. Every host computes the same deal (integer costs, traced without the CPU-only
  forms); shards 0..n-1 partition the runs."""
  i, n = scenarios.parse_shard(spec)
  chunks = plan(specs, config_of, parallel_runs)
  if n == 1:  # one shard holds everything: nothing to weigh
    return [run for chunk in chunks for run in chunk]
  costs = [len(chunk) * _run_cost(config_of(chunk[0])) for chunk in chunks]
  load, mine = [0] * n, []
  for c in sorted(range(len(chunks)), key=lambda c: -costs[c]):  # stable: plan order
    to = min(range(n), key=lambda s: (load[s], s))
    load[to] += costs[c]
    if to == i:
      mine.append(c)
  return [run for c in sorted(mine) for run in chunks[c]]


def _run_cost(config) -> int:
  """A run's cost per training image: its model's forward FLOPs at its input size."""
  from radimagenet_jax.models import flops  # pylint: disable=g-import-not-at-top
  return flops.forward_flops(config.model, int(config.image_size))


def _by_start(run_dirs: Sequence[str]) -> list[list[int]]:
  """Indices of ``run_dirs`` split by their latest checkpoint step (None: fresh), in order."""
  parts: dict[int | None, list[int]] = {}
  for i, d in enumerate(run_dirs):
    parts.setdefault(checkpoints.latest_step(d), []).append(i)
  return list(parts.values())


def run_chunk(specs: Sequence[scenarios.RunSpec], run_dirs: Sequence[str],
              config_of: Callable[[scenarios.RunSpec], object]) -> list[BaseException | None]:
  """Trains one chunk (runs of one group); per run None (done) or the exception that failed it."""
  errors: list[BaseException | None] = [None] * len(specs)
  prepared: dict[int, run_lib.Prepared] = {}
  data = None
  for i, spec in enumerate(specs):
    try:
      config = config_of(spec)
      run_lib.validate_config(config)
      if data is None:  # one train/validation/test split for the whole group
        data = run_lib.load_sets(config)
      prepared[i] = run_lib.prepare(config, data)
    except Exception as e:  # pylint: disable=broad-except
      errors[i] = e
  ready = [i for i in range(len(specs)) if i in prepared]
  for part in _by_start([run_dirs[i] for i in ready]):
    idx = [ready[j] for j in part]
    try:
      results = loop.fit_runs([prepared[i].config for i in idx], [run_dirs[i] for i in idx],
                              [prepared[i].task for i in idx])
    except preemption.Preempted:
      raise
    except Exception as e:  # pylint: disable=broad-except
      results = [e] * len(idx)
    for i, result in zip(idx, results):
      if isinstance(result, BaseException):
        errors[i] = result
        continue
      try:
        run_lib.finish(prepared[i], run_dirs[i], result)
      except Exception as e:  # pylint: disable=broad-except
        errors[i] = e
  return errors
