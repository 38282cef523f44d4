"""models/fast_ops: the XLA:CPU formulations equal the plain lax ops (values and gradients), and
RADIMAGENET_JAX_FAST_OPS picks the path."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radimagenet_jax.models import fast_ops
from tests.jaxpr_walk import equations

DN = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _conv_loss(x, k, strides, padding):
  y = fast_ops.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN)
  return jnp.sum(jnp.sin(y)), y


@pytest.mark.parametrize("ksize,strides,padding,size", [
    (1, (1, 1), "VALID", 9), (1, (2, 2), "VALID", 9), (3, (1, 1), "SAME", 9),
    (3, (2, 2), "VALID", 9),
    (3, (1, 1), "VALID", 9),            # stride-1, unpadded: one padded row and column, sliced off
    (3, (1, 1), "SAME", 2),             # kernel larger than the map: the input padded explicitly
    (3, (2, 2), "VALID", 6),            # output smaller than the kernel (the input gradient's map)
    ((1, 3), (1, 1), "SAME", 2), ((7, 1), (1, 1), "SAME", 6), (3, (1, 1), ((2, 0), (0, 1)), 3)])
def test_conv_fast_equals_plain(monkeypatch, ksize, strides, padding, size):
  rng = np.random.default_rng(0)
  kh, kw = (ksize, ksize) if isinstance(ksize, int) else ksize
  x = jnp.asarray(rng.normal(size=(2, size, size, 5)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(kh, kw, 5, 7)), jnp.float32)
  results = {}
  for mode in ("on", "off"):
    monkeypatch.setenv(fast_ops.FAST_OPS_ENV, mode)
    (_, y), grads = jax.value_and_grad(_conv_loss, argnums=(0, 1), has_aux=True)(
        x, k, strides, padding)
    results[mode] = (y, grads)
  oracle = jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN)
  np.testing.assert_allclose(results["off"][0], oracle, rtol=0, atol=0)
  np.testing.assert_allclose(results["on"][0], oracle, rtol=1e-5, atol=1e-5)
  for g_on, g_off in zip(results["on"][1], results["off"][1]):
    np.testing.assert_allclose(g_on, g_off, rtol=1e-4, atol=1e-4)


def _conv_layouts(loss, *args):
  import re
  text = jax.jit(jax.grad(loss, (0, 1))).lower(*args).compile().as_text()
  return re.findall(r" convolution\(.*?window=\{([^}]*)\}, dim_labels=([^,\s]+)", text)


@pytest.mark.parametrize("size,strides,padding", [(2, (1, 1), "SAME"), (6, (2, 2), "VALID")])
def test_small_maps_keep_the_convolutions_in_the_fast_layout(size, strides, padding):
  """A kernel covering more positions than the map (forward), or than the output (the input
  gradient), makes XLA swap the convolution's operands into a layout XLA:CPU runs 10-100x slower;
  the fast path pads the input so that every convolution of the step keeps NHWC / HWIO."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(2, size, size, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 8, 8)), jnp.float32)
  loss = lambda x, k: _conv_loss(x, k, strides, padding)[0]
  with fast_ops.forced(False):
    plain = _conv_layouts(loss, x, k)
  assert any(labels != "b01f_01io->b01f" for _, labels in plain), plain   # XLA still swaps
  with fast_ops.forced(True):
    fast = _conv_layouts(loss, x, k)
  assert fast and all(labels == "b01f_01io->b01f" for _, labels in fast), fast


def test_unpadded_stride_one_convolution_runs_padded():
  """XLA:CPU runs a stride-1 convolution without padding 2.5-5x slower than with one padded row
  and column; the fast path pads and slices, in the forward pass and in the kernel gradient."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 4, 4)), jnp.float32)
  loss = lambda x, k: jnp.sum(_conv_loss(x, k, (1, 1), "VALID")[1] ** 2)
  for on in (False, True):
    with fast_ops.forced(on):
      windows = [w for w, _ in _conv_layouts(loss, x, k)]
    assert len(windows) == 3, windows        # forward, input gradient, kernel gradient
    assert all("pad=" in w for w in windows) == on, windows


@pytest.mark.parametrize("ksize,strides", [(1, (1, 1)), (1, (2, 2)), (3, (1, 1)), (3, (2, 2))])
def test_precision_reaches_every_product_of_the_fast_path(ksize, strides):
  """A convolution's ``precision`` (``nn.Conv(precision=...)``) applies to the fast path's forward
  and gradient products as to the plain convolution (it matters on TPUs and GPUs, where the fast
  ops can be forced on)."""
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(ksize, ksize, 4, 6)), jnp.float32)
  hi = jax.lax.Precision.HIGHEST

  def loss(x, k):
    return jnp.sum(fast_ops.conv_general_dilated(x, k, strides, "SAME", dimension_numbers=DN,
                                                 precision=hi) ** 2)

  with fast_ops.forced(True):
    jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, k)
  products = [e for e in equations(jaxpr)
              if e.primitive.name in ("dot_general", "conv_general_dilated")]
  assert len(products) >= 3, products      # forward, input gradient, kernel gradient
  assert all(e.params["precision"] in (hi, (hi, hi)) for e in products), \
      [(e.primitive.name, e.params["precision"]) for e in products]


def test_mode_selection(monkeypatch):
  monkeypatch.setenv(fast_ops.FAST_OPS_ENV, "auto")
  assert fast_ops.enabled() == (jax.default_backend() == "cpu")
  monkeypatch.setenv(fast_ops.FAST_OPS_ENV, "off")
  assert not fast_ops.enabled()
  monkeypatch.setenv(fast_ops.FAST_OPS_ENV, "fast")
  with pytest.raises(ValueError, match="RADIMAGENET_JAX_FAST_OPS='fast'.*auto, on, off"):
    fast_ops.enabled()


def test_forced_overrides_the_environment(monkeypatch):
  monkeypatch.setenv(fast_ops.FAST_OPS_ENV, "on")
  with fast_ops.forced(False):
    assert not fast_ops.enabled()
    with fast_ops.forced(True):
      assert fast_ops.enabled()
    assert not fast_ops.enabled()
  assert fast_ops.enabled()


def _bn_relu(x):
  m = x.mean((0, 1, 2))
  return jax.nn.relu((x - m) * jax.lax.rsqrt(((x - m) ** 2).mean((0, 1, 2)) + 1e-3))


def _dense_chain(x, ws, concat):
  """A DenseNet-shaped chain: BatchNorm-ReLU over the running concatenation, a channel matmul,
  appended to it (what makes XLA:CPU duplicate the gradient chain)."""
  for w in ws:
    x = concat([x, jnp.tanh(_bn_relu(x) @ w)])
  return jnp.sum(jnp.sin(x))


def test_concatenate_gradient_is_the_plain_one_and_is_computed_once(monkeypatch):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32)
  ws = [jnp.asarray(rng.normal(0, 0.3, (8 + 4 * i, 4)), jnp.float32) for i in range(8)]
  oracle = jax.jit(jax.grad(lambda x, ws: _dense_chain(x, ws, lambda xs: jnp.concatenate(xs, -1)),
                            (0, 1)))(x, ws)
  multiplies = {}
  for mode in ("on", "off"):
    monkeypatch.setenv(fast_ops.FAST_OPS_ENV, mode)
    grad = jax.jit(jax.grad(lambda x, ws: _dense_chain(x, ws, fast_ops.concatenate), (0, 1)))
    compiled = grad.lower(x, ws).compile()
    multiplies[mode] = compiled.as_text().count(" multiply(")
    for got, want in zip(jax.tree.leaves(compiled(x, ws)), jax.tree.leaves(oracle)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Without the computed-once cotangent, each link's fusion recomputes the links above it.
  assert multiplies["on"] < 0.5 * multiplies["off"], multiplies
  # A NaN where the predicate looks (the cond's other branch) still gives the plain gradient.
  monkeypatch.setenv(fast_ops.FAST_OPS_ENV, "on")
  a, b = jnp.ones((1, 2, 2, 3)), jnp.ones((1, 2, 2, 2))
  cot = jnp.arange(20.0).reshape(1, 2, 2, 5).at[0, 0, 0, 0].set(jnp.nan)
  da, db = jax.vjp(lambda a, b: fast_ops.concatenate([a, b]), a, b)[1](cot)
  np.testing.assert_array_equal(np.concatenate([da, db], -1), cot)


def _residual_chain(x, ws, store):
  """Inception-ResNet-shaped: relu(x + 0.1 * branch(x)), block after block."""
  for w in ws:
    x = jax.nn.relu(store(x + 0.1 * jnp.tanh(_bn_relu(x) @ w)))
  return jnp.sum(jnp.sin(x))


def test_stored_residual_sums_are_not_recomputed_and_keep_the_gradient():
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32)
  ws = [jnp.asarray(rng.normal(0, 0.3, (8, 8)), jnp.float32) for _ in range(10)]
  oracle = jax.jit(jax.grad(lambda x, ws: _residual_chain(x, ws, lambda v: v), (0, 1)))(x, ws)
  maxima = {}
  for on in (True, False):
    with fast_ops.forced(on):
      grad = jax.jit(jax.grad(lambda x, ws: _residual_chain(x, ws, fast_ops.stored), (0, 1)))
      compiled = grad.lower(x, ws).compile()
    maxima[on] = compiled.as_text().count(" maximum(")
    for got, want in zip(jax.tree.leaves(compiled(x, ws)), jax.tree.leaves(oracle)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Without the stored sums the backward fusions recompute the ReLUs of the blocks above.
  assert maxima[True] < 0.5 * maxima[False], maxima


def test_kernel_gradients_transpose_stored_values_not_recomputed_ones():
  """XLA:CPU's kernel-gradient products read a transposed copy of the layer input and the output
  gradient; the BatchNorm/ReLU (backward) producing those must not be fused into (recomputed in)
  that transposed copy: every fusion that transposes is a plain copy."""
  import re
  def loss(x, k1, k3):
    h = fast_ops.conv_general_dilated(_bn_relu(x), k1, (1, 1), "VALID", dimension_numbers=DN)
    h = fast_ops.conv_general_dilated(_bn_relu(h), k3, (1, 1), "SAME", dimension_numbers=DN)
    return jnp.sum(jnp.sin(_bn_relu(h)))
  rng = np.random.default_rng(3)
  args = [jnp.asarray(rng.normal(size=s), jnp.float32)
          for s in ((4, 8, 8, 16), (1, 1, 16, 8), (3, 3, 8, 8))]
  with fast_ops.forced(True):
    text = jax.jit(jax.grad(loss, (0, 1, 2))).lower(*args).compile().as_text()
  transposing = [c for c in re.split(r"\n(?=\S)", text)
                 if c.startswith("%fused") and " transpose(" in c]
  assert transposing, "no transposed copy left: the test no longer looks at the right thing"
  arithmetic = [c.split("\n", 1)[0][:60] for c in transposing
                if " multiply(" in c or " subtract(" in c]
  assert not arithmetic, arithmetic


def test_xla_cpu_flag_rules():
  from radimagenet_jax import _xla_cpu_flags as xf
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xf.apply(env, "0.10.2")
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {xf.FLAG}"
  assert not xf.apply(env, "0.10.2")                       # once
  for env, version in [({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}, "0.10.2"),
                       ({"RADIMAGENET_JAX_FAST_OPS": "off"}, "0.10.2"),
                       ({}, "0.9.2"), ({}, "0.13.0"), ({}, "1.0.0"), ({}, "0.10.1")]:
    before = dict(env)
    assert not xf.apply(env, version), (env, version)
    assert env == before
  for version in ("0.10.3rc1", "0.11.2", "0.12.0.1"):
    assert xf.apply({}, version), version


def test_convolutions_leave_ynnpack_when_the_flag_is_set():
  """The flag set by `rij.tune_cpu()` (the conftest calls it before JAX starts, as the commands do)
  takes effect: the compiled convolution is XLA's own (Eigen), not a YNNPACK fusion; matrix
  products stay there."""
  import os
  from radimagenet_jax import _xla_cpu_flags as xf
  if xf.FLAG not in os.environ.get("XLA_FLAGS", ""):
    pytest.skip(f"jaxlib outside the versions the flag was checked with: {xf._CHECKED}")
  x = jnp.ones((2, 8, 8, 4))
  k = jnp.ones((3, 3, 4, 4))
  conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                            dimension_numbers=DN))
  text = conv.lower(x, k).compile().as_text()
  assert " convolution(" in text and "__ynn_fusion" not in text, text
  dot = jax.jit(lambda a, b: a @ b).lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile()
  assert "__ynn_fusion" in dot.as_text()


@pytest.mark.parametrize("hw,kernel,strides,padding", [
    ((9, 11), (3, 3), (2, 2), "VALID"), ((8, 8), (3, 3), (2, 2), "SAME"),
    ((17, 17), (7, 7), (2, 2), ((3, 3), (3, 3))), ((7, 5), (1, 3), (2, 1), ((0, 0), (2, 1))),
    ((10, 10), (1, 1), (2, 2), "VALID"), ((11, 9), (2, 2), (3, 3), ((1, 2), (0, 1))),
    ((2, 3), (3, 3), (2, 2), "SAME")])
def test_strided_input_gradient_by_phases_equals_autodiff(hw, kernel, strides, padding):
  """One stride-1 convolution per stride phase (conv_input_grad) gives autodiff's input gradient,
  including taps that miss a phase (1x1/2), asymmetric pads and maps smaller than the kernel."""
  from radimagenet_jax.models.conv_input_grad import strided_input_grad
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, *hw, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(*kernel, 3, 4)), jnp.float32)
  pads = (jax.lax.padtype_to_pads(hw, kernel, strides, padding) if isinstance(padding, str)
          else padding)
  y, vjp = jax.vjp(lambda x: jax.lax.conv_general_dilated(
      x, k, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC")), x)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  np.testing.assert_allclose(strided_input_grad(g, k, x.shape, strides, pads), vjp(g)[0],
                             rtol=1e-5, atol=1e-5)


def test_strided_convolution_gradient_has_no_dilated_convolution():
  """XLA:CPU runs an input-dilated convolution (autodiff's input gradient of a strided one) in a
  generic loop; the fast path's gradient has none, and equals the plain gradient."""
  conv = nn.Conv(8, (3, 3), strides=(2, 2), padding="VALID",
                 conv_general_dilated=fast_ops.conv_general_dilated)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 9, 4)), jnp.float32)
  with fast_ops.forced(True):
    v = conv.init(jax.random.key(0), x)
    loss = lambda x: jnp.sum(jnp.sin(conv.apply(v, x)))
    grad_jaxpr = jax.make_jaxpr(jax.grad(loss))(x)
    fast = jax.grad(loss)(x)
  plain = jax.grad(lambda x: jnp.sum(jnp.sin(nn.Conv(8, (3, 3), strides=(2, 2), padding="VALID")
                                              .apply(v, x))))(x)
  found = [tuple(eqn.params["lhs_dilation"]) for eqn in equations(grad_jaxpr)
           if eqn.primitive.name == "conv_general_dilated"]
  assert found and all(d == (1, 1) for d in found), found
  np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)
