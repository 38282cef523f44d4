r"""Images/s of the sharded train step (forward, backward, optimizer update) on this machine.

    python benchmarks/train_throughput.py                          # ResNet50, 224x224, fp32
    python benchmarks/train_throughput.py --batch 8 --steps 3      # quick check
    python benchmarks/train_throughput.py --dtype bfloat16 --batch 256 --model densenet121

Runs the same jitted step as training (radimagenet_jax.train.steps) over a ('data',) mesh of all
devices on synthetic data already on device, so the figure excludes the input pipeline. Prints the
batch size, device count, compile time and the steady-state images/s (median over timed steps).
"""
import argparse
import os
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from radimagenet_jax import distributed  # noqa: E402
from radimagenet_jax.models import registry  # noqa: E402
from radimagenet_jax.train import optim, state as state_lib, steps  # noqa: E402

DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="resnet50")
  p.add_argument("--batch", type=int, default=32, help="GLOBAL batch size")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--steps", type=int, default=10, help="timed steps after the compile step")
  p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
  p.add_argument("--num_classes", type=int, default=165)
  p.add_argument("--optimizer", default="sgd", choices=optim.OPTIMIZERS)
  args = p.parse_args(argv)

  import jax.numpy as jnp
  spec = registry.get_spec(args.model)
  model = spec.module_cls(num_classes=args.num_classes, dtype=getattr(jnp, args.dtype))
  config = types.SimpleNamespace(optimizer=args.optimizer, learning_rate=0.1, momentum=0.9,
                                 weight_decay=1e-4, schedule="cosine")
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 1000, 10))
  mesh = distributed.make_mesh()
  state = state_lib.create(model, tx, 0, args.image_size, distributed.replicated(mesh))
  metrics = jax.device_put(steps.init_train_metrics(), distributed.replicated(mesh))
  step_fn = steps.compile_train_step(model, tx, mesh)
  rng = np.random.default_rng(0)
  local = distributed.process_batch_size(args.batch, mesh)
  batch = distributed.to_global({
      "image": rng.normal(size=(local, args.image_size, args.image_size, 3)).astype(np.float32),
      "label": rng.integers(0, args.num_classes, local).astype(np.int32)}, mesh)

  t0 = time.perf_counter()
  state, metrics = step_fn(state, metrics, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = step_fn(state, metrics, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  dev = jax.devices()[0]
  print(f"{args.model} train step, {args.image_size}x{args.image_size}, {args.dtype}, "
        f"global batch {args.batch}, {jax.device_count()} x {dev.platform} "
        f"({getattr(dev, 'device_kind', '')}), {os.cpu_count()} host CPUs visible")
  print(f"compile + first step: {compile_s:.1f} s; step: {step_s * 1e3:.1f} ms (median of "
        f"{args.steps}); throughput: {args.batch / step_s:.1f} images/s")
  return args.batch / step_s


if __name__ == "__main__":
  main()
