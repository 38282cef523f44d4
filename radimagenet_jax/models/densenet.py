"""DenseNet121, the exact ``keras.applications.DenseNet121`` architecture, as a flat Flax module.

Read it side by side with keras/src/applications/densenet.py: ``dense_block``, ``conv_block`` and
``transition_block`` are Keras's, with Keras's layer names (Keras 3 spells Keras 2's
``conv2_block1_0_bn`` the same and Keras 2's ``conv1/conv`` as ``conv1_conv``). What decides
numerical parity (docs/fidelity.md): convolutions without bias; BatchNorm epsilon 1.001e-5 with gamma;
a stem padded with explicit zeros before the 'valid' 7x7 conv and 3x3 max pool; transitions halve
the channels with a 1x1 conv and downsample with a 2x2 average pool; the notop model ends with the
BatchNorm ``bn`` and the activation ``relu``.

The two stem ZeroPadding2D layers have no name in Keras, which numbers them per session; the table
uses the names a fresh Keras session gives them, ``zero_padding2d`` and ``zero_padding2d_1``.
"""
from __future__ import annotations

from radimagenet_jax.models.base import KerasApplication, register

BN_EPSILON = 1.001e-5
GROWTH_RATE = 32


def conv_block(L, x, growth_rate, name):
  """BN-ReLU-1x1 conv (4k)-BN-ReLU-3x3 conv (k), concatenated to the input."""
  x1 = L.bn(x, name=f"{name}_0_bn")
  x1 = L.act(x1, "relu", name=f"{name}_0_relu")
  x1 = L.conv(x1, 4 * growth_rate, 1, use_bias=False, name=f"{name}_1_conv")
  x1 = L.bn(x1, name=f"{name}_1_bn")
  x1 = L.act(x1, "relu", name=f"{name}_1_relu")
  x1 = L.conv(x1, growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv")
  return L.concat([x, x1], name=f"{name}_concat")


def dense_block(L, x, blocks, name):
  for i in range(blocks):
    x = conv_block(L, x, GROWTH_RATE, name=f"{name}_block{i + 1}")
  return x


def transition_block(L, x, reduction, name):
  """BN-ReLU-1x1 conv to ``reduction`` of the channels, then a 2x2 average pool."""
  x = L.bn(x, name=f"{name}_bn")
  x = L.act(x, "relu", name=f"{name}_relu")
  x = L.conv(x, int(L.channels(x) * reduction), 1, use_bias=False, name=f"{name}_conv")
  return L.avg_pool(x, 2, strides=2, name=f"{name}_pool")


@register
class DenseNet121(KerasApplication):
  """keras.applications.DenseNet121 backbone + GAP / Dropout / Dense head (see KerasApplication)."""
  spec_name = "densenet121"
  keras_application = "DenseNet121"
  min_size = 32
  default_size = 224
  feature_layer = "relu"
  bn_epsilon = BN_EPSILON
  bn_scale = True

  @staticmethod
  def backbone(L, x):
    x = L.input(x, name="input_layer")
    x = L.zero_pad(x, 3, name="zero_padding2d")
    x = L.conv(x, 64, 7, strides=2, use_bias=False, name="conv1_conv")
    x = L.bn(x, name="conv1_bn")
    x = L.act(x, "relu", name="conv1_relu")
    x = L.zero_pad(x, 1, name="zero_padding2d_1")
    x = L.max_pool(x, 3, strides=2, name="pool1")
    x = dense_block(L, x, 6, name="conv2")
    x = transition_block(L, x, 0.5, name="pool2")
    x = dense_block(L, x, 12, name="conv3")
    x = transition_block(L, x, 0.5, name="pool3")
    x = dense_block(L, x, 24, name="conv4")
    x = transition_block(L, x, 0.5, name="pool4")
    x = dense_block(L, x, 16, name="conv5")
    x = L.bn(x, name="bn")
    return L.act(x, "relu", name="relu")

