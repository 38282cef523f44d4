"""Where a step's time goes, network segment by segment, against the same segments in tf.keras.

    python benchmarks/segments.py --model inception_v3 --mode infer \
        --peer keras --peer_python venv-tf/bin/python
    python benchmarks/segments.py --model inception_resnet_v2 --mode train --reps 4 \
        --peer keras --peer_python venv-tf/bin/python

Each prefix of the network (up to the end of the stem, then of each stage: ``STAGES``, any of the
four models) is compiled as its own program; the prefixes are timed alternately in one process
(median of ``--reps``), and a segment's time is the difference of two consecutive prefixes'
medians. ``--mode infer``: the forward pass in inference mode; ``--mode train``: forward + backward
of ``mean(features ** 2)`` with BatchNorm in training mode (no optimizer). The peer (tf.keras, when ``--peer keras``; never a dependency) runs the
same prefixes (``keras.Model(input, layer.output)`` of keras.applications, ``tf.function``) in its own
process after ours. float32, random weights and inputs. Differences of medians are noisy: a segment
is worth a look only when it differs in repeated runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

# Runnable from a checkout without `pip install -e .`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# model -> the layers that end its stages (our stable names); the last is the notop output.
STAGES = {
    "resnet50": ["pool1_pool", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                 "conv5_block3_out"],
    "densenet121": ["pool1", "pool2_pool", "pool3_pool", "pool4_pool", "relu"],
    "inception_v3": ["stem_pool_5a", "mixed2", "mixed7", "mixed10"],
    "inception_resnet_v2": ["mixed_5b", "mixed_6a", "mixed_7a", "conv_7b_ac"],
}
# Our stable names that Keras auto-numbers: the Keras model's n-th max pool.
_KERAS_MAX_POOL = {"stem_pool_5a": 1}


def _prefix_model(base, stop: str):
  """``base`` (a registered model class) cut after the layer named ``stop``: the backbone runs
  through the same block functions and stops at that layer's ``tap`` (nothing after it is traced)."""
  import flax.linen as nn
  from radimagenet_jax.models.layers import FlaxLayers

  class _Stop(Exception):
    def __init__(self, x):
      super().__init__(stop)
      self.x = x

  class StopLayers(FlaxLayers):
    def _tap(self, name, x):
      x = super()._tap(name, x)
      if name == stop:
        raise _Stop(x)
      return x

  class Prefix(base):
    @nn.compact
    def __call__(self, x, train: bool = False):
      try:
        return self.backbone(StopLayers(self, train, self.bn_epsilon, self.bn_scale), x)
      except _Stop as cut:
        return cut.x

  Prefix.__name__ = f"{base.__name__}_to_{stop}"
  return Prefix(num_classes=0)


def _our_steps(args):
  """{stage: step()} for our prefixes, compiled and run once each."""
  from radimagenet_jax import _cpu_tuning
  _cpu_tuning.tune_cpu()   # as the commands do, before JAX starts
  import jax
  import jax.numpy as jnp
  from radimagenet_jax.models import registry
  base = registry.get_spec(args.model).module_cls
  s = args.image_size
  x = jax.random.normal(jax.random.key(0), (args.batch, s, s, 3))
  steps = {}
  for stage in STAGES[args.model]:
    model = _prefix_model(base, stage)
    v = jax.jit(lambda x, model=model: model.init(jax.random.key(0), x))(x[:1])
    params, stats = v["params"], v["batch_stats"]
    if args.mode == "infer":
      fn = jax.jit(lambda p, b, x, model=model: model.apply(
          {"params": p, "batch_stats": b}, x, train=False))
    else:
      def loss(p, b, x, model=model):
        y, _ = model.apply({"params": p, "batch_stats": b}, x, train=True,
                           mutable=["batch_stats"])
        return jnp.mean(jnp.square(y))
      fn = jax.jit(jax.value_and_grad(loss))
    step = (lambda fn=fn, a=(params, stats, x): jax.block_until_ready(fn(*a)))
    step()
    steps[stage] = step
  return steps


def _keras_steps(args):
  import numpy as np
  from benchmarks.peers import KERAS_APPS, tf_keras
  tf, keras = tf_keras()
  s = args.image_size
  base = getattr(keras.applications, KERAS_APPS[args.model])(
      include_top=False, weights=None, input_shape=(s, s, 3))
  pools = [l.name for l in base.layers if isinstance(l, keras.layers.MaxPooling2D)]
  x = tf.constant(np.random.default_rng(0).normal(size=(args.batch, s, s, 3)).astype(np.float32))
  steps = {}
  for stage in STAGES[args.model]:
    layer = pools[_KERAS_MAX_POOL[stage]] if stage in _KERAS_MAX_POOL else stage
    model = keras.Model(base.input, base.get_layer(layer).output)
    if args.mode == "infer":
      fn = tf.function(lambda x, model=model: model(x, training=False))
    else:
      @tf.function
      def fn(x, model=model):
        with tf.GradientTape() as tape:
          loss = tf.reduce_mean(tf.square(model(x, training=True)))
        return loss, tape.gradient(loss, model.trainable_variables)
    step = (lambda fn=fn: tf.nest.map_structure(lambda t: t.numpy(), fn(x)))
    step()
    steps[stage] = step
  return steps


def _time(steps, reps):
  """Median seconds per prefix, the prefixes alternated."""
  times = {k: [] for k in steps}
  for _ in range(reps):
    for k, step in steps.items():
      t0 = time.perf_counter()
      step()
      times[k].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}


def _print(who, medians):
  prev = 0.0
  for stage, t in medians.items():
    print(f"{who} {stage} prefix_ms {t * 1e3:.0f} segment_ms {(t - prev) * 1e3:.0f}", flush=True)
    prev = t


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="inception_v3", choices=sorted(STAGES))
  p.add_argument("--mode", default="infer", choices=("infer", "train"))
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--image_size", type=int, default=None,
                 help="default: the model's ImageNet size (224, 299 for the Inception pair)")
  p.add_argument("--reps", type=int, default=6, help="alternations of the prefixes")
  p.add_argument("--peer", default="none", choices=("none", "keras"))
  p.add_argument("--peer_python", default=sys.executable)
  p.add_argument("--as_peer", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.as_peer:   # the parent passes every setting; no radimagenet_jax in the peer's venv
    _print("keras", _time(_keras_steps(args), args.reps))
    return None
  if args.image_size is None:
    from radimagenet_jax.models import registry
    args.image_size = registry.get_spec(args.model).default_size
  print(f"# {args.model} {args.mode}, {args.image_size}x{args.image_size}, batch {args.batch}, "
        f"float32, median of {args.reps}", flush=True)
  ours = _time(_our_steps(args), args.reps)
  _print("ours", ours)
  if args.peer == "none":
    return ours
  cmd = [args.peer_python, os.path.abspath(__file__), "--as_peer", "--model", args.model,
         "--mode", args.mode, "--batch", str(args.batch), "--image_size", str(args.image_size),
         "--reps", str(args.reps)]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
  peer = {l.split()[1]: float(l.split()[3]) / 1e3 for l in out.splitlines()
          if l.startswith("keras ")}
  print(out, end="")
  prev_o = prev_p = 0.0
  for stage in ours:
    so, sp = ours[stage] - prev_o, peer[stage] - prev_p
    ratio = f"{sp / so:.2f}x" if so > 0 else "-"
    print(f"segment {stage}: ours {so * 1e3:.0f} ms, keras {sp * 1e3:.0f} ms, keras/ours {ratio}")
    prev_o, prev_p = ours[stage], peer[stage]
  return ours, peer


if __name__ == "__main__":
  main()
