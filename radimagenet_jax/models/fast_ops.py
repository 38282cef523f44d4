"""Convolutions formulated for XLA:CPU speed, numerically the Keras layers' results.

Measured with `benchmarks/train_throughput.py --peer keras` (benchmarks/CPU.md): 1x1
convolutions (36 of ResNet50's 53) as matrix products made the ResNet50 train step 1.42x faster at
128 px; kernel gradients that read operands computed once, 1.15x more; DenseNet's nested
concatenations with a gradient computed once (``concatenate``); convolutions padded onto XLA:CPU's
fast paths (``_padded_conv``: InceptionV3 1.44x, Inception-ResNet-v2 1.15x at 128 px); residual
sums stored, not recomputed (``stored``: Inception-ResNet-v2 1.15x more); the input gradients of
strided convolutions by stride phase (``conv_input_grad``). Pooling is in ``pooling.py``.
`layers.FlaxLayers` uses these; parameter names, shapes and initialisers are unchanged.

They are XLA:CPU remedies: on a GPU or TPU the plain ``lax.conv_general_dilated`` and
``reduce_window`` go to cuDNN / the TPU emitters, and each ``lax.cond`` (``_computed_once``) would
cost a kernel launch and a predicate read. ``enabled()`` decides, at trace time: the environment
variable ``RADIMAGENET_JAX_FAST_OPS`` = ``auto`` (default: on when JAX's default backend is the
CPU), ``on`` or ``off``. Both paths give the same numbers up to float32 rounding
(tests/test_fast_ops.py).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp

from radimagenet_jax import _xla_cpu_flags
from radimagenet_jax.models.conv_input_grad import strided_input_grad

FAST_OPS_ENV = _xla_cpu_flags.FAST_OPS_ENV
_CHOICES = ("auto", "on", "off")
_FORCED: contextvars.ContextVar = contextvars.ContextVar("radimagenet_jax_fast_ops", default=None)


@contextlib.contextmanager
def forced(on: bool):
  """Within the block (this thread / context only), trace with the fast ops ``on`` or off,
  whatever the environment says."""
  token = _FORCED.set(bool(on))
  try:
    yield
  finally:
    _FORCED.reset(token)


def enabled() -> bool:
  """Whether the CPU formulations are used (read at trace time; see the module docstring)."""
  if _FORCED.get() is not None:
    return _FORCED.get()
  value = _xla_cpu_flags.fast_ops_setting()
  if value not in _CHOICES:
    raise ValueError(f"{FAST_OPS_ENV}={value!r}: expected one of {', '.join(_CHOICES)}")
  return jax.default_backend() == "cpu" if value == "auto" else value == "on"


def _computed_once(g):
  """``g``, as a value XLA:CPU computes once and stores, not an expression it fuses into (and
  recomputes in) each consumer: XLA cannot see through a ``lax.cond`` whose predicate it cannot
  know (an element equals itself; false only for NaN, where both branches return ``g`` too).
  ``optimization_barrier`` cannot do this: XLA:CPU drops it before fusion."""
  probe = g[tuple(d // 2 for d in g.shape)]   # the centre: never a constant padding border
  return jax.lax.cond(probe == probe, lambda t: t, lambda t: t * 1, g)


def stored(x):
  """``x``, stored by XLA:CPU rather than recomputed inside each consumer.

  For the residual sums of ResNet50 and Inception-ResNet-v2 (``relu(x + scale * branch)``, block
  after block): XLA:CPU's fusion treats the add and ReLU as cheap producers and duplicates them
  into their consumers, so the backward pass of block 20 recomputed the residual stream from
  block 1 (one fusion of IRV2's step summed all twenty ``block17`` branches again).
  """
  if not enabled():
    return x
  return _computed_once(x)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kw):
  """``lax.conv_general_dilated`` for ``nn.Conv`` (``conv_general_dilated=``), faster on XLA:CPU.

  A 1x1 convolution (NHWC, HWIO kernel, no dilation, one group, no padding) is a strided slice of
  the input and one ``dot_general`` over the channels: the same sum up to float32 rounding, but its
  gradients are matrix products too. XLA:CPU computes the kernel gradient of a convolution as
  another convolution over transposed activations (a dilated one for strided 1x1s), 2-5x slower
  for 1x1 kernels. 36 of ResNet50's 53 convolutions are 1x1. Every other convolution is
  ``lax.conv_general_dilated``.

  In both, the kernel gradient reads its two operands (the layer's input and the output's
  gradient) computed once (``_computed_once``). Otherwise XLA:CPU fuses the BatchNorm / ReLU
  (backward) computations that produce them into the transposed copy the kernel-gradient product
  needs, recomputing them in transposed, cache-hostile order next to the plain-order pass the input
  gradient reads: ResNet50's train step is 1.15x faster with the operands computed once (128 and
  224 px, batch 16; benchmarks/CPU.md).
  """
  cfg = dict(window_strides=tuple(window_strides),
             padding=padding if isinstance(padding, str) else tuple(map(tuple, padding)),
             lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
             dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
             precision=precision, **kw)
  nhwc = rhs.ndim == 4 and _plain_nhwc(**cfg)
  one_by_one = (enabled() and nhwc and rhs.shape[:2] == (1, 1)
                and (padding in ("VALID", "SAME")
                     or all(tuple(p) == (0, 0) for p in padding)))
  if not one_by_one:
    if not enabled():
      return _conv_fwd_only(lhs, rhs, tuple(cfg.items()))
    if not nhwc:
      return _conv(lhs, rhs, tuple(cfg.items()))
    return _padded_conv(lhs, rhs, cfg)
  sh, sw = window_strides
  if sh > 1 or sw > 1:
    lhs = lhs[:, ::sh, ::sw, :]
  return _channel_matmul(lhs, rhs[0, 0], precision)


def _plain_nhwc(*, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                feature_group_count, precision, **extra):
  """Whether a convolution's ``cfg`` is NHWC x HWIO -> NHWC without dilation, groups or extra
  options (strides, padding and precision are free)."""
  del window_strides, padding, precision
  return (feature_group_count == 1 and dimension_numbers is not None
          and tuple(getattr(dimension_numbers, "lhs_spec", ())) == (0, 3, 1, 2)
          and tuple(getattr(dimension_numbers, "rhs_spec", ())) == (3, 2, 0, 1)
          and tuple(getattr(dimension_numbers, "out_spec", ())) == (0, 3, 1, 2)
          and all(d == 1 for d in (lhs_dilation or (1, 1)))
          and all(d == 1 for d in (rhs_dilation or (1, 1))) and not extra)


def window_output_size(hw, window, strides, pads):
  """Output (height, width) of a convolution or pooling window over ``hw`` with explicit pads."""
  return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(hw, window, strides, pads))


def _explicit_pads(x, k, cfg):
  """The convolution's padding as ((lo, hi), (lo, hi)) ints ('SAME' / 'VALID' resolved)."""
  pads = cfg["padding"]
  if isinstance(pads, str):
    pads = jax.lax.padtype_to_pads(x.shape[1:3], k.shape[:2], cfg["window_strides"], pads)
  return [tuple(int(v) for v in p) for p in pads]


def _padded_conv(x, k, cfg):
  """``_conv`` with zero rows / columns added on the high side of the input where that puts the
  convolution on XLA:CPU's fast paths, its output sliced back to the requested size (the same
  values: every kept output sees the same window, the added ones are dropped).

  For NHWC / HWIO convolutions without dilation, two cases: a stride-1 convolution without
  padding (a 'valid' 3x3) runs 2.5-5x slower in XLA:CPU than the same convolution with one padded
  row and column; and a spatial size below the kernel's (a 3x3 'same' convolution on a 2x2 map,
  InceptionV3's last blocks at 128 px) makes XLA swap the convolution's operands
  (``ConvOperandSwapper``) into a layout its fast kernels do not take, 20-40 ms for a few MFLOP,
  in the forward pass or in the input gradient of a strided one.
  """
  strides, kernel, size = cfg["window_strides"], k.shape[:2], x.shape[1:3]
  pads = _explicit_pads(x, k, cfg)
  out = window_output_size(size, kernel, strides, pads)
  # XLA swaps the operands of a convolution (forward, or its input gradient, a convolution of the
  # output gradient with the kernel) whose kernel covers more positions than its input.
  # (A dimension the kernel spans exactly, unpadded and unstrided, is a plain contraction: skipped.)
  free = [not (kk == n and p == (0, 0) and s == 1)
          for kk, n, p, s in zip(kernel, size, pads, strides)]
  prod = lambda v: math.prod(a for a, f in zip(v, free) if f)
  if prod(kernel) > prod(size) or math.prod(kernel) > math.prod(out):
    extra = [max(kk - n, (kk - o) * s, 0) for kk, n, o, s in zip(kernel, size, out, strides)]
    # Computed once: XLA would fold a plain pad back into the convolution's padding.
    x = _computed_once(jnp.pad(x, ((0, 0), (0, extra[0]), (0, extra[1]), (0, 0))))
    cfg = dict(cfg, padding=tuple(pads))
  elif (all(s == 1 for s in strides) and all(p == (0, 0) for p in pads)
        and any(kk > 1 for kk in kernel)):
    # A stride-1 convolution without padding: one padded row and column (dropped again).
    cfg = dict(cfg, padding=tuple((0, 1) if kk > 1 else (0, 0) for kk in kernel))
  else:
    return _conv(x, k, tuple(cfg.items()))
  y = _conv(x, k, tuple(cfg.items()))
  return y[:, :out[0], :out[1], :]


def _matmul_fwd_only(x, k, precision=None):
  return jax.lax.dot_general(x, k, (((3,), (0,)), ((), ())), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _channel_matmul(x, k, precision=None):
  """NHWC x (Cin, Cout) -> NHWC, its kernel gradient from operands computed once (below); the
  convolution's ``precision`` applies to all three products."""
  return _matmul_fwd_only(x, k, precision)


def _cm_fwd(x, k, precision):
  return _matmul_fwd_only(x, k, precision), (x, k)


def _cm_bwd(precision, res, g):
  x, k = res
  g = _computed_once(g)
  dx = jax.lax.dot_general(g, k, (((3,), (1,)), ((), ())), precision=precision)
  dk = jax.lax.dot_general(_computed_once(x), g, (((0, 1, 2), (0, 1, 2)), ((), ())),
                           precision=precision)
  return dx, dk


_channel_matmul.defvjp(_cm_fwd, _cm_bwd)


def _conv_fwd_only(x, k, cfg):
  return jax.lax.conv_general_dilated(x, k, **dict(cfg))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, k, cfg):
  """lax.conv_general_dilated(x, k, **dict(cfg)); the kernel gradient reads operands stored once."""
  return _conv_fwd_only(x, k, cfg)


def _conv_fwd(x, k, cfg):
  return _conv_fwd_only(x, k, cfg), (x, k)


def _conv_bwd(cfg, res, g):
  x, k = res
  g = _computed_once(g)
  c = dict(cfg)
  if any(s > 1 for s in c["window_strides"]) and _plain_nhwc(**c):
    # not autodiff's convolution over the zero-dilated output gradient (conv_input_grad)
    dx = strided_input_grad(g, k, x.shape, c["window_strides"], _explicit_pads(x, k, c),
                            c["precision"])
  else:
    dx, = jax.vjp(lambda x: _conv_fwd_only(x, k, cfg), x)[1](g)
  x = _computed_once(x)
  dk, = jax.vjp(lambda k: _conv_fwd_only(x, k, cfg), k)[1](g)
  return dx, dk


_conv.defvjp(_conv_fwd, _conv_bwd)


def concatenate(xs):
  """``jnp.concatenate(xs, axis=-1)`` whose gradient is computed once per concatenation on XLA:CPU.

  DenseNet's blocks nest concatenations (each layer appends 32 channels to its input), so the
  gradient of a block's input is a chain: the gradient of concatenation k is a slice of that of
  k + 1 plus layer k + 1's BatchNorm backward. XLA:CPU's fusion duplicates such cheap elementwise
  producers into each of their two consumers (the next link and layer k's convolution backward),
  so every link recomputed the whole chain above it: DenseNet121's step held 19,887 multiplies
  and compiled in about 50 s. The cotangent passed through ``_computed_once`` is computed once.
  """
  if not enabled() or len(xs) < 2:
    return jnp.concatenate(xs, axis=-1)
  return _concat(tuple(x.shape[-1] for x in xs), *xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _concat(sizes, *xs):
  del sizes
  return jnp.concatenate(xs, axis=-1)


def _concat_fwd(sizes, *xs):
  return _concat(sizes, *xs), None


def _concat_bwd(sizes, _, g):
  g = _computed_once(g)
  starts = [0]
  for n in sizes:
    starts.append(starts[-1] + n)
  return tuple(g[..., a:b] for a, b in zip(starts[:-1], starts[1:]))


_concat.defvjp(_concat_fwd, _concat_bwd)
