"""A model's forward-pass FLOPs per image: twice the multiply-adds of its convolutions and matrix
products, counted in the traced program (nothing is compiled or computed).

Used to weigh runs against each other (`finetune.parallel.shard` deals a sweep's chunks to hosts
by this cost) and to report arithmetic rates; BatchNorm, activations and pooling are left out
(a few percent of the total for the four CNNs).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from radimagenet_jax.models import fast_ops, registry


def sub_jaxprs(params):
  """The jaxprs (open) inside an equation's params: pjit bodies, custom_vjp functions, cond
  branches, ... Duck-typed over JAX's jaxpr classes, which have moved between releases."""
  for value in params:
    if isinstance(value, (tuple, list)):
      yield from sub_jaxprs(value)
    elif hasattr(value, "eqns"):                                     # an open Jaxpr
      yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):   # a ClosedJaxpr
      yield value.jaxpr


def _conv_macs(eqn) -> int:
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec      # (out feature, in feature, spatial...)
  kernel = eqn.invars[1].aval.shape
  per_output = kernel[rhs_spec[1]] * math.prod(kernel[d] for d in rhs_spec[2:])
  return math.prod(eqn.outvars[0].aval.shape) * per_output


def _dot_macs(eqn) -> int:
  (contracting, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)


def count_flops(jaxpr) -> int:
  """2 x the multiply-adds of the convolutions and matrix products of ``jaxpr`` (open or closed)
  and of its sub-jaxprs; a ``cond`` counts its costliest branch."""
  jaxpr = jaxpr if hasattr(jaxpr, "eqns") else jaxpr.jaxpr
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += 2 * _conv_macs(eqn)
    elif name == "dot_general":
      total += 2 * _dot_macs(eqn)
    elif name == "cond":
      total += max(count_flops(b) for b in eqn.params["branches"])
    else:
      total += sum(count_flops(sub) for sub in sub_jaxprs(eqn.params.values()))
  return total


@functools.lru_cache(maxsize=None)
def forward_flops(name: str, image_size: int, num_classes: int = 2) -> int:
  """FLOPs of one ``image_size`` x ``image_size`` image through model ``name`` in inference (the
  paper's head with ``num_classes`` outputs included). ResNet50 at 224 px: 7.7e9 (3.86e9
  multiply-adds, the ResNet paper's "3.8 x 10^9 FLOPs").

  The Keras model's count, the same on every backend and host: traced without ``fast_ops``, whose
  XLA:CPU forms compute some padded rows and columns that they then drop."""
  spec = registry.get_spec(name)
  model = spec.module_cls(num_classes=num_classes)
  variables = registry.variable_shapes(model, image_size)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  with fast_ops.forced(False):
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return count_flops(jaxpr)
