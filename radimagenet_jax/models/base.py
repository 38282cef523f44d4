"""The base class of the four flat Flax ports: shared fields, the paper's head, the input check.

Every model is ONE flat Linen module: layers are created inside the top module's compact scope with
the Keras layer name (``conv5_block3_2_conv``), so parameter paths read like the Keras model and
the Keras layer table (``keras_layers``) maps directly onto variable subtrees. A subclass declares
its metadata once, as class attributes (``spec_name``, ``min_size``, ``default_size``,
``feature_layer``, ``keras_application``, ``bn_epsilon``, ``bn_scale``); ``registry.register`` reads
them from there.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from radimagenet_jax.models.layers import KERNEL_INIT, FlaxLayers, KerasLayer, LayerTable, tap


# name -> architecture class; filled by the @register decorator of each architecture module.
_REGISTRY: dict[str, type] = {}


def register(module_cls: type) -> type:
  """Class decorator: makes ``module_cls`` available by its ``spec_name`` (models.get_spec)."""
  _REGISTRY[module_cls.spec_name] = module_cls
  return module_cls


def check_min_size(x, min_size: int, model_name: str):
  # The shape check comes first: a 3-D input would otherwise fail with an IndexError.
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"{model_name}: expected NHWC input with 3 channels, got shape {x.shape}.")
  h, w = x.shape[1], x.shape[2]
  if h < min_size or w < min_size:
    raise ValueError(
        f"{model_name}: input spatial size {h}x{w} is below the minimum {min_size}x{min_size} "
        f"of the keras.applications architecture; resize the images to at least {min_size}.")


def classifier_head(module: nn.Module, features, num_classes: int, dropout_rate: float,
                    train: bool, dtype):
  """GAP -> Dropout -> Dense(num_classes), the paper's head. Returns logits (no softmax).

  Named like keras: 'avg_pool' (GlobalAveragePooling2D, part of the pooling='avg' backbone),
  'dropout' and 'predictions' (the head). ``num_classes=0`` gives a features-only model (as timm):
  the pooled features (B, C), float32, and no head parameters.
  """
  x = tap(module, "avg_pool", jnp.mean(features.astype(jnp.float32), axis=(1, 2)))
  if num_classes == 0:
    return x
  x = nn.Dropout(dropout_rate, deterministic=not train, name="dropout")(x)
  x = nn.Dense(num_classes, dtype=dtype, kernel_init=KERNEL_INIT, bias_init=nn.initializers.zeros,
               name="predictions")(x)
  return x.astype(jnp.float32)


HEAD_PARAM_LAYERS: Sequence[str] = ("predictions",)


class KerasApplication(nn.Module):
  """Base of the flat Flax ports: the shared fields, ``__call__`` (backbone + paper head) and
  ``features``. Subclasses declare their metadata as class attributes (below) and implement
  ``backbone(L, x)`` as a staticmethod: Keras-style block functions over the vocabulary ``L``,
  returning the last feature map of the notop model. ``num_classes=0``: features-only model.
  """
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  frozen_bn: tuple[str, ...] = ()

  spec_name = ""
  min_size = 32
  bn_epsilon = 1e-3
  bn_scale = True

  @staticmethod
  def backbone(L, x):
    raise NotImplementedError("KerasApplication subclasses must implement backbone(L, x).")

  @classmethod
  def layer_table(cls) -> list[KerasLayer]:
    """keras_layers(): the backbone's layers plus the 'avg_pool' of pooling='avg'."""
    table = LayerTable(cls.bn_epsilon, cls.bn_scale)
    x = cls.backbone(table, None)  # placeholders only: nothing is computed
    table.global_avg_pool(x, name="avg_pool")
    return table.layers

  @nn.compact
  def __call__(self, x, train: bool = False, *, features_only: bool = False):
    check_min_size(x, self.min_size, self.spec_name)
    L = FlaxLayers(self, train, self.bn_epsilon, self.bn_scale)
    x = self.backbone(L, x)
    if features_only:
      return x
    return classifier_head(self, x, self.num_classes, self.dropout_rate, train, self.dtype)

  def features(self, x, train: bool = False):
    """The last feature map of the Keras notop model (compute dtype, NHWC)."""
    return self(x, train, features_only=True)
