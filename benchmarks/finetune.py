r"""Images/s of the fine-tuning step per freeze mode (all, top10, head) against inference.

    python benchmarks/finetune.py                                   # ResNet50, 256x256, batch 16
    python benchmarks/finetune.py --modes head,top10 --batch 8 --steps 3 --image_size 128

Runs the jitted step that `radimagenet-jax finetune` runs (radimagenet_jax.train.steps with the
freeze mask of radimagenet_jax.finetune.freeze and Adam with Keras's defaults) over a ('data',) mesh
on synthetic data already on the device, and the inference forward pass of the same model, so the
figures exclude the input pipeline. `head` computes no backbone gradient, so it should cost about
one inference pass; `top10` adds the backward pass of the last block; `all` is a full train step.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from radimagenet_jax import _cpu_tuning, distributed, models  # noqa: E402
from radimagenet_jax.finetune import freeze  # noqa: E402
from radimagenet_jax.train import config as config_lib, optim, state as state_lib, steps  # noqa: E402


def _time(fn, n):
  out = fn()
  jax.block_until_ready(out)            # compile + first call
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="resnet50")
  p.add_argument("--batch", type=int, default=16, help="GLOBAL batch size")
  p.add_argument("--image_size", type=int, default=256)
  p.add_argument("--steps", type=int, default=5, help="timed steps after the compile step")
  p.add_argument("--modes", default="all,top10,head")
  args = p.parse_args(argv)
  _cpu_tuning.tune_cpu()   # as the commands do, before JAX starts

  spec = models.get_spec(args.model)
  mesh = distributed.make_mesh()
  rng = np.random.default_rng(0)
  local = distributed.process_batch_size(args.batch, mesh)
  batch = distributed.to_global({
      "image": rng.integers(0, 255, (local, args.image_size, args.image_size, 3)).astype(np.uint8),
      "label": rng.integers(0, 2, local).astype(np.int32)}, mesh)
  config = config_lib.base_config()
  config.optimizer, config.learning_rate, config.weight_decay = "adam", 1e-3, 0.0
  variables = models.init_variables(spec.module_cls(num_classes=2), jax.random.key(0),
                                    args.image_size)
  dev = jax.devices()[0]
  print(f"{spec.name} fine-tuning step, {args.image_size}x{args.image_size}, float32, global batch "
        f"{args.batch}, {jax.device_count()} x {dev.platform}, {os.cpu_count()} host CPUs visible")

  model = spec.module_cls(num_classes=2)
  predict = steps.compile_predict_step(model, mesh, "radimagenet")
  reps = distributed.put_replicated(variables, mesh)
  base = _time(lambda: predict(reps, batch), args.steps)
  print(f"  inference           {args.batch / base:8.1f} images/s  (1.00x the inference time)")
  for mode in args.modes.split(","):
    mask = freeze.trainable_mask(spec.name, variables["params"], mode)
    tx = optim.freeze(optim.create_optimizer(config, lambda s: 1e-3), mask)
    state = state_lib.create(model, tx, 0, args.image_size, distributed.replicated(mesh),
                             variables=variables)
    # Frozen BatchNorm layers as the engine passes them (train/one_run.py).
    bn_frozen = steps.bn_frozen_flags(variables["batch_stats"],
                                      freeze.frozen_bn_layers(spec.name, mask))
    fn = steps.compile_train_step(model, tx, mesh, "radimagenet", mask, bn_frozen)
    holder = {"state": state, "acc": jax.device_put(steps.init_train_metrics(),
                                                    distributed.replicated(mesh))}

    def one():
      holder["state"], holder["acc"] = fn(holder["state"], holder["acc"], batch)
      return holder["acc"]
    t = _time(one, args.steps)
    print(f"  train, freeze={mode:<6} {args.batch / t:8.1f} images/s  ({t / base:.2f}x the "
          f"inference time; {freeze.count_trainable(variables['params'], mask):,} trainable)")


if __name__ == "__main__":
  main()
