"""ONNX export of the four models (``rij.export.to_onnx``) and the ``export`` command.

``onnx`` is an optional dependency (``pip install 'radimagenet-jax[export]'``): importing this
package does not import it; the export functions do, and say how to install it when it is missing.

- `onnx_export`: `to_onnx`, the ONNX file of a model with or without the paper's head;
- `onnx_graph`: `OnnxLayers`, the models' Keras layer vocabulary emitted as ONNX nodes;
- `command`: the `radimagenet-jax export` command.
"""
from radimagenet_jax.export.onnx_export import (DEFAULT_LAYOUT, DEFAULT_OPSET, LAYOUTS,
                                                PREPROCESS_FORMULAS, build_onnx, save_atomic,
                                                summary, to_onnx)

__all__ = ["DEFAULT_LAYOUT", "DEFAULT_OPSET", "LAYOUTS", "PREPROCESS_FORMULAS", "build_onnx",
           "save_atomic", "summary", "to_onnx"]
