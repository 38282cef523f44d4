"""models.flops: FLOPs counted in the traced program equal a count over the Keras model's layers
(Keras 3 as the oracle) and closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radimagenet_jax.models import fast_ops, flops
from tests import keras_oracle


def _keras_flops(name, size, num_classes):
  """2 x the multiply-adds of every Conv2D of keras.applications' model, read off its layers'
  output and kernel shapes, plus the paper's Dense head on the pooled features."""
  km = keras_oracle.keras_model(name, size)
  macs = 0
  for layer in km.layers:
    if type(layer).__name__ == "Conv2D":
      kh, kw, cin, _ = layer.kernel.shape
      macs += int(np.prod(layer.output.shape[1:])) * kh * kw * cin
  return 2 * (macs + km.output.shape[-1] * num_classes)


@pytest.mark.parametrize("name,size", [("resnet50", 64), ("inception_v3", 75)])
def test_forward_flops_equal_the_keras_layers_count(name, size):
  assert flops.forward_flops(name, size, 3) == _keras_flops(name, size, 3)


def test_fast_ops_do_not_change_the_count():
  """1x1 convolutions as matrix products (XLA:CPU) count the same multiply-adds."""
  x = jnp.ones((2, 9, 9, 16))
  k = jnp.ones((1, 1, 16, 8))
  dn = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  counts = []
  for on in (False, True):
    with fast_ops.forced(on):
      counts.append(flops.count_flops(jax.make_jaxpr(
          lambda x, k: fast_ops.conv_general_dilated(x, k, (2, 2), "VALID",
                                                     dimension_numbers=dn))(x, k)))
  assert counts == [2 * 2 * 5 * 5 * 8 * 16] * 2


def test_cond_counts_its_costliest_branch_and_groups_their_channels():
  a = jnp.ones((4, 6))
  b = jnp.ones((6, 5))
  f = lambda p, a, b: jax.lax.cond(p, lambda: a @ b, lambda: (a @ b) @ jnp.ones((5, 5)))
  assert flops.count_flops(jax.make_jaxpr(f)(True, a, b)) == 2 * (4 * 6 * 5 + 4 * 5 * 5)
  # a grouped convolution: each output sees its group's input channels only
  x, k = jnp.ones((1, 7, 7, 8)), jnp.ones((3, 3, 2, 12))   # 4 groups of 2 -> 3 channels
  g = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", feature_group_count=4,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert flops.count_flops(jax.make_jaxpr(g)(x, k)) == 2 * 7 * 7 * 12 * 3 * 3 * 2
