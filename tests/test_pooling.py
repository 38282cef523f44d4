"""models/pooling: the XLA:CPU pooling formulations give Keras's values and Flax's gradients."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radimagenet_jax.models import fast_ops, pooling


def _keras_avg_pool(x, size, strides, padding):
  """Brute force, numpy: each output is the mean of the window entries inside the input (Keras
  leaves a 'same' pool's padding out of the mean; TF puts the odd padding row after)."""
  (kh, kw), (sh, sw) = size, strides
  n, h, w, c = x.shape
  if padding == "SAME":
    oh, ow = -(-h // sh), -(-w // sw)
    top = max((oh - 1) * sh + kh - h, 0) // 2
    left = max((ow - 1) * sw + kw - w, 0) // 2
  else:
    oh, ow, top, left = (h - kh) // sh + 1, (w - kw) // sw + 1, 0, 0
  out = np.zeros((n, oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      r0, c0 = i * sh - top, j * sw - left
      window = x[:, max(r0, 0):min(r0 + kh, h), max(c0, 0):min(c0 + kw, w)]
      out[:, i, j] = window.reshape(n, -1, c).mean(1)
  return out


@pytest.mark.parametrize("hw,size,strides,padding", [
    ((7, 7), (3, 3), (1, 1), "SAME"),     # InceptionV3 / Inception-ResNet-v2 branch pools
    ((6, 5), (3, 3), (1, 1), "SAME"),
    ((8, 8), (2, 2), (2, 2), "VALID"),    # DenseNet121 transitions
    ((9, 7), (2, 2), (2, 2), "VALID"),    # odd maps: the last row / column dropped
    ((8, 9), (3, 3), (2, 2), "SAME"),     # uneven 'same' padding (the extra one after)
    ((9, 9), (3, 3), (2, 2), "VALID")])
def test_avg_pool_equals_keras_values_and_flax_gradients(monkeypatch, hw, size, strides, padding):
  x = np.random.default_rng(0).normal(size=(2, *hw, 3)).astype(np.float32)
  oracle = _keras_avg_pool(x.astype(np.float64), size, strides, padding)
  w = jnp.asarray(np.random.default_rng(1).normal(size=oracle.shape), jnp.float32)
  flax_grad = jax.grad(lambda x: jnp.vdot(
      nn.avg_pool(x, size, strides, padding, count_include_pad=False), w))(x)
  for mode in ("on", "off"):
    monkeypatch.setenv(fast_ops.FAST_OPS_ENV, mode)
    y = pooling.avg_pool(jnp.asarray(x), size, strides, padding.lower())
    np.testing.assert_allclose(y, oracle, rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda x: jnp.vdot(pooling.avg_pool(x, size, strides, padding), w))(x)
    np.testing.assert_allclose(g, flax_grad, rtol=1e-6, atol=1e-6)


def test_avg_pool_uses_slices_not_reduce_window_unless_the_window_is_large():
  x = jnp.ones((1, 9, 9, 2), jnp.bfloat16)
  def lowered(size, strides):
    """The StableHLO of the pool's value and gradient."""
    loss = lambda x: jnp.sum(pooling.avg_pool(x, size, strides, "same").astype(jnp.float32))
    with fast_ops.forced(True):
      return jax.jit(jax.value_and_grad(loss)).lower(x).as_text()
  for strides in ((1, 1), (2, 2)):
    assert "reduce_window" not in lowered((3, 3), strides) and "slice" in lowered((3, 3), strides)
  assert "reduce_window" in lowered((7, 7), (1, 1))   # 49 taps: reduce_window stays
  with fast_ops.forced(True):
    assert pooling.avg_pool(x, (3, 3), (1, 1), "SAME").dtype == jnp.bfloat16


def test_max_pool_fast_equals_plain(monkeypatch):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 11, 11, 3)), jnp.float32)
  oracle = nn.max_pool(x, (3, 3), (2, 2), "VALID")
  g_oracle = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (3, 3), (2, 2), "VALID") ** 2))(x)
  for mode in ("on", "off"):
    monkeypatch.setenv(fast_ops.FAST_OPS_ENV, mode)
    np.testing.assert_array_equal(pooling.max_pool(x, (3, 3), (2, 2), "valid"), oracle)
    g = jax.grad(lambda x: jnp.sum(pooling.max_pool(x, (3, 3), (2, 2), "valid") ** 2))(x)
    np.testing.assert_allclose(g, g_oracle, rtol=1e-6)   # no ties in random data


def test_max_pool_backward_does_not_recompute_its_input(monkeypatch):
  """The separable pool's backward selects compare against the stored input, not against the
  producer (here a centring and a ReLU, like BatchNorm's) recomputed in each select fusion."""
  def loss(x):
    h = jax.nn.relu(x - x.mean((0, 1, 2)))
    h = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))   # ResNet50's stem: pad, then pool
    return jnp.sum(jnp.sin(pooling.max_pool_valid(h, (3, 3), (2, 2))))
  x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 16, 16, 8)), jnp.float32)
  def recomputing_selects():
    with fast_ops.forced(True):
      text = jax.jit(jax.grad(loss)).lower(x).compile().as_text()
    return [c.split("\n", 1)[0][:50] for c in re.split(r"\n(?=\S)", text)
            if c.count(" select(") >= 2 and " subtract(" in c]
  assert not recomputing_selects()
  monkeypatch.setattr(fast_ops, "_computed_once", lambda g: g)
  assert recomputing_selects()      # without the stored input XLA:CPU does recompute it
