"""`radimagenet-jax inspect`: what a Keras weight file holds and which model it matches."""
from __future__ import annotations


import numpy as np


from radimagenet_jax import models
from radimagenet_jax.keras_io.h5file import _open, _parse
from radimagenet_jax.keras_io.load import _expected, _is_dense, _match


def matching_models(path) -> list[str]:
  """The registered models whose ordered weight shapes the file matches."""
  with _open(path) as f:
    c = _parse(f, path)
    return [name for name in models.names() if _matches(c, name)]


def _matches(contents, name: str) -> bool:
  try:
    _match(contents, name, _expected(name))
    return True
  except ValueError:
    return False


def describe(path) -> str:
  """A human-readable summary of a Keras weight file: format, Keras version and backend, layers,
  parameter count, which of the four models it matches, whether it has a top."""
  with _open(path) as f:
    c = _parse(f, path)
    n_params = sum(int(np.prod(s)) for l in c.layers for s in l.shapes)
    matches, top = [], []
    for name in models.names():
      try:
        _, top = _match(c, name, _expected(name))
        matches.append(name)
      except ValueError:
        continue
    tops = top if matches else [l for l in c.layers[-1:] if _is_dense(l)]
    tops = ", ".join(f"{l.name} {l.shapes}" for l in tops)  # read while the file is open
  fmt = {"keras2-model": "Keras 2 full model (.h5, model.save)",
         "keras2-weights": "Keras 2 weights only (.h5, save_weights)",
         "keras3-model": "Keras 3 legacy full model (.h5, model.save)",
         "keras3-weights": "Keras 3 legacy weights only (.h5)",
         "keras3": "Keras 3 weights (.weights.h5)"}[c.format]
  lines = [f"file:            {c.path}",
           f"format:          {fmt}",
           f"keras version:   {c.attrs.get('keras_version', 'not recorded')}",
           f"backend:         {c.attrs.get('backend', 'not recorded')}",
           f"layers:          {c.num_layers} ({len(c.layers)} with weights"
           + "".join(f"; a model nested as layer {n!r}" for n in c.nested) + ")",
           f"parameters:      {n_params:,} (BatchNorm statistics included)",
           f"matches model:   {', '.join(matches) if matches else 'none of ' + ', '.join(models.names())}",
           f"top (Dense):     {tops or 'none (notop file)'}"]
  return "\n".join(lines)
