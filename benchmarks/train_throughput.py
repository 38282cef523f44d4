r"""Images/s of the sharded train step (forward, backward, optimizer update) on this machine,
optionally against the same step in tf.keras or PyTorch timed in the same run.

    python benchmarks/train_throughput.py                          # ResNet50, 224x224, fp32
    python benchmarks/train_throughput.py --batch 8 --steps 3      # quick check
    python benchmarks/train_throughput.py --dtype bfloat16 --batch 256 --model densenet121
    python benchmarks/train_throughput.py --batch 16 --optimizer adam --peer keras \
        --peer_python /path/to/venv-tf/bin/python                  # ratio vs tf.keras
    python benchmarks/train_throughput.py --mode infer --peer torch --peer_python ...

Runs the same jitted step as training (radimagenet_jax.train.steps) over a ('data',) mesh of all
devices on synthetic data already on device, so the figure excludes the input pipeline. Prints the
batch size, device count, compile time and the steady-state images/s (median over timed steps).
``--mode infer`` times the forward pass (train=False), ``--mode gradcam`` one batched
``radimagenet_jax.gradcam.gradcam`` call (forward + backward to the default layer).

``--peer keras|torch`` runs benchmarks/peers.py in ``--peer_python`` (a venv with tensorflow or
torch; neither is a dependency of this project) as a worker and alternates one step of ours and one
of the peer's (ABAB...), so both see the same machine load; it prints both medians and the ratio
ours/peer in images/s (> 1: we are faster).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from radimagenet_jax import _cpu_tuning, distributed  # noqa: E402
from radimagenet_jax.models import flops, registry  # noqa: E402
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
  p.add_argument("--mode", default="train", choices=("train", "infer", "gradcam"))
  p.add_argument("--peer", default="none", choices=("none", "keras", "torch"),
                 help="time the same step in tf.keras / PyTorch too (benchmarks/peers.py)")
  p.add_argument("--peer_python", default=sys.executable,
                 help="python of the environment that has the peer framework installed")
  p.add_argument("--peer_jit", default="auto", choices=("auto", "on", "off"),
                 help="keras peer: jit_compile (XLA) setting")
  p.add_argument("--cache", default="",
                 help="persistent compilation cache directory (default: off, a cold compile)")
  args = p.parse_args(argv)
  tuned = _cpu_tuning.tune_cpu()   # as the commands do, before JAX starts
  print(f"rij.tune_cpu(): {', '.join(tuned) or 'nothing applied'}")
  if args.cache:
    distributed.enable_compilation_cache(args.cache)
  peer = _start_peer(args) if args.peer != "none" else None

  import jax.numpy as jnp
  spec = registry.get_spec(args.model)
  model = spec.module_cls(num_classes=args.num_classes, dtype=getattr(jnp, args.dtype))
  if args.mode != "train":
    return _forward_modes(args, model, peer)
  config = types.SimpleNamespace(optimizer=args.optimizer, learning_rate=0.1, momentum=0.9,
                                 adam_epsilon=1e-7, weight_decay=1e-4, schedule="cosine")
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 1000, 10))
  mesh = distributed.make_mesh()
  t0 = time.perf_counter()
  state = state_lib.create(model, tx, 0, args.image_size, distributed.replicated(mesh))
  jax.block_until_ready(state)
  args.init_s = time.perf_counter() - t0
  metrics = jax.device_put(steps.init_train_metrics(), distributed.replicated(mesh))
  step_fn = steps.compile_train_step(model, tx, mesh)
  rng = np.random.default_rng(0)
  local = distributed.process_batch_size(args.batch, mesh)
  batch = distributed.to_global({
      "image": rng.normal(size=(local, args.image_size, args.image_size, 3)).astype(np.float32),
      "label": rng.integers(0, args.num_classes, local).astype(np.int32)}, mesh)

  carry = [state, metrics]

  def step():
    carry[:] = step_fn(carry[0], carry[1], batch)
    jax.block_until_ready(carry[1])

  return _run(args, step, peer, "train step")


def _forward_modes(args, model, peer):
  """--mode infer / gradcam: the jitted forward pass, or one batched Grad-CAM call."""
  from radimagenet_jax import gradcam as gc
  x = jax.random.normal(jax.random.key(0), (args.batch, args.image_size, args.image_size, 3))
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(x[:1])
  variables = {k: variables[k] for k in ("params", "batch_stats")}
  if args.mode == "infer":
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return _run(args, lambda: jax.block_until_ready(fn(variables, x)), peer, "inference")
  return _run(args, lambda: jax.block_until_ready(gc.gradcam(model, variables, x)), peer,
              f"Grad-CAM ({gc.default_layer(model)})")


def _start_peer(args):
  cmd = [args.peer_python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers.py"),
         args.peer, "--model", args.model, "--mode", args.mode, "--batch", str(args.batch),
         "--image_size", str(args.image_size), "--num_classes", str(args.num_classes),
         "--optimizer", "adam" if args.optimizer == "adam" else "sgd", "--jit", args.peer_jit]
  if args.dtype != "float32":
    raise SystemExit("--peer compares float32 steps only")
  return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)


def _peer_line(peer, prefix):
  for line in peer.stdout:
    if line.startswith(prefix):
      return line.split(maxsplit=1)[1].strip()
  raise SystemExit(f"the peer worker exited (code {peer.wait()}) before printing {prefix}")


def _run(args, step, peer, what):
  """Compile + first step, then ``args.steps`` timed steps, alternating with the peer's."""
  t0 = time.perf_counter()
  step()
  compile_s = time.perf_counter() - t0
  peer_info = None
  if peer is not None:
    peer_info = _peer_line(peer, "READY")   # the peer built and ran its first step meanwhile
    step()                                   # one more warm-up each, now on a quiet CPU
    peer.stdin.write("STEP\n")
    _peer_line(peer, "TIME")
  times, peer_times = [], []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
    if peer is not None:
      peer.stdin.write("STEP\n")
      peer_times.append(float(_peer_line(peer, "TIME")))
  if peer is not None:
    peer.stdin.write("QUIT\n")
    peer.stdin.close()
    peer.wait()
  step_s = statistics.median(times)
  dev = jax.devices()[0]
  print(f"{args.model} {what}, {args.image_size}x{args.image_size}, {args.dtype}, "
        f"global batch {args.batch}, {jax.device_count()} x {dev.platform} "
        f"({getattr(dev, 'device_kind', '')}), {os.cpu_count()} host CPUs visible, "
        f"load average {os.getloadavg()[0]:.2f}")
  init_s = getattr(args, "init_s", None)
  print(f"ours (jax {jax.__version__}): "
        + (f"state init (compile + run): {init_s:.1f} s; " if init_s is not None else "")
        + f"compile + first step: {compile_s:.1f} s; step: "
        f"{step_s * 1e3:.1f} ms (median of {args.steps}); throughput: "
        f"{args.batch / step_s:.2f} images/s")
  if args.mode in ("train", "infer"):  # the model's arithmetic: the same for every stack
    factor = 3 if args.mode == "train" else 1   # a train step: forward + twice that backward
    per_image = factor * flops.forward_flops(args.model, args.image_size, args.num_classes)
    print(f"arithmetic: {per_image / 1e9:.1f} GFLOP per image ({factor}x the forward pass, "
          f"models.flops): {args.batch * per_image / step_s / 1e12:.3f} TFLOP/s")
  print(f"RESULT {init_s or 0:.1f} {compile_s:.1f} {step_s:.6f} {args.batch / step_s:.1f}",
        flush=True)
  if peer is None:
    return args.batch / step_s
  peer_s = statistics.median(peer_times)
  print(f"peer {args.peer} ({peer_info.split(maxsplit=1)[1]}): step: {peer_s * 1e3:.1f} ms "
        f"(median of {args.steps}); throughput: {args.batch / peer_s:.2f} images/s")
  print(f"ratio ours/{args.peer}: {peer_s / step_s:.2f}x  (steps ours "
        f"{[round(t, 3) for t in times]}, {args.peer} {[round(t, 3) for t in peer_times]})")
  return args.batch / step_s, args.batch / peer_s


if __name__ == "__main__":
  main()
