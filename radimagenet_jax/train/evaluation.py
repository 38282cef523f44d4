"""Evaluating variables on a split: metric sums on the device (`run_eval`), per-example class
probabilities in source order from every process (`predict`), and the `evaluate` command for a
workdir's checkpoint (`evaluate_workdir`, reading the workdir's own config.json)."""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from radimagenet_jax import checkpoints as ckpt_lib
from radimagenet_jax import distributed
from radimagenet_jax.data import pipeline
from radimagenet_jax.train import batches, steps


def run_eval(config, eval_fn, variables, source, mesh, num_classes) -> dict:
  """Loss / top-1 / top-5 / confusion over ``source`` (metric sums stay on the device)."""
  acc = jax.device_put(steps.init_eval_metrics(num_classes), distributed.replicated(mesh))
  for batch in batches.eval_batches(source, batch_size=config.eval_batch_size or config.batch_size,
                                    image_size=config.image_size,
                                    preprocess_mode=config.preprocess, mesh=mesh,
                                    worker_count=config.worker_count,
                                    max_batches=config.eval_steps):
    acc = eval_fn(variables, acc, batch)
  return steps.summarize(acc)


def predict(config, model, variables, source, mesh) -> tuple[np.ndarray, np.ndarray]:
  """(labels (N,), probabilities (N, C)) for every example of ``source`` in source order, on every
  process (the padded rows are dropped, the shards of all processes gathered)."""
  from jax.experimental import multihost_utils
  fn = steps.compile_predict_step(model, mesh, config.preprocess)
  n = len(source)
  labels = np.zeros(n, np.int32)
  probs = None
  for batch in batches.eval_batches(source, batch_size=config.eval_batch_size or config.batch_size,
                                    image_size=config.image_size,
                                    preprocess_mode=config.preprocess, mesh=mesh,
                                    worker_count=config.worker_count, indexed=True):
    out = fn(variables, batch)
    host = {k: batch[k] for k in ("label", "mask", batches.INDEX_KEY)}
    host["probs"] = out
    if jax.process_count() > 1:
      host = multihost_utils.process_allgather(host, tiled=True)
    host = jax.device_get(host)
    keep = np.asarray(host["mask"]) > 0
    idx = np.asarray(host[batches.INDEX_KEY])[keep]
    if probs is None:
      probs = np.zeros((n, np.asarray(host["probs"]).shape[-1]), np.float32)
    probs[idx] = np.asarray(host["probs"])[keep]
    labels[idx] = np.asarray(host["label"])[keep]
  return labels, probs


def evaluate_workdir(workdir: str, *, step: int | None = None, split: str | None = None,
                     config=None) -> dict[str, Any]:
  """`radimagenet-jax evaluate --workdir=DIR [--step N] [--split S]`: the workdir's checkpoint
  (latest, or ``step``) on its config's eval split (or ``split``), with the config it was trained
  with (the workdir's config.json; or ``config`` when given); writes
  ``<workdir>/eval_<split>_step<N>.json``."""
  from radimagenet_jax.train import loop, summary as summary_lib
  distributed.initialize()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if config is None:
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
      raise FileNotFoundError(f"{workdir}: no config.json; expected the workdir of a `pretrain` "
                              f"or `finetune` run.")
    with open(config_path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  else:
    config = ml_collections.ConfigDict(config.to_dict())
  if split:
    config.eval_split = split
  step = ckpt_lib.latest_step(workdir) if step is None else int(step)
  if step is None:
    raise FileNotFoundError(f"{workdir}: no checkpoint to evaluate; train first.")
  mesh = distributed.make_mesh()
  source = pipeline.open_source(config.dataset, config.eval_split, config.data_dir or None)
  class_names = pipeline.class_names(source)
  meta = ckpt_lib.read_metadata(workdir, step)
  num_classes = int(meta.get("num_classes") or config.num_classes or len(class_names))
  ckpt_lib.check_identity(meta, loop.identity(config, num_classes), workdir)
  model = loop.create_model(config, num_classes)
  variables = distributed.put_replicated(
      ckpt_lib.load_variables(workdir, meta["model_name"], step=step), mesh)
  eval_fn = steps.compile_eval_step(model, mesh, config.preprocess)
  print(f"evaluating {workdir} step {step} on {config.dataset} [{config.eval_split}] "
        f"({len(source)} examples)...", flush=True)
  ev = run_eval(config, eval_fn, variables, source, mesh, num_classes)
  result = summary_lib.build(config, step, ev, class_names, 0.0)
  result.pop("images_per_second")
  if distributed.is_main_process():
    path = os.path.join(workdir, f"eval_{config.eval_split}_step{step}.json")
    loop.write_json(path, result)
    summary_lib.print_summary(result)
    print(f"wrote {path}")
  return result
