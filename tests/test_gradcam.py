"""Grad-CAM maps against their closed forms: CAM at the head's input, the softmax Jacobian, an
explicit gradient at an inner layer, batching, errors, and CAM equality for every registered model.

Region / Dice tests are in test_gradcam_regions.py; the `gradcam` command in test_gradcam_study.py.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import radimagenet_jax as rij
from radimagenet_jax.explain import gradcam as gc
from radimagenet_jax.models.base import classifier_head
from radimagenet_jax.models.layers import tap
from tests.model_variables import random_variables


class TinyNet(nn.Module):
  """Stand-in with the shared model interface: tapped layers and the GAP/Dropout/Dense head."""
  num_classes: int = 3
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = tap(self, "conv1_conv", nn.Conv(4, (3, 3), strides=2, name="conv1_conv")(x))
    x = tap(self, "conv1_bn", nn.BatchNorm(use_running_average=not train, name="conv1_bn")(x))
    x = tap(self, "conv1_relu", nn.relu(x))
    x = tap(self, "conv2_conv", nn.Conv(6, (3, 3), strides=2, name="conv2_conv")(x))
    x = tap(self, "out_relu", nn.relu(x))
    return classifier_head(self, x, self.num_classes, self.dropout_rate, train, jnp.float32)


# The four architectures, called by name: a missing or broken architecture module must fail
# here, not turn the parametrised test below into an empty skip.
REGISTERED = ("resnet50", "densenet121", "inception_v3", "inception_resnet_v2")


def test_every_architecture_is_registered():
  assert sorted(rij.models.names()) == sorted(REGISTERED)


def cam_closed_form(features, kernel, targets, size, probs=None):
  """CAM: the target's Dense weights applied to the last feature map, ReLU, bilinear resize, / max.

  With probs (score='softmax') the weight vector is W_t - sum_j p_j W_j (the softmax's Jacobian).
  """
  w = kernel[:, targets].T
  if probs is not None:
    w = w - probs @ kernel.T
  cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", features, w))
  maps = jax.image.resize(cam, (features.shape[0],) + tuple(size), method="bilinear")
  peak = maps.max(axis=(1, 2), keepdims=True)
  return np.asarray(jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1), 0))


@pytest.fixture(scope="module")
def tiny():
  model = TinyNet()
  x = jax.random.normal(jax.random.key(1), (4, 16, 20, 3))
  variables = model.init(jax.random.key(0), x[:1])
  # Non-trivial BatchNorm statistics, so inference mode matters.
  variables = jax.tree_util.tree_map(lambda v: v, dict(variables))
  variables["batch_stats"] = {"conv1_bn": {"mean": jnp.full((4,), 0.1),
                                           "var": jnp.full((4,), 2.0)}}
  return model, variables, x


def test_tiny_gradcam_equals_cam_at_last_conv_layer(tiny):
  model, variables, x = tiny
  res = gc.gradcam_full(model, variables, x, layer="out_relu")
  _, taps = rij.models.capture(model, variables, x, ["out_relu"])
  expected = cam_closed_form(taps["out_relu"], variables["params"]["predictions"]["kernel"],
                             np.asarray(res.targets), x.shape[1:3])
  np.testing.assert_allclose(np.asarray(res.maps), expected, atol=1e-5)
  assert res.maps.shape == (4, 16, 20)
  np.testing.assert_array_equal(res.targets, np.argmax(res.logits, -1))


def test_tiny_softmax_score_matches_softmax_jacobian(tiny):
  model, variables, x = tiny
  res = gc.gradcam_full(model, variables, x, layer="out_relu", score="softmax", target=1)
  _, taps = rij.models.capture(model, variables, x, ["out_relu"])
  expected = cam_closed_form(taps["out_relu"], variables["params"]["predictions"]["kernel"],
                             np.full(4, 1), x.shape[1:3], probs=jax.nn.softmax(res.logits))
  np.testing.assert_allclose(np.asarray(res.maps), expected, atol=1e-5)


def test_tiny_intermediate_layer_matches_explicit_gradient(tiny):
  """At an inner layer the gradient is not constant; compare with jax.grad of the network's tail
  written out by hand (no perturbation mechanism involved)."""
  model, variables, x = tiny
  targets = np.array([0, 1, 2, 0])
  res = gc.gradcam_full(model, variables, x, layer="conv1_relu", target=targets)
  _, taps = rij.models.capture(model, variables, x, ["conv1_relu"])
  p = variables["params"]

  def tail(a):
    h = jax.lax.conv_general_dilated(a, p["conv2_conv"]["kernel"], (2, 2), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(h + p["conv2_conv"]["bias"]).mean(axis=(1, 2))
    logits = h @ p["predictions"]["kernel"] + p["predictions"]["bias"]
    return jnp.take_along_axis(logits, targets[:, None], 1).sum()

  a = taps["conv1_relu"]
  weights = jax.grad(tail)(a).mean(axis=(1, 2))
  cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", a, weights))
  maps = jax.image.resize(cam, (4, 16, 20), "bilinear")
  expected = maps / maps.max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(np.asarray(res.maps), np.asarray(expected), atol=1e-5)
  np.testing.assert_array_equal(res.targets, targets)


def test_tiny_batched_equals_one_at_a_time_and_range(tiny):
  model, variables, x = tiny
  batched = np.asarray(gc.gradcam(model, variables, x, layer="conv1_relu"))
  single = np.concatenate([np.asarray(gc.gradcam(model, variables, x[i:i + 1], layer="conv1_relu"))
                           for i in range(len(x))])
  np.testing.assert_allclose(batched, single, atol=1e-6)
  assert batched.min() >= 0 and np.allclose(batched.max(axis=(1, 2)), 1.0)


def test_all_zero_map_stays_zero(tiny):
  model, variables, x = tiny
  # A target whose weights are negative everywhere gives ReLU(...) == 0: no NaN from 0 / 0.
  params = jax.tree_util.tree_map(lambda v: v, dict(variables["params"]))
  params["predictions"] = {"kernel": -jnp.abs(params["predictions"]["kernel"]),
                           "bias": params["predictions"]["bias"]}
  maps = gc.gradcam(model, {**variables, "params": params}, x, layer="out_relu", target=0)
  np.testing.assert_array_equal(np.asarray(maps), 0.0)


def test_unknown_layer_lists_valid_names(tiny):
  model, variables, x = tiny
  with pytest.raises(ValueError, match=r"'conv9'.*conv1_conv, conv1_bn, conv1_relu"):
    gc.gradcam(model, variables, x, layer="conv9")
  with pytest.raises(ValueError, match="avg_pool.*feature map"):
    gc.gradcam(model, variables, x, layer="avg_pool")
  with pytest.raises(ValueError, match="no spec_name"):
    gc.gradcam(model, variables, x)
  with pytest.raises(ValueError, match="score='prob'"):
    gc.gradcam(model, variables, x, layer="out_relu", score="prob")
  with pytest.raises(ValueError, match=r"target has shape \(2,\)"):
    gc.gradcam(model, variables, x, layer="out_relu", target=[0, 1])
  with pytest.raises(ValueError, match=r"target values 0..3 are not class indices 0..2"):
    gc.gradcam(model, variables, x, layer="out_relu", target=[0, 1, 2, 3])


def test_jitted_function_is_cached_per_model_layer_score(tiny):
  model, variables, x = tiny
  gc.gradcam(model, variables, x, layer="out_relu")
  assert gc._compiled(TinyNet(), "out_relu", "logit") is gc._compiled(model, "out_relu", "logit")


# ----------------------------------------------------------------------------- registered models
@pytest.mark.parametrize("name", REGISTERED)
def test_gradcam_equals_cam_for_registered_model(name):
  """At the paper's layer (the last layer of the notop model, the input of GAP + Dense), the
  Grad-CAM weights are W[:, target] / (h * w): Grad-CAM equals CAM. (Only one compile per model:
  the activations come from the same call; the equality itself fails for any layer that does not
  feed the head directly.)"""
  spec = rij.models.get_spec(name)
  model = spec.module_cls(num_classes=3)
  size = spec.min_size
  x = jax.random.normal(jax.random.key(4), (2, size, size + 3, 3))
  variables = random_variables(model, x)
  res = gc.gradcam_full(model, variables, x)            # default layer = spec.feature_layer
  assert gc.default_layer(model) == spec.feature_layer
  expected = cam_closed_form(res.activations, variables["params"]["predictions"]["kernel"],
                             np.asarray(res.targets), (size, size + 3))
  assert res.maps.shape == (2, size, size + 3)
  assert np.asarray(res.maps).max() == pytest.approx(1.0)   # not a trivially zero map
  np.testing.assert_allclose(np.asarray(res.maps), expected, atol=2e-4)
  np.testing.assert_array_equal(res.targets, np.argmax(res.logits, -1))
  # The head's input is the activations' spatial mean: the logits follow from A in closed form.
  p = variables["params"]["predictions"]
  logits = np.asarray(res.activations).mean(axis=(1, 2)) @ p["kernel"] + p["bias"]
  np.testing.assert_allclose(np.asarray(res.logits), logits, rtol=1e-4, atol=1e-4)
