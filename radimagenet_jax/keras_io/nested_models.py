"""Models stored as one layer of a legacy (.h5) Keras file's model: a fine-tuning model written
around a keras.applications backbone (``keras.Model(inp, Dense(2)(base(inp)))``, a Sequential)
keeps all the backbone's weights in ONE layer group, trainable ones first. These helpers put them
back into the backbone's layers, in its layer order (from the file's `model_config`)."""
from __future__ import annotations

import json


_MODEL_CLASSES = ("Functional", "Model", "Sequential")


def layer_orders(f) -> dict[str, list[str]]:
  """{layer name: its layers' names in order} for each model used as a layer of a full-model
  file's model, read from the file's `model_config` (Keras's JSON of the model). A config that is
  not JSON gives none: the weights may still load (in the order they are stored)."""
  if "model_config" not in f.attrs:
    return {}
  try:
    config = json.loads(f.attrs["model_config"])   # str or bytes
  except (ValueError, TypeError):
    return {}
  orders = {}
  for layer in _config_layers(config):
    if layer.get("class_name") in _MODEL_CLASSES:
      orders[_config_name(layer)] = [_config_name(c) for c in _config_layers(layer)]
  return orders


def _config_layers(entry) -> list[dict]:
  """The layer entries of a model's JSON config entry ({'class_name', 'config': {'layers': [...]}};
  Keras 2.0-2.2 wrote a Sequential's 'config' as the list itself)."""
  config = entry.get("config") if isinstance(entry, dict) else None
  layers = config.get("layers") if isinstance(config, dict) else config
  return [c for c in layers if isinstance(c, dict)] if isinstance(layers, list) else []


def _config_name(entry: dict) -> str:
  config = entry.get("config")
  return str(config.get("name", entry.get("name", "")) if isinstance(config, dict)
             else entry.get("name", ""))


def group_by_layer(weight_names) -> dict[str, list[str]]:
  """{layer: its weight names} from a layer group's weight names, in order of first appearance:
  'conv1_conv/kernel:0' belongs to layer 'conv1_conv' (DenseNet121's Keras 2 'conv1/conv' too).

  A model used as a layer stores all its layers' weights in one group, trainable ones first
  (Keras's ``trainable_weights + non_trainable_weights``); within a layer that keeps Keras's order
  (a BatchNormalization's gamma and beta, then its moving statistics)."""
  groups: dict[str, list[str]] = {}
  for w in weight_names:
    groups.setdefault(w.rpartition("/")[0], []).append(w)
  return groups
