"""Flax Linen ports of the four keras.applications CNNs used by RadImageNet."""
from radimagenet_jax.models.common import KerasLayer, tap
from radimagenet_jax.models.registry import (ModelSpec, create, get_spec, init_variables,
                                             keras_layers, merge_variables, names, register)
from radimagenet_jax.models.capture import capture

__all__ = ["KerasLayer", "ModelSpec", "capture", "create", "get_spec", "init_variables",
           "keras_layers", "merge_variables", "names", "register", "tap"]
