"""Grad-CAM throughput: maps/s per model, one batched jitted call vs one image at a time.

    python benchmarks/gradcam.py                                  # all models, 256x256, batch 16
    python benchmarks/gradcam.py --models resnet50 --size 64 --batch 2 --repeats 1   # smoke run

For each model (random init, float32, default JAX backend: CPU unless JAX_PLATFORMS says otherwise)
at the paper's fine-tuning size (256x256) and its default Grad-CAM layer:
- batched: `rij.gradcam.gradcam` on a batch of --batch images (one jitted forward + backward);
- one at a time: the same function called --batch times on one image (jitted for batch 1), the way
  a per-image loop (e.g. the Keras Grad-CAM example) works.
Timings exclude compilation and one warm-up call (reported separately); maps/s = images / wall time
after block_until_ready. Prints a Markdown table; nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# Runnable from a checkout without `pip install -e .`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from radimagenet_jax import _cpu_tuning  # noqa: E402


def _time(fn, repeats):
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return best


def bench(name, size, batch, repeats):
  import radimagenet_jax as rij
  from radimagenet_jax.explain import gradcam as gc
  model, variables = rij.models.create(name, num_classes=2)
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  t = time.perf_counter()
  jax.block_until_ready(gc.gradcam(model, variables, x))
  compile_batched = time.perf_counter() - t
  t = time.perf_counter()
  jax.block_until_ready(gc.gradcam(model, variables, x[:1]))
  compile_single = time.perf_counter() - t
  batched = _time(lambda: gc.gradcam(model, variables, x), repeats)
  single = _time(lambda: [gc.gradcam(model, variables, x[i:i + 1]) for i in range(batch)], repeats)
  return {"model": name, "layer": gc.default_layer(model), "compile_batched_s": compile_batched,
          "compile_single_s": compile_single, "batched_maps_per_s": batch / batched,
          "single_maps_per_s": batch / single}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="*", default=None, help="default: all registered models")
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--repeats", type=int, default=3, help="best of N timed runs")
  args = p.parse_args(argv)
  _cpu_tuning.tune_cpu()   # as the commands do, before JAX starts
  import radimagenet_jax as rij
  names = args.models or rij.models.names()
  print(f"Grad-CAM, {args.size}x{args.size}, batch {args.batch}, backend "
        f"{jax.default_backend()} ({jax.devices()[0].device_kind}), best of {args.repeats}\n")
  print("| model | layer | batched maps/s | one-at-a-time maps/s | speed-up | compile (batched / 1) s |")
  print("| --- | --- | ---: | ---: | ---: | ---: |")
  for name in names:
    size = max(args.size, rij.models.get_spec(name).min_size)
    r = bench(name, size, args.batch, args.repeats)
    print(f"| {r['model']} | {r['layer']} | {r['batched_maps_per_s']:.2f} | "
          f"{r['single_maps_per_s']:.2f} | "
          f"{r['batched_maps_per_s'] / r['single_maps_per_s']:.2f}x | "
          f"{r['compile_batched_s']:.1f} / {r['compile_single_s']:.1f} |", flush=True)


if __name__ == "__main__":
  main()
