"""KerasBatchNorm in training mode against a float64 closed form: output, running statistics and
the gradients of x, gamma and beta; and the cheaper backward of the stop-gradient variance."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radimagenet_jax.models.batchnorm import KerasBatchNorm
from tests.jaxpr_walk import equations

EPS, MOMENTUM = 1e-3, 0.99


def closed_form(x, gamma, beta, w, ra_mean, ra_var):
  """float64 BatchNorm (batch statistics, Keras arithmetic) of x [N, H, W, C] and the gradients of
  sum(w * y) with respect to x, gamma and beta, from the textbook backward."""
  x = x.astype(np.float64)
  axes, n = (0, 1, 2), x.size // x.shape[-1]
  mean, var = x.mean(axes), x.var(axes)
  r = 1.0 / np.sqrt(var + EPS)
  xhat = (x - mean) * r
  y = gamma * xhat + beta
  dy = w.astype(np.float64)
  dbeta, dgamma = dy.sum(axes), (dy * xhat).sum(axes)
  dx = gamma * r / n * (n * dy - dbeta - xhat * dgamma)
  new_mean = ra_mean * MOMENTUM + mean * (1 - MOMENTUM)
  new_var = ra_var * MOMENTUM + var * (1 - MOMENTUM)
  return y, dx, dgamma, dbeta, new_mean, new_var


@pytest.mark.parametrize("use_scale", [True, False])
def test_training_mode_matches_float64_closed_form(use_scale):
  rng = np.random.default_rng(0)
  c = 6
  x = (3.0 + 2.0 * rng.normal(size=(4, 5, 3, c))).astype(np.float32)   # mean far from 0
  w = rng.normal(size=x.shape).astype(np.float32)
  gamma = rng.uniform(0.5, 1.5, c).astype(np.float32) if use_scale else np.ones(c, np.float32)
  beta = rng.normal(size=c).astype(np.float32)
  ra_mean, ra_var = rng.normal(size=c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
  module = KerasBatchNorm(use_running_average=False, use_scale=use_scale)
  params = {"bias": beta, **({"scale": gamma} if use_scale else {})}
  stats = {"mean": ra_mean, "var": ra_var}

  def loss(x, params):
    y, updated = module.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
    return jnp.sum(y * w), (y, updated["batch_stats"])

  (_, (y, new_stats)), (dx, dparams) = jax.jit(
      jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, params)
  ref_y, ref_dx, ref_dgamma, ref_dbeta, ref_mean, ref_var = closed_form(
      x, gamma, beta, w, ra_mean, ra_var)
  np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new_stats["mean"], ref_mean, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(new_stats["var"], ref_var, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dparams["bias"], ref_dbeta, rtol=1e-5, atol=1e-5)
  if use_scale:
    np.testing.assert_allclose(dparams["scale"], ref_dgamma, rtol=1e-4, atol=1e-4)


def full_size_reductions(fn, x):
  """reduce_sum equations of fn's gradient jaxpr whose operand has x's size."""
  return sum(1 for eqn in equations(jax.make_jaxpr(jax.grad(fn))(x))
             if eqn.primitive.name == "reduce_sum" and eqn.invars[0].aval.size == x.size)


def test_backward_skips_the_variance_mean_path():
  """Centring the variance on stop_gradient(mean) removes the zero-valued variance -> mean term:
  one full-size reduction fewer than autodiff of the same formula without it, and the same
  gradient as autodiff of jnp.var."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 4, 3)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)
  module = KerasBatchNorm(use_running_average=False)
  variables = module.init(jax.random.key(0), x)

  def ours(x):
    return jnp.sum(module.apply(variables, x, mutable=["batch_stats"])[0] * w)

  def plain(var_fn):
    def fn(x):
      mean = jnp.mean(x, (0, 1, 2))
      inv = jax.lax.rsqrt(var_fn(x, mean) + EPS)
      return jnp.sum((x * inv + (0.0 - mean * inv)) * w)
    return fn

  centred = plain(lambda x, mean: jnp.mean(jnp.square(x - mean), (0, 1, 2)))
  with_jnp_var = plain(lambda x, mean: jnp.var(x, (0, 1, 2)))
  assert full_size_reductions(ours, x) == full_size_reductions(centred, x) - 1
  np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(with_jnp_var)(x), rtol=1e-5, atol=1e-6)
