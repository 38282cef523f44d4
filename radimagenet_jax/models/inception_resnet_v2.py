"""Inception-ResNet-v2, the exact ``keras.applications.InceptionResNetV2``, as a flat Flax module.

Read it side by side with keras/src/applications/inception_resnet_v2.py: ``conv2d_bn`` and
``inception_resnet_block`` are Keras's, written over the layer vocabulary ``L`` of
``base.KerasApplication``. What decides numerical parity (docs/fidelity.md): convolutions without bias
except the ``block*_conv`` up-projections (which have a bias and no BatchNorm); BatchNorm epsilon
1e-3 with ``scale=False``; no zero padding layers; 'same' average pools exclude the padding; the
residual branch is scaled by 0.17 (block35), 0.1 (block17) and 0.2 (block8), and the last block,
``block8_10``, has scale 1.0 and no activation.

The layer table is sorted into Keras's ``model.layers`` order by ``keras_graph.KerasGraph``.

Names follow this file's Keras convention ``conv2d_bn(name=n)`` -> Conv2D ``n``, BatchNormalization
``n_bn``, Activation ``n_ac``. Keras's stable names are kept (``mixed_5b``, ``mixed_6a``,
``mixed_7a``, ``block35_1_mixed``, ``block35_1_conv``, ``block35_1_ac``, ``conv_7b``,
``conv_7b_bn``, ``conv_7b_ac``). The auto-numbered ones get stable names: the stem units are
``conv_1a``, ``conv_2a``, ``conv_2b``, ``conv_3b``, ``conv_4a`` and the pools ``maxpool_3a``,
``maxpool_5a`` (TF-slim's names, from which Keras's ``conv_7b`` comes); a branch unit is
``<block>_branch_<b>_<k>`` (``b``: ``0``/``1``/``2``/``pool`` as Keras's variables ``branch_0`` ...
``branch_pool``, ``k``: 1-based position in the branch), a branch pool ``<block>_branch_pool``;
the residual ``CustomScaleLayer`` of block ``block35_1`` is ``block35_1``, the name of the
``Lambda`` layer it replaced (Keras 2, e.g. the official RadImageNet files).
"""
from __future__ import annotations

from radimagenet_jax.models.inception_v3 import BN_EPSILON
from radimagenet_jax.models.base import register
from radimagenet_jax.models.keras_graph import KerasGraphApplication

BLOCK_SCALES = {"block35": 0.17, "block17": 0.1, "block8": 0.2}


def conv2d_bn(L, x, filters, kernel_size, *, name, strides=1, padding="same", activation="relu",
              use_bias=False):
  """Conv2D -> BatchNormalization (scale=False, only without a conv bias) -> activation."""
  x = L.conv(x, filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
             name=name)
  if not use_bias:
    x = L.bn(x, name=f"{name}_bn")
  if activation is not None:
    x = L.act(x, activation, name=f"{name}_ac")
  return x


def inception_resnet_block(L, x, scale, block_type, block_idx, activation="relu"):
  """x + scale * residual(x), then the activation (Keras's ``inception_resnet_block``)."""
  name = f"{block_type}_{block_idx}"
  b = f"{name}_branch"
  if block_type == "block35":
    branch_0 = conv2d_bn(L, x, 32, 1, name=f"{b}_0_1")
    branch_1 = conv2d_bn(L, x, 32, 1, name=f"{b}_1_1")
    branch_1 = conv2d_bn(L, branch_1, 32, 3, name=f"{b}_1_2")
    branch_2 = conv2d_bn(L, x, 32, 1, name=f"{b}_2_1")
    branch_2 = conv2d_bn(L, branch_2, 48, 3, name=f"{b}_2_2")
    branch_2 = conv2d_bn(L, branch_2, 64, 3, name=f"{b}_2_3")
    branches = [branch_0, branch_1, branch_2]
  elif block_type == "block17":
    branch_0 = conv2d_bn(L, x, 192, 1, name=f"{b}_0_1")
    branch_1 = conv2d_bn(L, x, 128, 1, name=f"{b}_1_1")
    branch_1 = conv2d_bn(L, branch_1, 160, (1, 7), name=f"{b}_1_2")
    branch_1 = conv2d_bn(L, branch_1, 192, (7, 1), name=f"{b}_1_3")
    branches = [branch_0, branch_1]
  elif block_type == "block8":
    branch_0 = conv2d_bn(L, x, 192, 1, name=f"{b}_0_1")
    branch_1 = conv2d_bn(L, x, 192, 1, name=f"{b}_1_1")
    branch_1 = conv2d_bn(L, branch_1, 224, (1, 3), name=f"{b}_1_2")
    branch_1 = conv2d_bn(L, branch_1, 256, (3, 1), name=f"{b}_1_3")
    branches = [branch_0, branch_1]
  else:
    raise ValueError(f"inception_resnet_block: unknown block_type {block_type!r}; expected "
                     f"'block35', 'block17' or 'block8'.")
  mixed = L.concat(branches, name=f"{name}_mixed")
  up = conv2d_bn(L, mixed, L.channels(x), 1, activation=None, use_bias=True, name=f"{name}_conv")
  x = L.scale_add([x, up], scale, name=name)
  if activation is not None:
    x = L.act(x, activation, name=f"{name}_ac")
  return x


def stem(L, x):
  """299 -> 35x35, the same layers as InceptionV3's stem."""
  x = conv2d_bn(L, x, 32, 3, strides=2, padding="valid", name="conv_1a")
  x = conv2d_bn(L, x, 32, 3, padding="valid", name="conv_2a")
  x = conv2d_bn(L, x, 64, 3, name="conv_2b")
  x = L.max_pool(x, 3, strides=2, name="maxpool_3a")
  x = conv2d_bn(L, x, 80, 1, padding="valid", name="conv_3b")
  x = conv2d_bn(L, x, 192, 3, padding="valid", name="conv_4a")
  return L.max_pool(x, 3, strides=2, name="maxpool_5a")


def mixed_5b(L, x):
  """Inception-A block, 35x35x192 -> 35x35x320."""
  b = "mixed_5b_branch"
  branch_0 = conv2d_bn(L, x, 96, 1, name=f"{b}_0_1")
  branch_1 = conv2d_bn(L, x, 48, 1, name=f"{b}_1_1")
  branch_1 = conv2d_bn(L, branch_1, 64, 5, name=f"{b}_1_2")
  branch_2 = conv2d_bn(L, x, 64, 1, name=f"{b}_2_1")
  branch_2 = conv2d_bn(L, branch_2, 96, 3, name=f"{b}_2_2")
  branch_2 = conv2d_bn(L, branch_2, 96, 3, name=f"{b}_2_3")
  # Keras's 'same' average pool divides by the number of real pixels (FlaxLayers does too).
  branch_pool = L.avg_pool(x, 3, strides=1, padding="same", name=f"{b}_pool")
  branch_pool = conv2d_bn(L, branch_pool, 64, 1, name=f"{b}_pool_1")
  return L.concat([branch_0, branch_1, branch_2, branch_pool], name="mixed_5b")


def mixed_6a(L, x):
  """Reduction-A, 35x35 -> 17x17."""
  b = "mixed_6a_branch"
  branch_0 = conv2d_bn(L, x, 384, 3, strides=2, padding="valid", name=f"{b}_0_1")
  branch_1 = conv2d_bn(L, x, 256, 1, name=f"{b}_1_1")
  branch_1 = conv2d_bn(L, branch_1, 256, 3, name=f"{b}_1_2")
  branch_1 = conv2d_bn(L, branch_1, 384, 3, strides=2, padding="valid", name=f"{b}_1_3")
  branch_pool = L.max_pool(x, 3, strides=2, padding="valid", name=f"{b}_pool")
  return L.concat([branch_0, branch_1, branch_pool], name="mixed_6a")


def mixed_7a(L, x):
  """Reduction-B, 17x17 -> 8x8."""
  b = "mixed_7a_branch"
  branch_0 = conv2d_bn(L, x, 256, 1, name=f"{b}_0_1")
  branch_0 = conv2d_bn(L, branch_0, 384, 3, strides=2, padding="valid", name=f"{b}_0_2")
  branch_1 = conv2d_bn(L, x, 256, 1, name=f"{b}_1_1")
  branch_1 = conv2d_bn(L, branch_1, 288, 3, strides=2, padding="valid", name=f"{b}_1_2")
  branch_2 = conv2d_bn(L, x, 256, 1, name=f"{b}_2_1")
  branch_2 = conv2d_bn(L, branch_2, 288, 3, name=f"{b}_2_2")
  branch_2 = conv2d_bn(L, branch_2, 320, 3, strides=2, padding="valid", name=f"{b}_2_3")
  branch_pool = L.max_pool(x, 3, strides=2, padding="valid", name=f"{b}_pool")
  return L.concat([branch_0, branch_1, branch_2, branch_pool], name="mixed_7a")


@register
class InceptionResNetV2(KerasGraphApplication):
  """keras.applications.InceptionResNetV2 backbone + GAP / Dropout / Dense head."""
  spec_name = "inception_resnet_v2"
  keras_application = "InceptionResNetV2"
  min_size = 75
  default_size = 299
  feature_layer = "conv_7b_ac"
  bn_epsilon = BN_EPSILON
  bn_scale = False

  @staticmethod
  def backbone(L, x):
    x = L.input(x, name="input_layer")
    x = stem(L, x)
    x = mixed_5b(L, x)
    for block_idx in range(1, 11):
      x = inception_resnet_block(L, x, BLOCK_SCALES["block35"], "block35", block_idx)
    x = mixed_6a(L, x)
    for block_idx in range(1, 21):
      x = inception_resnet_block(L, x, BLOCK_SCALES["block17"], "block17", block_idx)
    x = mixed_7a(L, x)
    for block_idx in range(1, 10):
      x = inception_resnet_block(L, x, BLOCK_SCALES["block8"], "block8", block_idx)
    x = inception_resnet_block(L, x, 1.0, "block8", 10, activation=None)
    return conv2d_bn(L, x, 1536, 1, name="conv_7b")

