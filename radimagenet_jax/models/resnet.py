"""ResNet50 (v1), the exact ``keras.applications.ResNet50`` architecture, as a flat Flax module.

Read it side by side with keras/src/applications/resnet.py: ``block1`` is Keras's
``residual_block_v1`` and ``stack1`` its ``stack_residual_blocks_v1``; layer names are Keras's
(``conv2_block1_1_conv``). What decides numerical parity (docs/fidelity.md): every conv has a bias;
BatchNorm epsilon 1.001e-5 with gamma; the stride-2 of a stage sits on the first 1x1 conv
(``_1_conv``) and on the shortcut (``_0_conv``), not on the 3x3 (v1, not v1.5); the stem pads with
zeros explicitly and then runs the 7x7 conv and the 3x3 max pool with 'valid' padding.
"""
from __future__ import annotations

from radimagenet_jax.models.base import KerasApplication, register

BN_EPSILON = 1.001e-5


def block1(L, x, filters, kernel_size=3, stride=1, conv_shortcut=True, name=""):
  """A bottleneck residual block (Keras ``residual_block_v1``).

  The layers are called in the order keras ``model.layers`` lists them: the main path's first two
  convolutions, then the shortcut conv next to the last main conv, then their two BatchNorms. The
  computation is the same in any order; the order is the layer table's (and the .h5 files').
  """
  x1 = L.conv(x, filters, 1, strides=stride, name=f"{name}_1_conv")
  x1 = L.bn(x1, name=f"{name}_1_bn")
  x1 = L.act(x1, "relu", name=f"{name}_1_relu")
  x1 = L.conv(x1, filters, kernel_size, padding="same", name=f"{name}_2_conv")
  x1 = L.bn(x1, name=f"{name}_2_bn")
  x1 = L.act(x1, "relu", name=f"{name}_2_relu")
  if conv_shortcut:
    shortcut = L.conv(x, 4 * filters, 1, strides=stride, name=f"{name}_0_conv")
    x1 = L.conv(x1, 4 * filters, 1, name=f"{name}_3_conv")
    shortcut = L.bn(shortcut, name=f"{name}_0_bn")
  else:
    shortcut = x
    x1 = L.conv(x1, 4 * filters, 1, name=f"{name}_3_conv")
  x1 = L.bn(x1, name=f"{name}_3_bn")
  x = L.add([shortcut, x1], name=f"{name}_add")
  return L.act(x, "relu", name=f"{name}_out")


def stack1(L, x, filters, blocks, stride1=2, name=""):
  """A stage of ``blocks`` residual blocks; only the first one downsamples (Keras ``stack_residual_blocks_v1``)."""
  x = block1(L, x, filters, stride=stride1, name=f"{name}_block1")
  for i in range(2, blocks + 1):
    x = block1(L, x, filters, conv_shortcut=False, name=f"{name}_block{i}")
  return x


@register
class ResNet50(KerasApplication):
  """keras.applications.ResNet50 backbone + GAP / Dropout / Dense head (see KerasApplication)."""
  spec_name = "resnet50"
  keras_application = "ResNet50"
  min_size = 32
  default_size = 224
  feature_layer = "conv5_block3_out"
  bn_epsilon = BN_EPSILON
  bn_scale = True

  @staticmethod
  def backbone(L, x):
    x = L.input(x, name="input_layer")
    x = L.zero_pad(x, 3, name="conv1_pad")
    x = L.conv(x, 64, 7, strides=2, name="conv1_conv")
    x = L.bn(x, name="conv1_bn")
    x = L.act(x, "relu", name="conv1_relu")
    x = L.zero_pad(x, 1, name="pool1_pad")
    x = L.max_pool(x, 3, strides=2, name="pool1_pool")
    x = stack1(L, x, 64, 3, stride1=1, name="conv2")
    x = stack1(L, x, 128, 4, name="conv3")
    x = stack1(L, x, 256, 6, name="conv4")
    return stack1(L, x, 512, 3, name="conv5")

