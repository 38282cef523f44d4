"""Keras MaxPooling2D / AveragePooling2D (NHWC) formulated for XLA:CPU speed, the same values.

XLA:CPU runs ``reduce_window`` (``nn.max_pool`` / ``nn.avg_pool``) as a loop over the window per
output element, and the max pool's gradient as a select-and-scatter. Written as strided slices of
the input combined elementwise, both become one vectorised loop fusion forward and a few
pads / selects backward. With ``fast_ops.enabled()`` false (a GPU or TPU backend, or
``RADIMAGENET_JAX_FAST_OPS=off``) the plain Flax functions are used. `layers.FlaxLayers` calls
these; tests/test_pooling.py checks them against Flax's.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from radimagenet_jax.models.fast_ops import enabled, stored, window_output_size

_MAX_TAPS = 16   # larger windows (e.g. 7x7) keep reduce_window: one slice per window entry


def _taps(x, size, strides, out):
  """The window's entries as strided slices of ``x``: one array of shape ``out`` per entry."""
  (kh, kw), (sh, sw), (oh, ow) = size, strides, out
  n, _, _, c = x.shape
  return [jax.lax.slice(x, (0, i, j, 0), (n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, c),
                        (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]


def _in_bounds(length, k, s, out, before):
  """How many entries of each output position's window lie inside the unpadded input."""
  starts = np.arange(out) * s - before
  return np.minimum(starts + k, length) - np.maximum(starts, 0)


def avg_pool(x, size, strides, padding):
  """``AveragePooling2D(size, strides, padding)``: Keras leaves a 'same' pool's padding out of the
  mean (``nn.avg_pool(..., count_include_pad=False)``).

  The window sum as the sum of its entries' strided slices of the zero-padded input, times a
  constant map of 1 / (entries inside the input); for stride 1 (InceptionV3's and
  Inception-ResNet-v2's 3x3 'same' pools) the gradient is the same kind of window sum over the
  output gradient padded the other way round (``_stride1_avg``). The 3x3/1 pools on 16 images of
  8-35 px with 192-2048 channels: forward 2.5-4x, backward 2-3x faster than ``reduce_window``.
  The result differs from ``nn.avg_pool`` only by float rounding (another summation order, a
  multiplication by the inverse count).
  """
  (kh, kw), (sh, sw) = size, strides
  padding = padding.upper()
  if not enabled() or kh * kw > _MAX_TAPS or padding not in ("SAME", "VALID"):
    return nn.avg_pool(x, (kh, kw), (sh, sw), padding, count_include_pad=False)
  # TF / XLA 'SAME' (the odd padding row after) or 'VALID' (none), as ((lo, hi), (lo, hi)) ints
  pads = tuple(tuple(int(v) for v in p)
               for p in jax.lax.padtype_to_pads(x.shape[1:3], size, strides, padding))
  if (sh, sw) == (1, 1):
    return _stride1_avg(x, (kh, kw), pads)
  return _window_mean(x, size, strides, pads, _inverse_count(x.shape[1:3], size, strides, pads))


def _inverse_count(hw, size, strides, pads):
  """1 / (window entries inside the input), per output position, as a (1, oh, ow, 1) array."""
  out = window_output_size(hw, size, strides, pads)
  rows, cols = (_in_bounds(n, k, s, o, p[0]) for n, k, s, o, p in zip(hw, size, strides, out, pads))
  return (1.0 / np.outer(rows, cols))[None, :, :, None]


def _window_mean(x, size, strides, pads, inverse_count):
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  total = functools.reduce(jnp.add, _taps(xp, size, strides, inverse_count.shape[1:3]))
  return total * jnp.asarray(inverse_count, x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _stride1_avg(x, size, pads):
  return _window_mean(x, size, (1, 1), pads, _inverse_count(x.shape[1:3], size, (1, 1), pads))


def _stride1_avg_fwd(x, size, pads):
  return _stride1_avg(x, size, pads), None


def _stride1_avg_bwd(size, pads, _, g):
  """Input (i) gets g[o] / count[o] from every output o whose window holds it: o = i + p - t for
  t < k, i.e. a window sum of g / count zero-padded by k - 1 - p on each side (the pads swapped).
  The padded gradient is stored, so the slices read it without bounds checks."""
  hw = tuple(o - p[0] - p[1] + k - 1 for o, p, k in zip(g.shape[1:3], pads, size))
  inverse_count = _inverse_count(hw, size, (1, 1), pads)
  swapped = tuple((k - 1 - p[0], k - 1 - p[1]) for k, p in zip(size, pads))
  gp = stored(jnp.pad(g * jnp.asarray(inverse_count, g.dtype), ((0, 0), *swapped, (0, 0))))
  return (functools.reduce(jnp.add, _taps(gp, size, (1, 1), hw)),)


_stride1_avg.defvjp(_stride1_avg_fwd, _stride1_avg_bwd)


def max_pool(x, size, strides, padding):
  """``MaxPooling2D(size, strides, padding)``; 'valid' pools (every one in the four models: the
  stems pad explicitly with ZeroPadding2D) go to ``max_pool_valid``."""
  if padding.upper() == "VALID":
    return max_pool_valid(x, size, strides)
  return nn.max_pool(x, size, strides, padding.upper())


def max_pool_valid(x, size, strides):
  """'valid' max pooling (NHWC) as two separable passes of strided slices and maxima.

  The maximum over rows of the window, then over its columns: the same values as
  ``nn.max_pool``, but the gradient is a few elementwise selects instead of XLA's
  reduce-window/argmax scatter (1.7x faster forward + backward on CPU for ResNet50's stem pool).
  Where several window entries tie for the maximum the gradient is split between them
  (``nn.max_pool`` and Keras give it all to one); its sum is the same. The input is stored
  (``fast_ops.stored``): otherwise XLA:CPU recomputes the BatchNorm and ReLU producing it inside the
  backward pass's select fusion (InceptionV3 1.06x, ResNet50 1.03x at 128 px).
  """
  (kh, kw), (sh, sw) = size, strides
  if not enabled():
    return nn.max_pool(x, (kh, kw), (sh, sw), "VALID")
  x = stored(x)   # the input, stored: not recomputed by each of the selects below
  _, h, w, _ = x.shape
  oh, ow = window_output_size((h, w), size, strides, ((0, 0), (0, 0)))
  rows = functools.reduce(jnp.maximum, _taps(x, (kh, 1), (sh, 1), (oh, w)))
  return functools.reduce(jnp.maximum, _taps(rows, (1, kw), (1, sw), (oh, ow)))
