"""InceptionV3, the exact ``keras.applications.InceptionV3`` architecture, as a flat Flax module.

Read it side by side with keras/src/applications/inception_v3.py: ``conv2d_bn`` and the
``mixed*`` blocks below are Keras's, written over the layer vocabulary ``L`` of
``base.KerasApplication`` (executed by ``layers.FlaxLayers``). What decides numerical parity
(docs/fidelity.md): convolutions without bias, BatchNorm epsilon 1e-3 with ``scale=False`` (no gamma),
no zero padding layers, and 3x3 'same' average pools that exclude the padding from the mean.

Layer order. Keras lists a functional model's layers in its own topological order (by longest
distance to the output, ties by a depth-first search from the output), which interleaves the
branches of every Inception block (``model.layers`` runs conv, conv, bn, bn, ... across branches).
Keras matches weight files to layers by that order. Rather than calling the layers in that order
by hand, ``KerasGraph`` records the block functions as a graph and sorts it exactly as Keras does
(``keras_graph.keras_order``, a port of keras/src/ops/function.py ``map_graph``); IRV2 uses it too.

Names. Keras auto-numbers this model's layers (``conv2d_57``, ``batch_normalization_57``,
``activation_57``, shifting with whatever the session built before), so they get stable names:
each Conv2D-BN-ReLU unit has a base name ``<block>_<branch>_<k>`` (block: ``stem`` or Keras's
``mixed0``..``mixed10``; branch: the variable name in the Keras source, e.g. ``branch7x7dbl``;
k: the unit's 1-based position in the branch, ``2a``/``2b`` for the two halves of a split) and its
layers are ``<base>_conv``, ``<base>_bn`` and ``<base>`` (the ReLU) -- Keras's own
``conv2d_bn(name=...)`` convention. Pools are ``<block>_branch_pool`` (``stem_pool_3a`` and
``stem_pool_5a`` in the stem, after TF-slim's MaxPool_3a / MaxPool_5a). Keras's stable names are
kept: ``mixed0``..``mixed10``, ``mixed9_0``, ``mixed9_1``.
"""
from __future__ import annotations

from radimagenet_jax.models.base import register
from radimagenet_jax.models.keras_graph import KerasGraphApplication

BN_EPSILON = 1e-3


# ---------------------------------------------------------------------------------------------
# InceptionV3
# ---------------------------------------------------------------------------------------------


def conv2d_bn(L, x, filters, num_row, num_col, *, name, padding="same", strides=1):
  """Conv2D (no bias) -> BatchNormalization (scale=False) -> ReLU (Keras's ``conv2d_bn``)."""
  x = L.conv(x, filters, (num_row, num_col), strides=strides, padding=padding, use_bias=False,
             name=f"{name}_conv")
  x = L.bn(x, name=f"{name}_bn")
  return L.act(x, "relu", name=name)


def avg_pool_3x3(L, x, *, name):
  return L.avg_pool(x, 3, strides=1, padding="same", name=name)


def max_pool_3x3(L, x, *, name):
  return L.max_pool(x, 3, strides=2, padding="valid", name=name)


def mixed_35x35(L, x, pool_filters, *, name):
  """mixed0-2: 1x1, 5x5, double 3x3 and average-pool branches on the 35x35 grid."""
  branch1x1 = conv2d_bn(L, x, 64, 1, 1, name=f"{name}_branch1x1_1")
  branch5x5 = conv2d_bn(L, x, 48, 1, 1, name=f"{name}_branch5x5_1")
  branch5x5 = conv2d_bn(L, branch5x5, 64, 5, 5, name=f"{name}_branch5x5_2")
  branch3x3dbl = conv2d_bn(L, x, 64, 1, 1, name=f"{name}_branch3x3dbl_1")
  branch3x3dbl = conv2d_bn(L, branch3x3dbl, 96, 3, 3, name=f"{name}_branch3x3dbl_2")
  branch3x3dbl = conv2d_bn(L, branch3x3dbl, 96, 3, 3, name=f"{name}_branch3x3dbl_3")
  branch_pool = avg_pool_3x3(L, x, name=f"{name}_branch_pool")
  branch_pool = conv2d_bn(L, branch_pool, pool_filters, 1, 1, name=f"{name}_branch_pool_1")
  return L.concat([branch1x1, branch5x5, branch3x3dbl, branch_pool], name=name)


def mixed3(L, x):
  """Grid reduction 35x35 -> 17x17."""
  branch3x3 = conv2d_bn(L, x, 384, 3, 3, strides=2, padding="valid", name="mixed3_branch3x3_1")
  branch3x3dbl = conv2d_bn(L, x, 64, 1, 1, name="mixed3_branch3x3dbl_1")
  branch3x3dbl = conv2d_bn(L, branch3x3dbl, 96, 3, 3, name="mixed3_branch3x3dbl_2")
  branch3x3dbl = conv2d_bn(L, branch3x3dbl, 96, 3, 3, strides=2, padding="valid",
                           name="mixed3_branch3x3dbl_3")
  branch_pool = max_pool_3x3(L, x, name="mixed3_branch_pool")
  return L.concat([branch3x3, branch3x3dbl, branch_pool], name="mixed3")


def mixed_17x17(L, x, c7, *, name):
  """mixed4-7: factorised 7x7 branches on the 17x17 grid (c7: width of the inner 7x7 convs)."""
  branch1x1 = conv2d_bn(L, x, 192, 1, 1, name=f"{name}_branch1x1_1")
  branch7x7 = conv2d_bn(L, x, c7, 1, 1, name=f"{name}_branch7x7_1")
  branch7x7 = conv2d_bn(L, branch7x7, c7, 1, 7, name=f"{name}_branch7x7_2")
  branch7x7 = conv2d_bn(L, branch7x7, 192, 7, 1, name=f"{name}_branch7x7_3")
  branch7x7dbl = conv2d_bn(L, x, c7, 1, 1, name=f"{name}_branch7x7dbl_1")
  for k, (filters, rows, cols) in enumerate([(c7, 7, 1), (c7, 1, 7), (c7, 7, 1), (192, 1, 7)], 2):
    branch7x7dbl = conv2d_bn(L, branch7x7dbl, filters, rows, cols, name=f"{name}_branch7x7dbl_{k}")
  branch_pool = avg_pool_3x3(L, x, name=f"{name}_branch_pool")
  branch_pool = conv2d_bn(L, branch_pool, 192, 1, 1, name=f"{name}_branch_pool_1")
  return L.concat([branch1x1, branch7x7, branch7x7dbl, branch_pool], name=name)


def mixed8(L, x):
  """Grid reduction 17x17 -> 8x8."""
  branch3x3 = conv2d_bn(L, x, 192, 1, 1, name="mixed8_branch3x3_1")
  branch3x3 = conv2d_bn(L, branch3x3, 320, 3, 3, strides=2, padding="valid",
                        name="mixed8_branch3x3_2")
  branch7x7x3 = conv2d_bn(L, x, 192, 1, 1, name="mixed8_branch7x7x3_1")
  branch7x7x3 = conv2d_bn(L, branch7x7x3, 192, 1, 7, name="mixed8_branch7x7x3_2")
  branch7x7x3 = conv2d_bn(L, branch7x7x3, 192, 7, 1, name="mixed8_branch7x7x3_3")
  branch7x7x3 = conv2d_bn(L, branch7x7x3, 192, 3, 3, strides=2, padding="valid",
                          name="mixed8_branch7x7x3_4")
  branch_pool = max_pool_3x3(L, x, name="mixed8_branch_pool")
  return L.concat([branch3x3, branch7x7x3, branch_pool], name="mixed8")


def mixed_8x8(L, x, i):
  """mixed9 (i=0) and mixed10 (i=1): the expanded 8x8 blocks with split 1x3 / 3x1 convs."""
  name = f"mixed{9 + i}"
  branch1x1 = conv2d_bn(L, x, 320, 1, 1, name=f"{name}_branch1x1_1")
  branch3x3 = conv2d_bn(L, x, 384, 1, 1, name=f"{name}_branch3x3_1")
  branch3x3_1 = conv2d_bn(L, branch3x3, 384, 1, 3, name=f"{name}_branch3x3_2a")
  branch3x3_2 = conv2d_bn(L, branch3x3, 384, 3, 1, name=f"{name}_branch3x3_2b")
  branch3x3 = L.concat([branch3x3_1, branch3x3_2], name=f"mixed9_{i}")  # Keras's own name
  branch3x3dbl = conv2d_bn(L, x, 448, 1, 1, name=f"{name}_branch3x3dbl_1")
  branch3x3dbl = conv2d_bn(L, branch3x3dbl, 384, 3, 3, name=f"{name}_branch3x3dbl_2")
  branch3x3dbl_1 = conv2d_bn(L, branch3x3dbl, 384, 1, 3, name=f"{name}_branch3x3dbl_3a")
  branch3x3dbl_2 = conv2d_bn(L, branch3x3dbl, 384, 3, 1, name=f"{name}_branch3x3dbl_3b")
  branch3x3dbl = L.concat([branch3x3dbl_1, branch3x3dbl_2], name=f"{name}_branch3x3dbl")
  branch_pool = avg_pool_3x3(L, x, name=f"{name}_branch_pool")
  branch_pool = conv2d_bn(L, branch_pool, 192, 1, 1, name=f"{name}_branch_pool_1")
  return L.concat([branch1x1, branch3x3, branch3x3dbl, branch_pool], name=name)


def stem(L, x):
  """The stem, 299 -> 35x35 (TF-slim's Conv2d_1a_3x3 ... MaxPool_5a_3x3)."""
  x = conv2d_bn(L, x, 32, 3, 3, strides=2, padding="valid", name="stem_1a")
  x = conv2d_bn(L, x, 32, 3, 3, padding="valid", name="stem_2a")
  x = conv2d_bn(L, x, 64, 3, 3, name="stem_2b")
  x = max_pool_3x3(L, x, name="stem_pool_3a")
  x = conv2d_bn(L, x, 80, 1, 1, padding="valid", name="stem_3b")
  x = conv2d_bn(L, x, 192, 3, 3, padding="valid", name="stem_4a")
  return max_pool_3x3(L, x, name="stem_pool_5a")


@register
class InceptionV3(KerasGraphApplication):
  """keras.applications.InceptionV3 backbone + GAP / Dropout / Dense head (see KerasApplication)."""
  spec_name = "inception_v3"
  keras_application = "InceptionV3"
  min_size = 75
  default_size = 299
  feature_layer = "mixed10"
  bn_epsilon = BN_EPSILON
  bn_scale = False

  @staticmethod
  def backbone(L, x):
    x = L.input(x, name="input_layer")
    x = stem(L, x)
    x = mixed_35x35(L, x, 32, name="mixed0")
    x = mixed_35x35(L, x, 64, name="mixed1")
    x = mixed_35x35(L, x, 64, name="mixed2")
    x = mixed3(L, x)
    x = mixed_17x17(L, x, 128, name="mixed4")
    x = mixed_17x17(L, x, 160, name="mixed5")
    x = mixed_17x17(L, x, 160, name="mixed6")
    x = mixed_17x17(L, x, 192, name="mixed7")
    x = mixed8(L, x)
    x = mixed_8x8(L, x, 0)
    return mixed_8x8(L, x, 1)

