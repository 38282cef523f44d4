"""Random initial variables of the four models, drawn on the host: no XLA compile.

``model.init`` under ``jax.jit`` compiles one random-number program per parameter (Flax derives
a key per parameter path, then threefry and the truncated normal's inverse erf): hundreds of
independent kernels that XLA's fusion passes handle slowly. Measured on one H200 (jax 0.11.2,
2026-11-30): 24 s for ResNet50, 41 s for DenseNet121 and 75 s for Inception-ResNet-v2 (XLA's
priority fusion alone 37 s), longer than compiling their train steps; 18-28 s on 2 CPU cores.

The layers declare their initialisers (``layers.KERNEL_INIT`` for every convolution and Dense
kernel, zeros for biases and BatchNorm betas and means, ones for BatchNorm gammas and variances),
so the variables can be drawn with numpy from the shapes alone (``jax.eval_shape``): each kernel
from the same law as ``KERNEL_INIT`` (Flax's ``lecun_normal``: a normal truncated to two standard
deviations, scaled to variance 1 / fan_in; ``kernel_std`` is checked against Flax's own
initialiser in tests), from a ``numpy.random.Generator`` seeded with the JAX key's data and the
parameter's path, so a key gives the same variables on every backend and process, and a
parameter's values do not depend on which other parameters exist (a model with and without its
classifier head share their backbone's). Any other variable name falls back to the jitted
``model.init``.
"""
from __future__ import annotations

import math
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from radimagenet_jax.models.batchnorm import BATCH_STATS

TRUNCATED_NORMAL_STD = 0.87962566103423978   # std of a unit normal truncated to [-2, 2]
# The kernel laws: KERNEL_INIT's (Flax's default, this project's) and Keras's layer default, the
# original's for training from scratch (`config.init_law`).
LAWS = ("lecun_normal", "glorot_uniform")
_CONSTANT = {("params", "bias"): 0.0, ("params", "scale"): 1.0,
             (BATCH_STATS, "mean"): 0.0, (BATCH_STATS, "var"): 1.0}


def kernel_std(shape) -> float:
  """The scale ``KERNEL_INIT`` (lecun_normal) multiplies a [-2, 2]-truncated unit normal by:
  sqrt(1 / fan_in) / TRUNCATED_NORMAL_STD, fan_in = prod(shape[:-1]) (HWIO or (in, out))."""
  return math.sqrt(1.0 / math.prod(shape[:-1])) / TRUNCATED_NORMAL_STD


def glorot_limit(shape) -> float:
  """Keras's (and Flax's) glorot_uniform bound sqrt(6 / (fan_in + fan_out)): fan_in =
  prod(shape[:-1]), fan_out = prod(shape[:-2]) * shape[-1] (HWIO or (in, out))."""
  receptive = math.prod(shape[:-2])
  return math.sqrt(6.0 / (receptive * shape[-2] + receptive * shape[-1]))


def _kernel(rng: np.random.Generator, shape, law: str) -> np.ndarray:
  if law == "glorot_uniform":
    limit = glorot_limit(shape)
    return rng.uniform(-limit, limit, math.prod(shape)).astype(np.float32).reshape(shape)
  return (_truncated_normal(rng, math.prod(shape)).reshape(shape)
          * np.float32(kernel_std(shape)))


def _truncated_normal(rng: np.random.Generator, size: int) -> np.ndarray:
  """Standard normal samples redrawn until they lie in [-2, 2] (4.6% are redrawn)."""
  out = rng.standard_normal(size, dtype=np.float32)
  bad = np.flatnonzero(np.abs(out) > 2.0)
  while bad.size:
    out[bad] = rng.standard_normal(bad.size, dtype=np.float32)
    bad = bad[np.abs(out[bad]) > 2.0]
  return out


def host_generator(key, path: str = "") -> np.random.Generator:
  """A numpy Generator determined by a JAX PRNG key (typed or raw uint32 key data) and ``path``."""
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  return np.random.default_rng(np.random.SeedSequence(
      np.asarray(data).ravel().tolist(), spawn_key=(zlib.crc32(path.encode()),)))


def draw(abstract: dict[str, Any], key, law: str = "lecun_normal") -> dict[str, Any] | None:
  """numpy variables shaped like ``abstract`` ({'params', 'batch_stats'} of ShapeDtypeStructs),
  kernels from ``law`` (one of LAWS), or None when a leaf is not one of the declared kinds
  (kernel, bias, scale, mean, var)."""
  if law not in LAWS:
    raise ValueError(f"init law {law!r}: expected one of {', '.join(LAWS)}")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  kinds = []
  for path, leaf in leaves:
    kind = (path[0].key, path[-1].key)
    if kind not in _CONSTANT and kind != ("params", "kernel"):
      return None
    kinds.append(kind)
  out = []
  for (path, leaf), kind in zip(leaves, kinds):
    if kind in _CONSTANT:
      out.append(np.full(leaf.shape, _CONSTANT[kind], leaf.dtype))
      continue
    rng = host_generator(key, jax.tree_util.keystr(path))
    out.append(_kernel(rng, leaf.shape, law).astype(leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)
