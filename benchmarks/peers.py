r"""The same step in another framework, for benchmarks/train_throughput.py --peer (never imported by
the package; tensorflow / torch are not project dependencies).

Run as a worker in the peer's Python (its own venv), e.g.

    /path/to/venv-tf/bin/python benchmarks/peers.py keras --model resnet50 --mode train

It builds the model with random weights, runs one warm-up step, prints ``READY <setup seconds>``,
then answers each ``STEP`` line on stdin with ``TIME <seconds of one step>`` (``QUIT`` ends it).
The driver alternates our step and the peer's (ABAB), so both run on an otherwise idle CPU and see
the same machine load.

keras: tf.keras (Keras 3 on the TensorFlow backend, or tf.keras 2) keras.applications model,
  include_top=False + GlobalAveragePooling2D + Dropout(0.5) + Dense(num_classes), like ours.
  train = ``model.train_on_batch`` (compiled tf.function; XLA per ``--jit``), infer = the model
  called in a tf.function with training=False, gradcam = d class score / d last feature map under
  tf.GradientTape in a tf.function.
torch: on the CPU, PyTorch eager ResNet50 v1 (torchvision's layout, stride on the 1x1 like Keras),
  written with torch.nn below (torchvision is optional), channels_last memory format; resnet50
  only. With ``--device cuda``: torchvision's ResNet50, DenseNet121 and InceptionV3 and timm's
  Inception-ResNet-v2 (random weights), channels_last, ``--dtype bfloat16`` = autocast, eager or
  ``--compile`` (torch.compile, default mode), SGD with momentum.

``--standalone --steps N`` skips the STEP protocol: it times N steps after the warm-up itself and
prints ``RESULT <setup s> <median step s> <images/s> <info>`` (benchmarks/accelerator.py uses this
on a GPU, where one framework at a time owns the device).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

KERAS_APPS = {"resnet50": "ResNet50", "densenet121": "DenseNet121", "inception_v3": "InceptionV3",
              "inception_resnet_v2": "InceptionResNetV2"}


def tf_keras():
  """(tensorflow, keras on the TensorFlow backend): Keras 3 when installed, else tf.keras."""
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  try:
    import keras
    if keras.backend.backend() != "tensorflow":
      raise ImportError
  except ImportError:
    keras = tf.keras
  return tf, keras


def keras_step(args):
  import numpy as np
  tf, keras = tf_keras()
  s = args.image_size
  base = getattr(keras.applications, KERAS_APPS[args.model])(
      include_top=False, weights=None, input_shape=(s, s, 3), pooling=None)
  feats = base.output
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(feats)
  x = keras.layers.Dropout(0.5, name="dropout")(x)
  logits = keras.layers.Dense(args.num_classes, name="predictions")(x)
  model = keras.Model(base.input, logits)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(args.batch, s, s, 3)).astype(np.float32)
  labels = rng.integers(0, args.num_classes, args.batch).astype(np.int32)
  jit = {"auto": "auto", "on": True, "off": False}[args.jit]
  info = f"keras {keras.__version__} (tensorflow {tf.__version__})"
  if args.mode == "train":
    opt = (keras.optimizers.Adam(1e-3, beta_1=0.9) if args.optimizer == "adam"
           else keras.optimizers.SGD(0.1, momentum=0.9))
    model.compile(optimizer=opt, jit_compile=jit,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    info += f", jit_compile={getattr(model, 'jit_compile', jit)}"
    step = lambda: model.train_on_batch(images, labels)
  elif args.mode == "infer":
    fn = tf.function(lambda x: model(x, training=False), jit_compile=(jit is True))
    xt = tf.constant(images)
    step = lambda: fn(xt).numpy()
  else:
    grad_model = keras.Model(base.input, [feats, logits])

    @tf.function(jit_compile=(jit is True))
    def cam(x):
      with tf.GradientTape() as tape:
        a, out = grad_model(x, training=False)
        tape.watch(a)
        score = tf.reduce_sum(tf.reduce_max(out, axis=-1))
      g = tape.gradient(score, a)
      cam = tf.nn.relu(tf.einsum("bhwc,bc->bhw", a, tf.reduce_mean(g, axis=(1, 2))))
      return tf.image.resize(cam[..., None], (s, s), method="bilinear")
    xt = tf.constant(images)
    step = lambda: cam(xt).numpy()
  return step, info


def torch_resnet50(num_classes):
  from torch import nn

  class Bottleneck(nn.Module):
    def __init__(self, cin, f, stride, shortcut):
      super().__init__()
      self.conv1, self.bn1 = nn.Conv2d(cin, f, 1, stride), nn.BatchNorm2d(f, eps=1.001e-5)
      self.conv2, self.bn2 = nn.Conv2d(f, f, 3, 1, 1), nn.BatchNorm2d(f, eps=1.001e-5)
      self.conv3, self.bn3 = nn.Conv2d(f, 4 * f, 1), nn.BatchNorm2d(4 * f, eps=1.001e-5)
      self.short = (nn.Sequential(nn.Conv2d(cin, 4 * f, 1, stride),
                                  nn.BatchNorm2d(4 * f, eps=1.001e-5)) if shortcut else None)
      self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return self.relu(y + (x if self.short is None else self.short(x)))

  layers = [nn.ZeroPad2d(3), nn.Conv2d(3, 64, 7, 2), nn.BatchNorm2d(64, eps=1.001e-5),
            nn.ReLU(inplace=True), nn.ZeroPad2d(1), nn.MaxPool2d(3, 2)]
  cin = 64
  for f, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
    for i in range(blocks):
      layers.append(Bottleneck(cin, f, stride if i == 0 else 1, i == 0))
      cin = 4 * f
  backbone = nn.Sequential(*layers)
  head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5),
                       nn.Linear(2048, num_classes))
  return backbone, head


def torch_zoo_model(name, num_classes):
  """torchvision / timm's model of the same architecture (random weights), for the GPU peer."""
  if name == "inception_resnet_v2":
    import timm
    return timm.create_model("inception_resnet_v2", pretrained=False, num_classes=num_classes)
  import torchvision
  if name == "inception_v3":
    return torchvision.models.inception_v3(num_classes=num_classes, aux_logits=False,
                                           init_weights=False)
  return getattr(torchvision.models, name)(num_classes=num_classes)


def torch_step(args):
  import torch
  s, cuda = args.image_size, args.device == "cuda"
  if cuda:
    if args.mode == "gradcam":
      raise SystemExit("peers.py torch --device cuda: train and infer only")
    model = torch_zoo_model(args.model, args.num_classes)
    backbone = head = None
  elif args.model != "resnet50":
    raise SystemExit(f"peers.py torch: only resnet50 is written in torch.nn here, not {args.model}")
  else:
    backbone, head = torch_resnet50(args.num_classes)
    model = torch.nn.Sequential(backbone, head)
  model = model.to(args.device, memory_format=torch.channels_last)
  g = torch.Generator().manual_seed(0)
  images = torch.randn(args.batch, 3, s, s, generator=g).to(args.device).contiguous(
      memory_format=torch.channels_last)
  labels = torch.randint(0, args.num_classes, (args.batch,), generator=g).to(args.device)
  info = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, channels_last, "
          f"{args.dtype}{' autocast' if args.dtype != 'float32' else ''}, "
          f"{'torch.compile' if args.compile else 'eager'}")
  if args.compile:
    model = torch.compile(model)
  autocast = torch.autocast(args.device, dtype=getattr(torch, args.dtype),
                            enabled=args.dtype != "float32")
  if args.mode == "train":
    model.train()
    opt = (torch.optim.Adam(model.parameters(), 1e-3) if args.optimizer == "adam"
           else torch.optim.SGD(model.parameters(), 0.1, momentum=0.9))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
      opt.zero_grad(set_to_none=True)
      with autocast:
        loss = loss_fn(model(images), labels)
      loss.backward()
      opt.step()
      return loss.item()
  elif args.mode == "infer":
    model.eval()

    def step():
      with torch.inference_mode(), autocast:
        out = model(images)
      return out.float().sum().item() if cuda else out
  else:
    model.eval().requires_grad_(False)

    def step():
      with torch.no_grad():
        a = backbone(images)
      a.requires_grad_(True)
      score = head(a).max(dim=-1).values.sum()
      g, = torch.autograd.grad(score, a)
      cam = torch.relu(torch.einsum("bchw,bc->bhw", a.detach(), g.mean(dim=(2, 3))))
      return torch.nn.functional.interpolate(cam[:, None], size=(s, s), mode="bilinear")
  return step, info


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("peer", choices=("keras", "torch"))
  p.add_argument("--model", default="resnet50", choices=sorted(KERAS_APPS))
  p.add_argument("--mode", default="train", choices=("train", "infer", "gradcam"))
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--num_classes", type=int, default=165)
  p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
  p.add_argument("--jit", default="auto", choices=("auto", "on", "off"),
                 help="keras: jit_compile (XLA) of the train step; infer/gradcam: XLA if 'on'")
  p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="torch only")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="torch only")
  p.add_argument("--compile", action="store_true", help="torch only: torch.compile the model")
  p.add_argument("--standalone", action="store_true", help="time --steps steps, print RESULT")
  p.add_argument("--steps", type=int, default=20)
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  step, info = (keras_step if args.peer == "keras" else torch_step)(args)
  step()
  if args.standalone:
    setup = time.perf_counter() - t0
    step()   # torch.compile may recompile once more on the second call
    times = []
    for _ in range(args.steps):
      t = time.perf_counter()
      step()
      times.append(time.perf_counter() - t)
    med = sorted(times)[len(times) // 2]
    print(f"RESULT {setup:.1f} {med:.6f} {args.batch / med:.1f} {info}", flush=True)
    return
  print(f"READY {time.perf_counter() - t0:.3f} {info}", flush=True)
  for line in sys.stdin:
    if line.strip() != "STEP":
      break
    t = time.perf_counter()
    step()
    print(f"TIME {time.perf_counter() - t:.6f}", flush=True)


if __name__ == "__main__":
  main()
