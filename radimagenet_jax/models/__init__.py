"""Flax Linen ports of the four keras.applications CNNs used by RadImageNet.

- `layers`: the Keras layer vocabulary (`FlaxLayers` runs it, `LayerTable` records the Keras table),
  `tap` capture points; `batchnorm`: Keras's BatchNormalization; `base`: `KerasApplication`, the
  shared base class with the paper's head; `keras_graph`: Keras's layer order for branching nets;
- `resnet`, `densenet`, `inception_v3`, `inception_resnet_v2`: one file per architecture;
- `registry`: `create`, `get_spec`, `keras_layers`, `init_variables`; `capture`: any layer's output;
  `bn_stats`: BatchNorm statistics report of a set of variables; `flops`: forward FLOPs per image;
  `random_init`: random initial variables drawn on the host;
- XLA:CPU formulations, the same values: `fast_ops` (convolutions, concatenations), `pooling`,
  `conv_input_grad` (strided convolutions' input gradients).
"""
from radimagenet_jax.models.capture import capture
from radimagenet_jax.models.layers import KerasLayer, tap
from radimagenet_jax.models.registry import (ModelSpec, create, get_spec, init_variables,
                                             keras_layers, merge_variables, names, register,
                                             variable_shapes, variables_only)

__all__ = ["KerasLayer", "ModelSpec", "capture", "create", "get_spec", "init_variables",
           "keras_layers", "merge_variables", "names", "register", "tap", "variable_shapes",
           "variables_only"]
