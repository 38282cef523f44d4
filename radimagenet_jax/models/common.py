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
from typing import Any, Sequence

import flax.linen as nn
import jax
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
  'dropout' and 'predictions' (the head).
  """
  x = tap(module, "avg_pool", jnp.mean(features.astype(jnp.float32), axis=(1, 2)))
  x = nn.Dropout(dropout_rate, deterministic=not train, name="dropout")(x)
  x = nn.Dense(num_classes, dtype=dtype, name="predictions")(x)
  return x.astype(jnp.float32)


HEAD_PARAM_LAYERS: Sequence[str] = ("predictions",)


# ---------------------------------------------------------------------------------------------
# One vocabulary of Keras layers, two interpreters.
#
# An architecture is written ONCE as Keras-style block functions over a layer vocabulary ``L``
# (``L.conv``, ``L.bn``, ``L.act``, ...). ``FlaxLayers`` executes it inside the model's compact
# scope; ``LayerTable`` records the same calls as the Keras layer table (``keras_layers``). The
# table therefore cannot drift from the model, and the parity tests check it against Keras.
# Block functions must call the layers in keras ``model.layers`` order (topological order, which
# is not always creation order, e.g. ResNet's ``_0_conv`` comes after ``_2_relu``).
# ---------------------------------------------------------------------------------------------


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


def _pads(padding):
  """Keras ZeroPadding2D ``padding`` (int, (h, w) or ((top, bottom), (left, right)))."""
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  if isinstance(padding[0], int):
    return ((padding[0], padding[0]), (padding[1], padding[1]))
  return tuple(tuple(p) for p in padding)


_ACTIVATIONS = {"relu": nn.relu, "linear": lambda x: x}


class KerasBatchNorm(nn.Module):
  """keras.layers.BatchNormalization (channels last) with Keras's arithmetic, Flax's variable names.

  Variables: params ``scale`` (gamma, only with ``use_scale``) and ``bias`` (beta), batch_stats
  ``mean`` and ``var``, as in ``nn.BatchNorm``. Unlike ``nn.BatchNorm`` the output is computed as
  Keras does, ``x * inv + (beta - mean * inv)`` with ``inv = gamma / sqrt(var + eps)``, in float32
  whatever the compute dtype: with batch statistics over few samples, ``(x - mean) * inv`` rounds
  differently enough to reach relative errors of ~6e-5 after 50 layers; the Keras form matches
  keras.applications to the last bit on CPU. Batch statistics are the exact two-pass mean and
  (biased) variance; under ``jit`` with a sharded batch they are global (sync BatchNorm).
  """
  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-3
  use_scale: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    ra_mean = self.variable(BATCH_STATS, "mean", jnp.zeros, features, jnp.float32)
    ra_var = self.variable(BATCH_STATS, "var", jnp.ones, features, jnp.float32)
    scale = (self.param("scale", nn.initializers.ones, features, jnp.float32)
             if self.use_scale else None)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    x32 = x.astype(jnp.float32)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      mean, var = jnp.mean(x32, axes), jnp.var(x32, axes)
      if not self.is_initializing():
        ra_mean.value = ra_mean.value * self.momentum + mean * (1.0 - self.momentum)
        ra_var.value = ra_var.value * self.momentum + var * (1.0 - self.momentum)
    inv = jax.lax.rsqrt(var + self.epsilon)
    if scale is not None:
      inv = inv * scale
    return (x32 * inv + (bias - mean * inv)).astype(self.dtype)


class FlaxLayers:
  """Executes Keras layers as Flax ops inside ``module``'s compact method.

  BatchNorm follows Keras (``KerasBatchNorm``): momentum 0.99, batch statistics when training,
  running statistics when not training or when the layer is frozen (``frozen_bn``).
  Convolutions and BatchNorm compute in ``module.dtype``; parameters stay float32.
  """

  def __init__(self, module: nn.Module, train: bool, bn_epsilon: float, bn_scale: bool = True):
    self.module, self.train = module, train
    self.bn_epsilon, self.bn_scale = bn_epsilon, bn_scale
    self.dtype = getattr(module, "dtype", jnp.float32)

  def _tap(self, name, x):
    return tap(self.module, name, x)

  @staticmethod
  def channels(x) -> int:
    return x.shape[-1]

  def input(self, x, name="input_layer"):
    return self._tap(name, jnp.asarray(x, self.dtype))

  def conv(self, x, filters, kernel, *, name, strides=1, padding="valid", use_bias=True):
    y = nn.Conv(filters, _pair(kernel), strides=_pair(strides), padding=padding.upper(),
                use_bias=use_bias, dtype=self.dtype, name=name)(x)
    return self._tap(name, y)

  def bn(self, x, *, name):
    y = KerasBatchNorm(use_running_average=bn_uses_running_average(self.module, name, self.train),
                       epsilon=self.bn_epsilon, use_scale=self.bn_scale, dtype=self.dtype,
                       name=name)(x)
    return self._tap(name, y)

  def act(self, x, activation="relu", *, name):
    return self._tap(name, _ACTIVATIONS[activation](x))

  def add(self, xs, *, name):
    y = xs[0]
    for other in xs[1:]:
      y = y + other
    return self._tap(name, y)

  def concat(self, xs, *, name):
    return self._tap(name, jnp.concatenate(xs, axis=-1))

  def scale_add(self, xs, scale, *, name):
    """Keras 3 ``CustomScaleLayer`` (a ``Lambda`` in Keras 2): ``xs[0] + xs[1] * scale`` (IRV2)."""
    return self._tap(name, xs[0] + xs[1] * scale)

  def zero_pad(self, x, padding, *, name):
    (t, b), (l, r) = _pads(padding)
    return self._tap(name, jnp.pad(x, ((0, 0), (t, b), (l, r), (0, 0))))

  def max_pool(self, x, size, strides=None, padding="valid", *, name):
    strides = size if strides is None else strides
    return self._tap(name, nn.max_pool(x, _pair(size), _pair(strides), padding.upper()))

  def avg_pool(self, x, size, strides=None, padding="valid", *, name):
    # Keras excludes the padding from the mean of 'same' average pools.
    strides = size if strides is None else strides
    return self._tap(name, nn.avg_pool(x, _pair(size), _pair(strides), padding.upper(),
                                       count_include_pad=False))


class LayerTable:
  """Records the layer calls of an architecture as the Keras layer table (``list[KerasLayer]``).

  Same signatures as ``FlaxLayers``; the "tensors" are channel counts (ints), enough for block
  functions that size a layer from its input (DenseNet's transitions).
  """

  def __init__(self, bn_epsilon: float = 0.0, bn_scale: bool = True):
    self.bn_scale = bn_scale
    self.layers: list[KerasLayer] = []

  @staticmethod
  def channels(x) -> int:
    return x

  def _add(self, name, kind, params=()):
    if any(l.name == name for l in self.layers):
      raise ValueError(f"LayerTable: duplicate Keras layer name {name!r}.")
    self.layers.append(KerasLayer(name, kind, tuple(params)))

  def input(self, x, name="input_layer"):
    self._add(name, "InputLayer")
    return 3 if x is None else x

  def conv(self, x, filters, kernel, *, name, strides=1, padding="valid", use_bias=True):
    names = ("kernel", "bias") if use_bias else ("kernel",)
    self._add(name, "Conv2D", [(PARAMS, name, v) for v in names])
    return filters

  def bn(self, x, *, name):
    params = [(PARAMS, name, "scale")] if self.bn_scale else []
    params += [(PARAMS, name, "bias"), (BATCH_STATS, name, "mean"), (BATCH_STATS, name, "var")]
    self._add(name, "BatchNormalization", params)
    return x

  def act(self, x, activation="relu", *, name):
    self._add(name, "Activation")
    return x

  def add(self, xs, *, name):
    self._add(name, "Add")
    return xs[0]

  def concat(self, xs, *, name):
    self._add(name, "Concatenate")
    return sum(xs)

  def scale_add(self, xs, scale, *, name):
    self._add(name, "CustomScaleLayer")
    return xs[0]

  def zero_pad(self, x, padding, *, name):
    self._add(name, "ZeroPadding2D")
    return x

  def max_pool(self, x, size, strides=None, padding="valid", *, name):
    self._add(name, "MaxPooling2D")
    return x

  def avg_pool(self, x, size, strides=None, padding="valid", *, name):
    self._add(name, "AveragePooling2D")
    return x

  def global_avg_pool(self, x, *, name="avg_pool"):
    self._add(name, "GlobalAveragePooling2D")
    return x


class KerasApplication(nn.Module):
  """Base of the flat Flax ports: the shared fields, ``__call__`` (backbone + paper head) and
  ``features``. Subclasses set ``spec_name``, ``min_size``, ``bn_epsilon``, ``bn_scale`` and
  implement ``backbone(L, x)`` as a staticmethod: Keras-style block functions over the
  vocabulary ``L``, returning the last feature map of the notop model.
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
