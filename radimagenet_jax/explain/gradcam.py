"""Grad-CAM traced by JAX, and the paper's Dice evaluation over a data set split.

    import radimagenet_jax as rij
    model, variables = rij.models.create("resnet50", num_classes=2, weights="ckpt_dir")
    maps = rij.gradcam.gradcam(model, variables, images)        # (B, H, W) in [0, 1]

The gradient with respect to a layer's output comes from the ``tap`` points of the models
(models/layers.py): a zero ``perturbations['layers'][layer]`` is added to that output, and the
gradient of the class score with respect to the perturbation is the gradient with respect to the
activation. One jitted function per (model, layer, score) computes the whole batch: forward pass,
backward pass, weights, ReLU, bilinear resize and scaling.

Definitions (Selvaraju et al. 2017, as in the Keras Grad-CAM example):
  weights_c = mean over (y, x) of d score / d A[y, x, c]
  cam       = ReLU(sum_c weights_c * A[..., c])        at the layer's resolution
  map       = resize_bilinear(cam, input size) / max   (an all-zero map stays zero)
The map is scaled after the resize, so every non-zero map reaches exactly 1.0.

The `radimagenet-jax gradcam` command is ``explain.study.run(config, workdir)``: see
configs/gradcam.py.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from radimagenet_jax.models import registry

SCORES = ("logit", "softmax")


class GradCamResult(NamedTuple):
  """Everything one batched Grad-CAM call computes (arrays over the batch)."""
  maps: jax.Array        # (B, H, W) float32 in [0, 1], input resolution
  cams: jax.Array        # (B, h, w) float32 in [0, 1], the layer's resolution, same scaling rule
  logits: jax.Array      # (B, num_classes) float32
  targets: jax.Array     # (B,) int32, the class each map explains
  activations: jax.Array  # (B, h, w, C) float32, the layer's output A


def default_layer(model) -> str:
  """The paper's Grad-CAM layer: the last layer of the notop model (the spec's feature_layer)."""
  name = getattr(model, "spec_name", None)
  if name is None:
    raise ValueError(f"{type(model).__name__} has no spec_name, so there is no default Grad-CAM "
                     f"layer; pass layer='<keras layer name>'.")
  return registry.get_spec(name).feature_layer


def _scale_max(x, axes):
  """Divides each map by its maximum; maps whose maximum is 0 stay 0 (no division by zero)."""
  peak = jnp.max(x, axis=axes, keepdims=True)
  return jnp.where(peak > 0, x / jnp.where(peak > 0, peak, 1.0), 0.0)


def _layer_shapes(model, variables, images):
  """Shapes of every tapped layer output, in model.layers order (abstract evaluation only)."""
  order = []

  def taps(v, x):
    layers = model.apply(v, x, train=False, mutable=["intermediates"])[1]["intermediates"]["layers"]
    order.extend(layers)      # eval_shape returns a key-sorted dict; keep the layer order here
    return layers

  shapes = jax.eval_shape(taps, variables, images)
  return {name: shapes[name] for name in order}


def _check_layer(model, layer, shapes):
  if layer not in shapes:
    raise ValueError(f"Unknown Grad-CAM layer {layer!r} for {type(model).__name__}; valid names "
                     f"(model.layers order): {', '.join(shapes)}.")
  if len(shapes[layer].shape) != 4:
    raise ValueError(f"Grad-CAM layer {layer!r} of {type(model).__name__} has output shape "
                     f"{tuple(shapes[layer].shape)}; expected a (batch, height, width, channels) "
                     f"feature map (a convolutional layer, not the pooled head).")


@functools.lru_cache(maxsize=32)
def _compiled(model, layer: str, score: str):
  """The jitted batched Grad-CAM of one (model, layer, score); re-traced only for new shapes."""

  def fn(variables, images, targets):
    shapes = _layer_shapes(model, variables, images)
    _check_layer(model, layer, shapes)
    zero = jnp.zeros(shapes[layer].shape, shapes[layer].dtype)

    def class_score(delta):
      logits, state = model.apply({**variables, "perturbations": {"layers": {layer: delta}}},
                                  images, train=False, mutable=["intermediates"])
      logits = logits.astype(jnp.float32)
      # The predicted class is a constant of the differentiation (argmax has no gradient).
      chosen = jnp.where(targets >= 0, targets, jnp.argmax(logits, axis=-1)).astype(jnp.int32)
      values = logits if score == "logit" else jax.nn.softmax(logits, axis=-1)
      picked = jnp.take_along_axis(values, chosen[:, None], axis=-1)[:, 0]
      # Images do not interact in inference mode, so the gradient of the sum is per image.
      return picked.sum(), (state["intermediates"]["layers"][layer], logits, chosen)

    grads, (acts, logits, chosen) = jax.grad(class_score, has_aux=True)(zero)
    grads = grads.astype(jnp.float32)
    acts = acts.astype(jnp.float32)
    weights = jnp.mean(grads, axis=(1, 2))                          # (B, C)
    cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", acts, weights))
    b, h, w = images.shape[:3]
    maps = jax.image.resize(cam, (b, h, w), method="bilinear")
    return GradCamResult(_scale_max(maps, (1, 2)), _scale_max(cam, (1, 2)), logits, chosen, acts)

  return jax.jit(fn)


def _targets(target, batch: int, num_classes: int | None):
  if target is None:
    return jnp.full((batch,), -1, jnp.int32)     # -1: the predicted class, chosen in the jit
  t = np.asarray(target)
  if t.ndim == 0:
    t = np.full((batch,), int(t))
  if t.shape != (batch,):
    raise ValueError(f"target has shape {t.shape}; expected None, one class index or one per "
                     f"image, shape ({batch},).")
  if t.min() < 0 or (num_classes and t.max() >= num_classes):
    raise ValueError(f"target values {t.min()}..{t.max()} are not class indices 0.."
                     f"{(num_classes or 0) - 1} of the model.")
  return jnp.asarray(t, jnp.int32)


def gradcam_full(model, variables, images, layer: str | None = None, target=None,
                 score: str = "logit") -> GradCamResult:
  """Grad-CAM with its by-products (layer-resolution maps, logits, explained classes, A).

  Args:
    model: a Flax model whose layers go through ``models.tap`` (the four registered models).
    variables: {'params', 'batch_stats'}; other collections are ignored. BatchNorm runs in
      inference mode.
    images: float32 (B, H, W, 3), preprocessed like the model's training data.
    layer: the Keras layer whose output is explained; default ``default_layer(model)``.
    target: None (the predicted class), one class index, or one index per image.
    score: 'logit' (the class score before the softmax, as in the Grad-CAM paper) or 'softmax'.
  """
  if score not in SCORES:
    raise ValueError(f"score={score!r}; expected one of {SCORES}.")
  layer = default_layer(model) if layer is None else layer
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4:
    raise ValueError(f"images have shape {images.shape}; expected (batch, height, width, 3).")
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  targets = _targets(target, images.shape[0], getattr(model, "num_classes", None))
  return _compiled(model, layer, score)(variables, images, targets)


def gradcam(model, variables, images, layer: str | None = None, target=None,
            score: str = "logit") -> jax.Array:
  """Grad-CAM maps (B, H, W), resized to the input size and scaled to [0, 1] per image.

  See ``gradcam_full`` for the arguments. An unknown layer raises a ValueError listing the valid
  layer names.
  """
  return gradcam_full(model, variables, images, layer, target, score).maps
