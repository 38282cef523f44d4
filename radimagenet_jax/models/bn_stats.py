"""BatchNorm statistics report: per BatchNormalization layer, the ranges of its vectors and flags.

A quick health check of a weight file or checkpoint (``radimagenet-jax inspect``): moving statistics
that were never updated (a backbone saved before training, or loaded into the wrong layers), that
exploded, or that hold NaN/Inf make inference-mode outputs meaningless while every shape matches.

Flags (thresholds are the module constants):
- ``uninitialised``: moving mean all 0 and moving variance all 1, the initial values: the layer
  never saw data (fine for a random init, suspicious in a pretrained file);
- ``extreme variance``: moving variance max > ``VAR_MAX`` (1e4) or min < ``VAR_MIN`` (1e-8, which
  also catches zero and negative variances). Keras's epsilon (1e-3 / 1.001e-5) keeps a tiny variance
  finite, but such a channel scales its input by up to ~300x; a variance above 1e4 means the inputs
  of that layer reach ~100 in magnitude, far outside what a BatchNorm layer normally sees;
- ``non-finite``: NaN or +-Inf in gamma, beta, moving mean or moving variance.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

import radimagenet_jax as rij

VAR_MAX = 1e4
VAR_MIN = 1e-8
FLAGS = ("uninitialised", "extreme variance", "non-finite")


def _get(variables, collection: str, layer: str, var: str):
  node = variables.get(collection, {})
  node = node.get(layer) if hasattr(node, "get") else None
  return None if node is None or not hasattr(node, "get") else node.get(var)


def _range(values) -> tuple[float, float]:
  return float(np.min(values)), float(np.max(values))


def batchnorm_report(variables: Mapping[str, Any], model_name: str) -> list[dict]:
  """One dict per BatchNormalization layer of ``model_name``, in Keras ``model.layers`` order.

  Keys: ``index`` (position in ``keras_layers(model_name)``), ``name``, ``channels``, ``mean_min``,
  ``mean_max``, ``var_min``, ``var_max``, ``gamma_min``/``gamma_max`` (None for the models without
  gamma, InceptionV3 and IRV2), ``beta_min``, ``beta_max`` and ``flags`` (a list, see the module
  docstring). Raises a ValueError naming the first BatchNorm variable that ``variables`` lack.
  """
  rows = []
  for index, layer in enumerate(rij.models.keras_layers(model_name)):
    if layer.kind != "BatchNormalization":
      continue
    arrays = {}
    for collection, _, var in layer.params:
      value = _get(variables, collection, layer.name, var)
      if value is None:
        raise ValueError(f"variables lack {collection}/{layer.name}/{var}, a BatchNorm variable of "
                         f"{model_name}; expected {model_name} variables.")
      arrays[var] = np.asarray(value, np.float64).reshape(-1)
    mean, var = arrays["mean"], arrays["var"]
    row = {"index": index, "name": layer.name, "channels": int(mean.size)}
    row["mean_min"], row["mean_max"] = _range(mean)
    row["var_min"], row["var_max"] = _range(var)
    row["gamma_min"], row["gamma_max"] = _range(arrays["scale"]) if "scale" in arrays else (None,
                                                                                           None)
    row["beta_min"], row["beta_max"] = _range(arrays["bias"])
    flags = []
    if not np.any(mean) and np.all(var == 1.0):
      flags.append("uninitialised")
    known = var[~np.isnan(var)]
    if known.size and (known.max() > VAR_MAX or known.min() < VAR_MIN):
      flags.append("extreme variance")
    if not all(np.all(np.isfinite(a)) for a in arrays.values()):
      flags.append("non-finite")
    row["flags"] = flags
    rows.append(row)
  return rows


def _span(lo, hi) -> str:
  return "-" if lo is None else f"[{lo:.3g}, {hi:.3g}]"


def format_batchnorm_report(rows: list[dict], only_flagged: bool = False) -> str:
  """A text table of ``batchnorm_report`` rows (only the flagged ones with ``only_flagged``) and a
  summary line counting the layers per flag."""
  shown = [r for r in rows if r["flags"]] if only_flagged else list(rows)
  header = ("#", "layer", "ch", "moving mean", "moving variance", "gamma", "beta", "flags")
  table = [header] + [
      (str(r["index"]), r["name"], str(r["channels"]), _span(r["mean_min"], r["mean_max"]),
       _span(r["var_min"], r["var_max"]), _span(r["gamma_min"], r["gamma_max"]),
       _span(r["beta_min"], r["beta_max"]), ", ".join(r["flags"])) for r in shown]
  widths = [max(len(line[i]) for line in table) for i in range(len(header))]
  lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
  flagged = sum(1 for r in rows if r["flags"])
  counts = ", ".join(f"{flag}: {sum(flag in r['flags'] for r in rows)}" for flag in FLAGS)
  summary = f"{len(rows)} BatchNorm layers, {flagged} flagged ({counts})"
  if only_flagged and not shown:
    return summary
  return "\n".join(lines + [summary])
