"""Keras 3 (JAX backend) as the numerical oracle for the Flax ports. Test-only.

``keras_model(name, ...)`` builds the keras.applications model with random weights and randomised
BatchNorm statistics (so inference mode is not the identity); ``variables_from_keras(model, name)``
copies its weights into Flax variables by walking the Keras layer table in model.layers order,
exactly as Keras matches weights to layers: by order, never by auto-generated name.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
from flax import traverse_util

import radimagenet_jax as rij

KERAS_APPS = {"resnet50": "ResNet50", "densenet121": "DenseNet121",
              "inception_v3": "InceptionV3", "inception_resnet_v2": "InceptionResNetV2"}


def keras_model(name: str, size: int, pooling="avg", include_top=False, seed=0, classes=1000):
  import keras
  keras.utils.set_random_seed(seed)
  ctor = getattr(keras.applications, KERAS_APPS[name])
  model = ctor(include_top=include_top, weights=None, input_shape=(size, size, 3),
               pooling=pooling, classes=classes)
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if type(layer).__name__ == "BatchNormalization":
      w = layer.get_weights()
      n = w[-1].shape
      new = []
      if layer.scale:
        new.append(rng.uniform(0.5, 1.5, n).astype("float32"))
      new += [rng.normal(0, 0.2, n).astype("float32"),      # beta
              rng.normal(0, 0.2, n).astype("float32"),      # moving_mean
              rng.uniform(0.5, 1.5, n).astype("float32")]   # moving_variance
      layer.set_weights(new)
    elif getattr(layer, "use_bias", False) and type(layer).__name__ == "Conv2D":
      # Keras initialises biases to zero; random ones make a wrongly mapped bias visible.
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape).astype("float32")])
  return model


def keras_weight_lists(model) -> list[tuple[str, list[np.ndarray]]]:
  """(layer name, weights) of every Keras layer that carries weights, in model.layers order."""
  return [(l.name, [np.asarray(w) for w in l.get_weights()]) for l in model.layers if l.weights]


def variables_from_keras(model, name: str):
  """Flax variables (params, batch_stats) of the backbone, copied from a keras model by order."""
  table = [l for l in rij.models.keras_layers(name) if l.has_weights]
  weighted = keras_weight_lists(model)
  weighted = [w for w in weighted if w[0] not in ("predictions",)]
  assert len(table) == len(weighted), (len(table), len(weighted))
  flat = {}
  for entry, (kname, weights) in zip(table, weighted):
    assert len(entry.params) == len(weights), (entry.name, kname, len(entry.params), len(weights))
    for path, w in zip(entry.params, weights):
      flat[path] = w
  return traverse_util.unflatten_dict(flat)
