"""Writing Flax variables as a Keras weight file (Keras 3 .weights.h5 or the legacy .h5)."""
from __future__ import annotations

import os

import h5py
import numpy as np


from radimagenet_jax import models
from radimagenet_jax.keras_io.h5file import _BN_VAR_NAMES, _KERAS_VAR_NAMES, _snake, _write_attr_list


def _keras_var_name(kind: str, var: str) -> str:
  if kind == "BatchNormalization":
    return _BN_VAR_NAMES.get(var, _KERAS_VAR_NAMES.get(var, var))
  return _KERAS_VAR_NAMES.get(var, var)


def save_h5(variables, name: str, path, format: str = "weights.h5", include_head: bool = False):
  """Writes Flax variables as a Keras weight file.

  format='weights.h5': the Keras 3 `.weights.h5` layout (the path must end in `.weights.h5`, as
  Keras requires); format='legacy': the Keras `save_weights` `.h5` layout, which Keras 2 and Keras 3
  both read. The file fits ``keras.applications.<Model>(include_top=False, pooling='avg')``
  (`model.load_weights(path)`). include_head=True appends the 'predictions' Dense layer, for a Keras
  model built as that backbone + Dropout + Dense(num_classes).
  """
  spec = models.get_spec(name)
  if format not in ("weights.h5", "legacy"):
    raise ValueError(f"save_h5: format={format!r}; valid: 'weights.h5', 'legacy'.")
  path = os.fspath(path)
  if format == "weights.h5" and not path.endswith(".weights.h5"):
    raise ValueError(f"{path}: a Keras 3 weights file must end in '.weights.h5' (Keras refuses "
                     f"other names); use format='legacy' for a '.h5' file.")
  table = [(l.name, l.kind, l.params) for l in spec.keras_layers()]
  if include_head:
    table.append(("predictions", "Dense", (("params", "predictions", "kernel"),
                                           ("params", "predictions", "bias"))))
  if not any(kind == "InputLayer" for _, kind, _ in table):
    table.insert(0, ("input_layer", "InputLayer", ()))

  def value(p):
    try:
      return np.asarray(variables[p[0]][p[1]][p[2]], np.float32)
    except KeyError:
      raise ValueError(f"save_h5: variables lack {'/'.join(p)}, needed by {spec.name}'s Keras "
                       f"layer table; pass the variables of a {spec.name} model.") from None

  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with h5py.File(tmp, "w") as f:
      if format == "weights.h5":
        root, used = f.create_group("layers"), {}
        for lname, kind, params in table:
          cls = _snake(kind)
          key = cls if cls not in used else f"{cls}_{used[cls] + 1}"
          used[cls] = used[cls] + 1 if cls in used else 0
          vars_ = root.create_group(key).create_group("vars")
          vars_.attrs["name"] = lname
          for i, p in enumerate(params):
            vars_.create_dataset(str(i), data=value(p))
        f.create_group("vars").attrs["name"] = spec.name
      else:
        _write_attr_list(f, "layer_names", [n for n, _, _ in table])
        f.attrs["backend"] = b"jax"
        f.attrs["keras_version"] = b"3 (radimagenet_jax)"
        for lname, kind, params in sorted(table, key=lambda t: t[0]):
          g = f.create_group(lname)
          wnames = [f"{lname}/{_keras_var_name(kind, p[2])}" for p in params]
          _write_attr_list(g, "weight_names", wnames)
          for w, p in zip(wnames, params):
            g.create_dataset(w, data=value(p))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
