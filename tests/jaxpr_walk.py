"""Every equation of a jaxpr, those of the sub-jaxprs in its equations' params included (cond
branches, custom_vjp bodies, pjit calls), found by `models.flops.sub_jaxprs`."""
from __future__ import annotations

from radimagenet_jax.models.flops import sub_jaxprs


def equations(jaxpr):
  """Yields the equations of ``jaxpr`` (open or closed) and, depth first, of its sub-jaxprs."""
  jaxpr = jaxpr.jaxpr if not hasattr(jaxpr, "eqns") else jaxpr
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in sub_jaxprs(eqn.params.values()):
      yield from equations(sub)
