"""Evaluating variables on a split: metric sums on the device (`run_eval`) and per-example class
probabilities in source order from every process (`predict`)."""
from __future__ import annotations


import jax
import numpy as np

from radimagenet_jax import distributed
from radimagenet_jax.train import eval_batches, steps


def run_eval(config, eval_fn, variables, source, mesh, num_classes) -> dict:
  """Loss / top-1 / top-5 / confusion over ``source`` (metric sums stay on the device)."""
  acc = jax.device_put(steps.init_eval_metrics(num_classes), distributed.replicated(mesh))
  for batch in eval_batches.eval_batches(source, batch_size=config.eval_batch_size or config.batch_size,
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
  for batch in eval_batches.eval_batches(source, batch_size=config.eval_batch_size or config.batch_size,
                                    image_size=config.image_size,
                                    preprocess_mode=config.preprocess, mesh=mesh,
                                    worker_count=config.worker_count, indexed=True):
    out = fn(variables, batch)
    host = {k: batch[k] for k in ("label", "mask", eval_batches.INDEX_KEY)}
    host["probs"] = out
    if jax.process_count() > 1:
      host = multihost_utils.process_allgather(host, tiled=True)
    host = jax.device_get(host)
    keep = np.asarray(host["mask"]) > 0
    idx = np.asarray(host[eval_batches.INDEX_KEY])[keep]
    if probs is None:
      probs = np.zeros((n, np.asarray(host["probs"]).shape[-1]), np.float32)
    probs[idx] = np.asarray(host["probs"])[keep]
    labels[idx] = np.asarray(host["label"])[keep]
  return labels, probs
