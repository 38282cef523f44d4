"""The Keras layer vocabulary and its two interpreters, shared by the four Flax ports.

An architecture is written ONCE as Keras-style block functions over a layer vocabulary ``L``
(``L.conv``, ``L.bn``, ``L.act``, ...). ``FlaxLayers`` executes it inside the model's compact scope;
``LayerTable`` records the same calls as the Keras layer table (``keras_layers``). The table therefore
cannot drift from the model, and the parity tests check it against Keras. (The ONNX exporter is a third
interpreter of the same vocabulary.) Block functions must call the layers in keras ``model.layers``
order (topological order, which is not always creation order, e.g. ResNet's ``_0_conv`` comes after
``_2_relu``).

Every Keras layer output, weighted or not, goes through ``tap(module, name, x)``: it records the
value in the ``intermediates`` collection (only when that collection is mutable) and adds the
matching ``perturbations`` variable when one is passed in. That gives any layer's activation
(``capture``) and the gradient with respect to it (Grad-CAM) without changing the forward pass.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from radimagenet_jax.models.batchnorm import BATCH_STATS, KerasBatchNorm, bn_uses_running_average
from radimagenet_jax.models import pooling
from radimagenet_jax.models.fast_ops import concatenate, conv_general_dilated, stored

# Collections a model uses. Param paths are (collection, keras_layer_name, variable_name).
PARAMS = "params"


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


# Every convolution and Dense kernel's initialiser (Flax's default, declared: models.random_init
# draws the same law on the host without compiling model.init).
KERNEL_INIT = nn.initializers.lecun_normal()


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
                use_bias=use_bias, dtype=self.dtype, conv_general_dilated=conv_general_dilated,
                kernel_init=KERNEL_INIT, bias_init=nn.initializers.zeros, name=name)(x)
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
    return self._tap(name, stored(y))

  def concat(self, xs, *, name):
    return self._tap(name, concatenate(xs))

  def scale_add(self, xs, scale, *, name):
    """Keras 3 ``CustomScaleLayer`` (a ``Lambda`` in Keras 2): ``xs[0] + xs[1] * scale`` (IRV2)."""
    return self._tap(name, stored(xs[0] + xs[1] * scale))

  def zero_pad(self, x, padding, *, name):
    (t, b), (l, r) = _pads(padding)
    return self._tap(name, jnp.pad(x, ((0, 0), (t, b), (l, r), (0, 0))))

  def max_pool(self, x, size, strides=None, padding="valid", *, name):
    strides = size if strides is None else strides
    return self._tap(name, pooling.max_pool(x, _pair(size), _pair(strides), padding))

  def avg_pool(self, x, size, strides=None, padding="valid", *, name):
    strides = size if strides is None else strides
    return self._tap(name, pooling.avg_pool(x, _pair(size), _pair(strides), padding))


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
