"""Building blocks shared by the four Flax ports of keras.applications.

Every model is ONE flat Linen module: layers are created inside the top module's compact scope with
the Keras layer name (``conv5_block3_2_conv``), so parameter paths read like the Keras model and
the Keras layer table (``keras_layers``) maps directly onto variable subtrees.

Every Keras layer output, weighted or not, goes through ``tap(module, name, x)``: it records the
value in the ``intermediates`` collection (only when that collection is mutable) and adds the
matching ``perturbations`` variable when one is passed in. That gives any layer's activation
(``capture``) and the gradient with respect to it (Grad-CAM) without changing the forward pass.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

# Collections a model uses. Param paths are (collection, keras_layer_name, variable_name).
PARAMS = "params"
BATCH_STATS = "batch_stats"


@dataclasses.dataclass(frozen=True)
class KerasLayer:
  """One layer of the keras.applications model, in ``model.layers`` order.

  name:   our stable name; equal to the Keras name where Keras names are stable (ResNet50,
          DenseNet121), a stable name of our own for InceptionV3 / IRV2 (Keras auto-numbers them).
  kind:   the Keras class name ('Conv2D', 'BatchNormalization', 'Activation', 'Add', ...).
  params: the variables this layer owns, IN KERAS WEIGHT ORDER (Conv2D: kernel, bias;
          BatchNormalization: gamma, beta, moving_mean, moving_variance), each as a
          (collection, layer, variable) path into the Flax variables, e.g.
          ('params', 'conv1_conv', 'kernel'), ('batch_stats', 'conv1_bn', 'mean').
  """
  name: str
  kind: str
  params: tuple[tuple[str, str, str], ...] = ()

  @property
  def has_weights(self) -> bool:
    return bool(self.params)


def tap(module: nn.Module, name: str, x):
  """Marks ``x`` as the output of Keras layer ``name`` (see module docstring).

  Values live under one key, ``intermediates['layers'][name]`` and ``perturbations['layers'][name]``,
  because Linen forbids a variable and a submodule of the same name (``conv1_conv`` is both).
  Unlike nn.Module.perturb, only the layers the caller passes a perturbation for are perturbed.
  """
  module.sow("intermediates", "layers", {name: x}, reduce_fn=lambda a, b: {**a, **b}, init_fn=dict)
  if module.has_variable("perturbations", "layers"):
    delta = module.get_variable("perturbations", "layers").get(name)
    if delta is not None:
      x = x + delta.astype(x.dtype)
  return x


def bn_uses_running_average(module: nn.Module, name: str, train: bool) -> bool:
  """Keras semantics: a BatchNorm layer runs in inference mode when the model is not training,
  or when the layer is frozen (listed in the model's ``frozen_bn`` field, or ``frozen_bn == ('*',)``)."""
  frozen = getattr(module, "frozen_bn", ())
  return (not train) or ("*" in frozen) or (name in frozen)


def check_min_size(x, min_size: int, model_name: str):
  h, w = x.shape[1], x.shape[2]
  if h < min_size or w < min_size:
    raise ValueError(
        f"{model_name}: input spatial size {h}x{w} is below the minimum {min_size}x{min_size} "
        f"of the keras.applications architecture; resize the images to at least {min_size}.")
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"{model_name}: expected NHWC input with 3 channels, got shape {x.shape}.")


def classifier_head(module: nn.Module, features, num_classes: int, dropout_rate: float,
                    train: bool, dtype):
  """GAP -> Dropout -> Dense(num_classes), the paper's head. Returns logits (no softmax).

  Named like keras: 'avg_pool' (GlobalAveragePooling2D, part of the pooling='avg' backbone),
  'dropout' and 'predictions' (the head).
  """
  x = tap(module, "avg_pool", jnp.mean(features.astype(jnp.float32), axis=(1, 2)))
  x = nn.Dropout(dropout_rate, deterministic=not train, name="dropout")(x)
  x = nn.Dense(num_classes, dtype=dtype, name="predictions")(x)
  return x.astype(jnp.float32)


HEAD_PARAM_LAYERS: Sequence[str] = ("predictions",)
