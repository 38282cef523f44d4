"""The input gradient of a strided convolution as stride-1 convolutions, one per stride phase.

Autodiff writes the input gradient of a stride-s convolution as a convolution of the output
gradient dilated by s (zeros between its entries, ``lhs_dilation``). XLA:CPU has no fast kernel
for that: it runs a generic loop over the dilated input, s*s times the work of the useful
products (Inception-ResNet-v2's three 3x3/2 reductions took 530 ms of its 299 px train step).
Input position t gets the products of output o and kernel tap i with ``s*o + i - lo = t``, so the
positions of one phase ``(t + lo) mod s = r`` see only the taps ``r, r + s, ...``: a stride-1
convolution of the output gradient with that sub-kernel. ``fast_ops`` uses this for every strided
NHWC convolution; the values equal autodiff's up to float32 summation order.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _phase(size, out, kernel, stride, lo, r):
  """For phase r of one spatial dimension: the sub-kernel's taps, the pad (low, high) of the output
  gradient, the number of input positions in the phase and where they start ((r - lo) mod s)."""
  taps = len(range(r, kernel, stride))
  u_lo = -((r - lo) // stride)                    # first u with t = s*u + r - lo >= 0
  u_hi = (size - 1 + lo - r) // stride            # last u with t < size
  count = max(u_hi - u_lo + 1, 0)
  low = taps - 1 - u_lo
  high = count + taps - 1 - out - low
  return taps, (low, high), count, (r - lo) % stride


def strided_input_grad(g, k, input_shape, strides, pads, precision=None):
  """d(conv(x, k))/dx applied to g, for NHWC x, HWIO k, no dilation, one feature group.

  ``strides`` = (sh, sw); ``pads`` = ((lo, hi), (lo, hi)); ``precision``: the forward convolution's.
  """
  n, height, width, cin = input_shape
  (sh, sw), (kh, kw) = strides, k.shape[:2]
  dn = ("NHWC", "HWIO", "NHWC")
  vh, vw = -(-height // sh), -(-width // sw)      # positions per phase, padded to the most
  blocks = {}
  for rh in range(sh):
    th, (plh, phh), ch, qh = _phase(height, g.shape[1], kh, sh, pads[0][0], rh)
    for rw in range(sw):
      tw, (plw, phw), cw, qw = _phase(width, g.shape[2], kw, sw, pads[1][0], rw)
      if th == 0 or tw == 0 or ch == 0 or cw == 0:
        z = jnp.zeros((n, ch, cw, cin), g.dtype)
      else:
        # the phase's taps, reversed (a correlation computes a convolution), in/out swapped
        sub = jnp.transpose(k[rh::sh, rw::sw][::-1, ::-1], (0, 1, 3, 2))
        gp = jax.lax.pad(g, jnp.zeros((), g.dtype),
                         ((0, 0, 0), (plh, phh, 0), (plw, phw, 0), (0, 0, 0)))
        z = jax.lax.conv_general_dilated(gp, sub, (1, 1), "VALID", dimension_numbers=dn,
                                         precision=precision)
      blocks[qh, qw] = jnp.pad(z, ((0, 0), (0, vh - ch), (0, vw - cw), (0, 0)))
  rows = [jnp.stack([blocks[qh, qw] for qw in range(sw)], axis=3) for qh in range(sh)]
  dx = jnp.stack(rows, axis=2).reshape(n, vh * sh, vw * sw, cin)   # t = s * v + q
  return dx[:, :height, :width, :]
