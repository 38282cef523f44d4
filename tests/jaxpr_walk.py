"""Every equation of a jaxpr, those of the sub-jaxprs in its equations' params included (cond
branches, custom_vjp bodies, pjit calls). Duck-typed over the jaxpr classes, which JAX has
reorganised between releases (``jax.core.jaxprs_in_params`` is gone in jax 0.12)."""
from __future__ import annotations


def _sub_jaxprs(value):
  if isinstance(value, (tuple, list)):
    for item in value:
      yield from _sub_jaxprs(item)
  elif hasattr(value, "eqns"):                                     # an open Jaxpr
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):   # a ClosedJaxpr
    yield value.jaxpr


def equations(jaxpr):
  """Yields the equations of ``jaxpr`` (open or closed) and, depth first, of its sub-jaxprs."""
  jaxpr = jaxpr.jaxpr if not hasattr(jaxpr, "eqns") else jaxpr
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in _sub_jaxprs(value):
        yield from equations(sub)
