"""How fast the paper's fine-tuning sweep runs with K runs per compiled step (`parallel_runs=K`).

  python benchmarks/sweep.py --cpu                  # runs/hour for K = 1, 4, 16 on this CPU (tiny)
  python benchmarks/sweep.py --project --quick      # accelerator: projected wall time of the BUSI
                                                    # sweep (240 runs at 256x256), ~4 min budget
  python benchmarks/sweep.py --project --ks 1,2,4,8 --dtypes bfloat16,float32 --batch 256

Both time the batched train step of `radimagenet_jax.train.vmapped` (synthetic uint8 images made on
the device, so the input pipeline is not measured) after its compile, and the batched eval step.
A run in --cpu mode is the `tiny` config's (4 train steps, 2 evaluations of 2 batches); in
--project mode it is BUSI's: ~780 images, 5 folds (test 156, validation ~62, train ~562), 30 epochs,
validation every epoch, 24 scenarios x 2 inits x 5 folds = 240 runs, grouped by (model, fold) into
20 groups of 12 runs cut into chunks of K. Projected time = per model, 5 folds x ceil(12/K) chunks x
(steps x train step + epochs x eval batches x eval step); plus one compile per model and K, the
host's work (checkpoints, best/ writes, test predictions) not included. Every figure is printed as
soon as it is measured; each part stops when --budget_s is spent.

Imports only jax, flax, optax, numpy and radimagenet_jax.models / radimagenet_jax.train.{steps,
vmapped, optim, state}, so it runs on a host without grain, tfds, ml_collections or orbax.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from radimagenet_jax import _cpu_tuning, models  # noqa: E402
from radimagenet_jax.finetune.scenarios import PAPER_MODELS  # noqa: E402
from radimagenet_jax.train import state as state_lib, vmapped  # noqa: E402

BUSI = dict(images=780, folds=5, val_fraction=0.1, epochs=30, runs_per_group=12, groups_per_model=5)


def _config(lr=1e-3):
  return types.SimpleNamespace(optimizer="adam", momentum=0.9, adam_epsilon=1e-7, weight_decay=0.0,
                               learning_rate=lr, schedule="constant")


def _mesh():
  return jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))


class Bench:
  """One model at one size, batch and dtype: the batched train / eval steps for K runs."""

  def __init__(self, name, size, batch, dtype, k):
    spec = models.get_spec(name)
    self.k, self.batch, self.size = k, batch, size
    self.model = spec.module_cls(num_classes=2, dtype=dtype)
    mesh = _mesh()
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    cfg = _config()
    tx = vmapped.optimizer(cfg, cfg.learning_rate, 1000, 0)
    one = state_lib.create(self.model, tx, 0, size, rep)  # random init drawn on the host
    self.states = jax.device_put(vmapped.stack([one] * k), rep)
    del one
    # A realistic mixture: the paper's three freeze modes as masks (head only / all / top half).
    leaves = jax.tree_util.tree_flatten_with_path(self.states.params)[0]
    masks = []
    for i in range(k):
      mode = i % 3
      masks.append(jax.tree_util.tree_unflatten(
          jax.tree.structure(self.states.params),
          [mode == 1 or "predictions" in jax.tree_util.keystr(p) or (mode == 2 and j > len(leaves) // 2)
           for j, (p, _) in enumerate(leaves)]))
    self.data = jax.device_put(vmapped.runs_data(masks, [1e-3] * k,
                                                 jax.tree.map(lambda x: x[0], self.states.batch_stats),
                                                 [()] * k), rep)
    modes = ("radimagenet",) * k
    self.train_fn = vmapped.compile_train_step(self.model, cfg, (1000, 0), modes, mesh)
    self.eval_fn = vmapped.compile_eval_step(self.model, modes, mesh)
    key = jax.random.key(0)
    self.batch_data = {"image": jax.random.randint(key, (batch, size, size, 3), 0, 256, jnp.int32
                                                   ).astype(jnp.uint8),
                       "label": jax.random.randint(key, (batch,), 0, 2, jnp.int32)}
    self.eval_batch = dict(self.batch_data, mask=jnp.ones((batch,), jnp.float32))
    self.acc = jax.device_put(vmapped.init_train_metrics(k), rep)
    self.bad = jax.device_put(np.full(k, vmapped.NO_BAD_STEP, np.int32), rep)

  def train(self, n):
    for _ in range(n):
      self.states, self.acc, self.bad = self.train_fn(self.states, self.acc, self.bad,
                                                      self.batch_data, self.data)
    jax.block_until_ready(self.acc)

  def evaluate(self, n):
    variables = {"params": self.states.params, "batch_stats": self.states.batch_stats}
    for _ in range(n):
      acc = self.eval_fn(variables, vmapped.init_eval_metrics(self.k, 2), self.eval_batch)
    jax.block_until_ready(acc)

  def time(self, fn, warm=1, reps=3):
    t0 = time.perf_counter()
    fn(warm)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn(reps)
    return compile_s, (time.perf_counter() - t0) / reps


def cpu(args):
  print(f"CPU: {args.model} {args.size}x{args.size}, batch {args.batch} per run, float32; a run = "
        "4 train steps + 2 evaluations of 2 batches (the `tiny` config)", flush=True)
  for k in args.ks:
    t_start = time.perf_counter()
    b = Bench(args.model, args.size, args.batch, jnp.float32, k)
    compile_train, t_train = b.time(b.train)
    compile_eval, t_eval = b.time(b.evaluate)
    run_s = (4 * t_train + 4 * t_eval) / k
    with_compile = run_s + (compile_train + compile_eval) / k   # one compile per chunk of K runs
    print(f"K={k:>2}: train step {t_train * 1e3:.0f} ms, eval step {t_eval * 1e3:.0f} ms "
          f"(compiles {compile_train:.0f} s + {compile_eval:.0f} s) -> {3600 / run_s:.0f} runs/hour "
          f"compiled, {3600 / with_compile:.0f} runs/hour with one compile per {k} run(s) "
          f"({k * args.batch / t_train:.1f} train images/s over the {k} runs)", flush=True)
    del b
    if time.perf_counter() - t_start > args.budget_s:
      print(f"stopping: K={k} took over --budget_s={args.budget_s}", flush=True)
      break


def busi_counts(batch):
  test = BUSI["images"] // BUSI["folds"]
  pool = BUSI["images"] - test
  val = round(pool * BUSI["val_fraction"])
  train = pool - val
  steps_per_epoch = max(train // batch, 1)
  return dict(train=train, val=val, test=test, steps=steps_per_epoch * BUSI["epochs"],
              eval_batches=math.ceil(val / batch))


def project(args):
  c = busi_counts(args.batch)
  print(f"device: {jax.devices()[0].device_kind}; BUSI per run: {c['train']} train images, batch "
        f"{args.batch} -> {c['steps']} steps; {BUSI['epochs']} validations of {c['eval_batches']} "
        f"batch(es); 240 runs = 4 models x {BUSI['groups_per_model']} folds x 12 runs", flush=True)
  t_all = time.perf_counter()
  best = {}
  for name in args.models:
    for dtype_name in args.dtypes:
      dtype = jnp.dtype(dtype_name)
      for k in (args.ks if name == args.models[0] or not args.quick else args.ks[:1]):
        if time.perf_counter() - t_all > args.budget_s:
          print(f"budget --budget_s={args.budget_s} spent; skipping {name} {dtype_name} K={k}")
          continue
        try:
          b = Bench(name, args.size, args.batch, dtype, k)
          compile_train, t_train = b.time(b.train)
          if args.quick:   # no eval compile: a forward pass is ~1/3 of forward + backward
            compile_eval, t_eval = 0.0, t_train / 3
          else:
            compile_eval, t_eval = b.time(b.evaluate)
          del b
        except Exception as e:  # pylint: disable=broad-except   (out of memory: larger K stop)
          print(f"{name} {dtype_name} K={k}: failed ({str(e).splitlines()[0][:150]})", flush=True)
          break
        chunks = math.ceil(BUSI["runs_per_group"] / k)
        per_chunk = c["steps"] * t_train + BUSI["epochs"] * c["eval_batches"] * t_eval
        model_s = BUSI["groups_per_model"] * chunks * per_chunk + compile_train + compile_eval
        print(f"{name} {dtype_name} K={k}: train step {t_train * 1e3:.1f} ms "
              f"({k * args.batch / t_train:.0f} img/s over the runs), eval step {t_eval * 1e3:.1f} "
              f"ms{' (estimated)' if args.quick else ''}, compile {compile_train:.0f} s -> "
              f"{model_s / 60:.1f} min for its 60 runs", flush=True)
        key = (name, dtype_name)
        if key not in best or model_s < best[key][1]:
          best[key] = (k, model_s)
  for dtype_name in args.dtypes:
    parts = {n: best[(n, dtype_name)] for n in args.models if (n, dtype_name) in best}
    if parts:
      total = sum(s for _, s in parts.values())
      missing = [n for n in args.models if n not in parts]
      print(f"projected 240-run BUSI sweep, {dtype_name}: {total / 60:.1f} min "
            f"({', '.join(f'{n} K={k}: {s / 60:.1f}' for n, (k, s) in parts.items())})"
            + (f"; not measured: {', '.join(missing)}" if missing else ""), flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  mode = p.add_mutually_exclusive_group(required=True)
  mode.add_argument("--cpu", action="store_true", help="runs/hour on this CPU at tiny sizes")
  mode.add_argument("--project", action="store_true", help="projected BUSI sweep time")
  p.add_argument("--quick", action="store_true",
                 help="--project in ~4 min: bfloat16; K from --ks for the first model, K=1 "
                      "for the others; eval estimated")
  p.add_argument("--model", default="resnet50", help="--cpu model")
  p.add_argument("--models", default=",".join(PAPER_MODELS))
  p.add_argument("--size", type=int, default=None, help="default: 32 (--cpu), 256 (--project)")
  p.add_argument("--batch", type=int, default=None, help="per run; default 8 (--cpu), 256")
  p.add_argument("--ks", default=None, help="default 1,4,16 (--cpu), 1,2,4,12 (--project), "
                                            "1,4 (--quick)")
  p.add_argument("--dtypes", default=None, help="--project: bfloat16,float32 (--quick: bfloat16)")
  p.add_argument("--budget_s", type=float, default=None, help="time box (default 900 / 200 quick)")
  args = p.parse_args()
  _cpu_tuning.tune_cpu()   # as the commands do, before JAX starts
  args.size = args.size or (32 if args.cpu else 256)
  args.batch = args.batch or (8 if args.cpu else 256)
  args.ks = [int(k) for k in (args.ks or ("1,4,16" if args.cpu else "1,4" if args.quick
                                          else "1,2,4,12")).split(",")]
  args.models = [m.strip() for m in args.models.split(",") if m.strip()]
  args.dtypes = [d.strip() for d in (args.dtypes or ("bfloat16" if args.quick or args.cpu
                                                     else "bfloat16,float32")).split(",")]
  args.budget_s = args.budget_s or (200 if args.quick else 900)
  for k in args.ks:
    if k < 1:
      raise SystemExit(f"--ks: {k} is not a run count >= 1")
  (cpu if args.cpu else project)(args)


if __name__ == "__main__":
  main()
