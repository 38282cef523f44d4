"""What the `gradcam` command checks before it writes anything, and how it picks preprocessing.

* ``check_config``: the settings (target, score, threshold, comparison, order, sizes, modes).
* ``check_workdir``: the workdir is new, empty, or a previous gradcam run (its own outputs are
  replaced). A workdir holding another command's run (``checkpoints/``, a ``config.json`` that is
  not a gradcam config, a pretraining ``summary.json``) is refused, naming what was found and
  suggesting ``<workdir>/gradcam``: gradcam never writes into another command's run.
* ``model_plans``: per model, the architecture, that its weights exist, the Grad-CAM layer, the
  preprocessing (``model_X.preprocess``, else ``config.preprocess``; '' or 'auto' means what the
  weights record, ``keras_io.weights_info``: a convert output, a training checkpoint, a Keras
  file named RadImageNet-* or a keras.applications ImageNet file; 'radimagenet' for random init).
* ``check_source``: the split has records with an image, a label and the mask feature.
"""
from __future__ import annotations

import json
import os

from radimagenet_jax import checkpoints, keras_io, models
from radimagenet_jax.data.preprocess import MODES
from radimagenet_jax.explain import regions
from radimagenet_jax.train import config as config_lib

TARGETS = ("predicted", "label")
SCORES = ("logit", "softmax")
AUTO = ("", "auto")
# What a gradcam run writes; a workdir holding any of them but no gradcam config.json is not ours.
OUTPUTS = ("config.json", "summary.json", "per_image.csv", "panel.png", "overlays")
OTHER_RUNS = ("checkpoints", "metrics.jsonl", "run.json", "sweep.json", "results.csv", "tb")


def _choice(name, value, valid):
  if value not in valid:
    raise ValueError(f"config.{name}={value!r}; expected one of {', '.join(map(str, valid))}.")


def check_config(config) -> None:
  """One-line ValueErrors for settings that would fail (or mislead) only after hours of work."""
  _choice("target", config.target, TARGETS)
  _choice("score", config.score, SCORES)
  _choice("comparison", config.comparison, regions.COMPARISONS)
  _choice("order", config.order, regions.ORDERS)
  _choice("preprocess", config.preprocess, MODES + AUTO)
  if not 0 <= int(config.threshold) <= 255:
    raise ValueError(f"config.threshold={config.threshold}; expected 0..255 (the map scaled to "
                     f"0-255, the paper's 180).")
  for key in ("batch_size", "image_size"):
    if int(config[key]) < 1:
      raise ValueError(f"config.{key}={config[key]}; expected a positive integer.")
  for key in ("max_images", "num_overlays", "panel_rows", "num_classes"):
    if int(config[key]) < 0:
      raise ValueError(f"config.{key}={config[key]}; expected 0 or more.")


def _is_gradcam_config(path) -> bool:
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(data, dict) and {"model_a", "mask_key", "threshold"} <= set(data)


def check_workdir(workdir) -> None:
  """Raises FileExistsError when ``workdir`` holds another command's run (see module docstring)."""
  workdir = os.path.abspath(os.fspath(workdir))
  config_lib.refuse_shared_folder(workdir)  # never the filesystem root or the home itself
  if not os.path.exists(workdir):
    return
  if not os.path.isdir(workdir):
    raise FileExistsError(f"--workdir={workdir} is a file; expected a new or empty folder, or "
                          f"a previous gradcam run.")
  config = os.path.join(workdir, "config.json")
  found = [n for n in OTHER_RUNS if os.path.exists(os.path.join(workdir, n))]
  if os.path.exists(config) and not _is_gradcam_config(config):
    found.append("config.json of another command")
  elif not os.path.exists(config):
    found += [n for n in OUTPUTS if os.path.exists(os.path.join(workdir, n))]
  if found:
    raise FileExistsError(
        f"--workdir={workdir} holds another command's run ({', '.join(found)}); gradcam never "
        f"writes into it. Use a new folder, e.g. --workdir={os.path.join(workdir, 'gradcam')}.")


def _preprocess(config, m, info) -> tuple[str, str]:
  """(mode, why) of one model: its own setting, the config's, or the weights'."""
  if m.preprocess not in AUTO:
    _choice(f"{m.label or 'model'}.preprocess", m.preprocess, MODES)
    return m.preprocess, "config (model)"
  if config.preprocess not in AUTO:
    return config.preprocess, "config"
  if info is None:
    return checkpoints.DEFAULT_PREPROCESS, "default (random init)"
  if info.get("preprocess"):
    return info["preprocess"], f"weights ({info.get('preprocess_origin', 'metadata')})"
  return checkpoints.DEFAULT_PREPROCESS, "default (the weights do not record it)"


def _check_layer(name: str, layer: str) -> None:
  layers = [l.name for l in models.keras_layers(name)]
  if layer not in layers or layer in ("avg_pool", layers[0]):
    spec = models.get_spec(name)
    raise ValueError(f"Grad-CAM layer {layer!r} is not a feature-map layer of {name}; expected a "
                     f"Keras layer name such as {spec.feature_layer!r} (the paper's), "
                     f"rij.models.keras_layers({name!r}) lists them.")


def model_plans(config) -> list[dict]:
  """Per configured model: label, name, weights, layer, preprocess and where that came from,
  the weights' metadata (None for random init). Nothing is loaded but metadata."""
  plans = []
  for key in ("model_a", "model_b"):
    m = config[key]
    if not m.name:
      continue
    name = models.get_spec(m.name).name
    weights = os.path.expanduser(m.weights) if m.weights else ""
    if weights and not os.path.exists(weights):
      raise FileNotFoundError(f"config.{key}.weights={m.weights}: no such file or directory; "
                              f"expected an Orbax checkpoint directory or a Keras .h5 file.")
    info = keras_io.weights_info(weights, name) if weights else None
    if info and info.get("model_name") not in (None, name):
      raise ValueError(f"config.{key}.weights={m.weights} holds {info['model_name']} weights, "
                       f"but config.{key}.name is {name}.")
    if m.layer:
      _check_layer(name, m.layer)
    spec = models.get_spec(name)
    if config.image_size < spec.min_size:
      raise ValueError(f"config.image_size={config.image_size} is below {name}'s minimum input "
                       f"size {spec.min_size}.")
    mode, origin = _preprocess(config, m, info)
    plans.append({"key": key, "label": m.label or key, "name": name, "weights": weights,
                  "seed": m.seed, "layer": m.layer or spec.feature_layer, "preprocess": mode,
                  "preprocess_origin": origin, "info": info})
  if not plans:
    raise ValueError("config.model_a.name is empty: nothing to explain.")
  if len(plans) == 2 and plans[0]["label"] == plans[1]["label"]:
    plans[1]["label"] += "_2"
  return plans


def check_source(source, config) -> None:
  """The split is not empty and its records hold an image, a label and the mask feature."""
  where = f"{config.dataset}[{config.split}]"
  if len(source) == 0:
    raise ValueError(f"{where} has no records; expected a split with lesion masks.")
  rec = source[0]
  for key in ("image", "label", config.mask_key):
    if key not in rec:
      raise ValueError(f"{where} records have no {key!r} feature (keys: {', '.join(sorted(rec))})"
                     f"{'; set --config.mask_key' if key == config.mask_key else ''}.")
