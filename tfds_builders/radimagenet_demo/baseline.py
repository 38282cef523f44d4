"""Measures the two baselines quoted in README.md for radimagenet_demo/lesion (test-split AUC).

    python -m tfds_builders.radimagenet_demo.baseline --data_dir=DIR [--cnn_epochs=30]

- logistic regression (sklearn defaults, C=1) on 32x32 bilinear-downsampled pixels in [0, 1];
- a small CNN (3 x [conv3x3-relu, conv3x3-relu, maxpool2], 16/32/64 filters, global max pool,
  dense) trained from scratch with Adam 1e-3, batch 32, random horizontal flips, on the 128x128
  images average-pooled to 64x64 (a few minutes on a 2-core CPU).
"""
from __future__ import annotations

import argparse

import numpy as np


def load_lesion(data_dir, split: str, size: int):
  """(images float32 (N, size, size, 1) in [0, 1], labels int (N,)) of radimagenet_demo/lesion."""
  import tensorflow_datasets as tfds
  from PIL import Image
  ds = tfds.data_source("radimagenet_demo/lesion", split=split, data_dir=data_dir)
  xs, ys = [], []
  for i in range(len(ds)):
    ex = ds[i]
    img = ex["image"][..., 0]
    if img.shape[0] != size:
      img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    xs.append(img.astype(np.float32)[..., None] / 255.0)
    ys.append(int(ex["label"]))
  return np.stack(xs), np.asarray(ys)


def logreg_auc(data_dir) -> float:
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import roc_auc_score
  xtr, ytr = load_lesion(data_dir, "train", 32)
  xte, yte = load_lesion(data_dir, "test", 32)
  model = LogisticRegression(max_iter=2000).fit(xtr.reshape(len(xtr), -1), ytr)
  return float(roc_auc_score(yte, model.predict_proba(xte.reshape(len(xte), -1))[:, 1]))


def cnn_auc(data_dir, epochs: int = 30, seed: int = 0) -> float:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax
  from sklearn.metrics import roc_auc_score

  xtr, ytr = load_lesion(data_dir, "train", 128)
  xte, yte = load_lesion(data_dir, "test", 128)
  pool = lambda x: x.reshape(len(x), 64, 2, 64, 2, 1).mean((2, 4))
  xtr, xte = pool(xtr), pool(xte)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      for f in (16, 32, 64):
        x = nn.relu(nn.Conv(f, (3, 3))(x))
        x = nn.relu(nn.Conv(f, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
      return nn.Dense(1)(jnp.max(x, axis=(1, 2)))[:, 0]

  net = Net()
  params = net.init(jax.random.PRNGKey(seed), xtr[:2])
  tx = optax.adam(1e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, y):
    loss = lambda p: optax.sigmoid_binary_cross_entropy(net.apply(p, x), y).mean()
    grads = jax.grad(loss)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    perm = rng.permutation(len(xtr))
    for b in range(0, len(perm) - 31, 32):
      idx = perm[b:b + 32]
      x = xtr[idx][:, :, ::-1] if rng.uniform() < 0.5 else xtr[idx]
      params, opt = step(params, opt, x, ytr[idx].astype(np.float32))
  return float(roc_auc_score(yte, np.asarray(jax.jit(net.apply)(params, xte))))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data_dir", required=True, help="TFDS data dir holding radimagenet_demo/lesion")
  p.add_argument("--cnn_epochs", type=int, default=30, help="0 skips the CNN")
  args = p.parse_args(argv)
  print(f"logistic regression on 32x32 pixels: test AUC {logreg_auc(args.data_dir):.2f}")
  if args.cnn_epochs:
    print(f"small CNN, {args.cnn_epochs} epochs: test AUC {cnn_auc(args.data_dir, args.cnn_epochs):.2f}")


if __name__ == "__main__":
  main()
