"""Throughput of the four Flax ports: compile time, inference and train-step images/s, parameters.

    python benchmarks/models.py                               # all models, batch 32, 10 steps
    python benchmarks/models.py --models resnet50 --batch 8 --steps 3 --size 64   # smoke run

Each model runs at its ImageNet size (224; 299 for InceptionV3 / IRV2) unless --size is given, in
float32 on the default JAX backend (CPU here; set JAX_PLATFORMS to choose). The train step is the
pretraining one in miniature: softmax cross-entropy, SGD with momentum, BatchNorm statistics
updated (mutable batch_stats), dropout on. Prints a Markdown table. Timings exclude compilation
and one warm-up call; images/s = batch * steps / wall time, after block_until_ready.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# Runnable from a checkout without `pip install -e .`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import optax

import radimagenet_jax as rij
from radimagenet_jax import _cpu_tuning


def _timed(fn, *args, steps):
  out = fn(*args)  # warm-up (compiled already)
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return time.perf_counter() - start


def bench(name: str, batch: int, steps: int, size: int | None, num_classes: int = 1000) -> dict:
  spec = rij.models.get_spec(name)
  size = size or spec.default_size
  model, variables = rij.models.create(name, num_classes=num_classes)
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]))
  n_stats = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["batch_stats"]))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(0, 1, (batch, size, size, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, num_classes, (batch,)), jnp.int32)

  infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
  tx = optax.sgd(0.01, momentum=0.9)
  opt_state = tx.init(variables["params"])

  def train_step(params, batch_stats, opt_state, x, y, key):
    def loss_fn(p):
      logits, new = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"], rngs={"dropout": key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new["batch_stats"], opt_state, loss

  train = jax.jit(train_step)
  key = jax.random.key(0)
  t0 = time.perf_counter()
  infer_c = infer.lower(variables, x).compile()
  t1 = time.perf_counter()
  train_args = (variables["params"], variables["batch_stats"], opt_state, x, y, key)
  train_c = train.lower(*train_args).compile()
  t2 = time.perf_counter()
  t_inf = _timed(infer_c, variables, x, steps=steps)
  t_train = _timed(train_c, *train_args, steps=steps)
  return {"model": name, "size": size, "batch": batch, "params": n_params, "bn_stats": n_stats,
          "compile_infer_s": t1 - t0, "compile_train_s": t2 - t1,
          "infer_ips": batch * steps / t_inf, "train_ips": batch * steps / t_train}


HEADER = ("| model | input | batch | parameters (+BN stats) | compile inference / train (s) "
          "| inference img/s | train step img/s |\n|---|---|---|---|---|---|---|")


def markdown_row(r) -> str:
  return (f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {r['params']:,} "
          f"(+{r['bn_stats']:,}) | {r['compile_infer_s']:.1f} / {r['compile_train_s']:.1f} "
          f"| {r['infer_ips']:.1f} | {r['train_ips']:.1f} |")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default=",".join(rij.models.names()),
                 help="comma-separated model names (default: all registered)")
  p.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
  p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default 10)")
  p.add_argument("--size", type=int, default=None,
                 help="input side; default each model's ImageNet size (224 or 299)")
  args = p.parse_args(argv)
  _cpu_tuning.tune_cpu()   # as the commands do, before JAX starts
  dev = jax.devices()[0]
  print(f"# {dev.platform} ({dev.device_kind}), {jax.device_count()} device(s) visible, one "
        f"used; float32; jax {jax.__version__}\n")
  print(HEADER, flush=True)
  rows = []
  for name in args.models.split(","):
    rows.append(bench(name.strip(), args.batch, args.steps, args.size))
    print(markdown_row(rows[-1]), flush=True)  # row by row: a run cut short still reports
  return rows


if __name__ == "__main__":
  main()
