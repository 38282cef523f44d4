"""Keras HDF5 weight files <-> Flax variables, with h5py only (Keras is never imported).

Formats read (all as written by `model.save` / `model.save_weights`):
  keras2-model     Keras 2 full model (`model_weights` group, `:0` suffixes): the official
                   `RadImageNet-*_notop.h5` files.
  keras2-weights   Keras 2 weights only (`save_weights('x.h5')`): the same groups at the root;
                   Keras's own ImageNet files (`*_notop.h5`) are of this kind.
  keras3-model / keras3-weights
                   the legacy layouts as Keras 3 writes them (no `:0`).
  keras3           Keras 3 `.weights.h5`: `layers/<class name>[_N]/vars/0..n`, a `name` attribute
                   on each `vars` group; also read from inside a Keras 3 `.keras` archive.

Weights are matched to the model BY ORDER, as Keras does (FIDELITY.md): the legacy layouts list the
layers in `model.layers` order and the i-th layer that carries weights goes to the i-th weighted
layer of `rij.models.keras_layers(name)`; in `.weights.h5` the group key is the class name plus a
per-class counter (`conv2d_57` is the 58th Conv2D), so the k-th Conv2D of the table takes the k-th
`conv2d*` group. Layer names stored in the file are never used for matching: InceptionV3 and IRV2
names are auto-generated and differ between sessions. Every shape is checked.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import re
import shutil
import tempfile
import zipfile

import h5py
import numpy as np

log = logging.getLogger(__name__)

# Keras variable names of each (layer kind, Flax variable), in Keras weight order.
_KERAS_VAR_NAMES = {"kernel": "kernel", "bias": "bias", "scale": "gamma", "mean": "moving_mean",
                    "var": "moving_variance"}
_BN_VAR_NAMES = {"bias": "beta"}  # BatchNormalization's Flax 'bias' is Keras's 'beta'
_WEIGHTS_H5_ROOTS = ("layers", "_layer_checkpoint_dependencies")  # Keras 3 / Keras 2.13 "v3"


@dataclasses.dataclass
class _FileLayer:
  """One layer of a weight file that carries weights."""
  name: str                  # the layer name stored in the file (informative only)
  weights: list              # [(weight name, h5py.Dataset)] in Keras weight order
  cls: str | None = None     # snake-case class ('conv2d') for .weights.h5, else None

  @property
  def shapes(self):
    return [tuple(d.shape) for _, d in self.weights]


@dataclasses.dataclass
class _FileContents:
  path: str
  format: str
  attrs: dict                # keras_version, backend (strings), when present
  num_layers: int            # all layers the file lists, weightless ones included
  layers: list               # [_FileLayer] with weights; legacy: model order, keras3: per class


def _str(v):
  return v.decode("utf8") if isinstance(v, bytes) else str(v)


def _snake(name: str) -> str:
  # Same as keras.src.utils.naming.to_snake_case, which names the .weights.h5 groups.
  name = re.sub(r"\W+", "", name)
  name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
  return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _read_attr_list(group, name):
  """A list-valued attribute, also when Keras split it in chunks (`layer_names0`, `1`, ...)
  because it exceeded the 64 KB HDF5 object-header limit (IRV2's 780 layer names do)."""
  if name in group.attrs:
    values = list(group.attrs[name])
  else:
    values, i = [], 0
    while f"{name}{i}" in group.attrs:
      values += list(group.attrs[f"{name}{i}"])
      i += 1
  return [_str(v) for v in values]


def _write_attr_list(group, name, values):
  data = np.asarray([v.encode("utf8") for v in values]) if values else np.zeros((0,), "float64")
  chunks = 1
  while any(c.nbytes > 64512 for c in np.array_split(data, chunks)):
    chunks += 1
  if chunks == 1:
    group.attrs[name] = data
  else:
    for i, c in enumerate(np.array_split(data, chunks)):
      group.attrs[f"{name}{i}"] = c


def _open(path):
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file; expected a Keras .h5 or .weights.h5 file.")
  if zipfile.is_zipfile(path):  # a Keras 3 `.keras` archive: its weights are model.weights.h5
    with zipfile.ZipFile(path) as z:
      if "model.weights.h5" not in z.namelist():
        raise ValueError(f"{path}: a zip archive without model.weights.h5; expected a Keras .h5, "
                         f".weights.h5 or .keras file.")
      return h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
  try:
    return h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"{path}: not a readable HDF5 file ({e}); the file is truncated, corrupt or "
                     f"not a Keras weight file (.h5 / .weights.h5).") from None


def _parse(f, path) -> _FileContents:
  """Lists the weighted layers of an open file in the order Keras matches them."""
  try:
    return _parse_unchecked(f, path)
  except (KeyError, OSError, RuntimeError) as e:
    raise ValueError(f"{path}: damaged or truncated HDF5 weight file ({e}).") from None


def _parse_unchecked(f, path) -> _FileContents:
  for root in _WEIGHTS_H5_ROOTS:
    if root in f and isinstance(f[root], h5py.Group) and "layer_names" not in f.attrs:
      return _parse_weights_h5(f, f[root], path)
  group, full = f, False
  if "layer_names" not in f.attrs and "model_weights" in f:
    group, full = f["model_weights"], True
  names = _read_attr_list(group, "layer_names")
  if not names:
    raise ValueError(f"{path}: HDF5 file without Keras weights (no 'layer_names' attribute, no "
                     f"'model_weights' or 'layers' group); expected a Keras .h5 / .weights.h5 file.")
  attrs = {k: _str(group.attrs[k]) for k in ("keras_version", "backend") if k in group.attrs}
  for k in ("keras_version", "backend"):
    if k not in attrs and k in f.attrs:
      attrs[k] = _str(f.attrs[k])
  layers, keras2 = [], False
  for name in names:
    wnames = _read_attr_list(group[name], "weight_names")
    if wnames:
      keras2 |= any(w.endswith(":0") for w in wnames)
      layers.append(_FileLayer(name, [(w, group[name][w]) for w in wnames]))
  version = attrs.get("keras_version", "")
  major = "2" if keras2 or (version[:1] in "12" and version) else "3"
  fmt = f"keras{major}-{'model' if full else 'weights'}"
  return _FileContents(os.fspath(path), fmt, attrs, len(names), layers)


def _parse_weights_h5(f, root, path) -> _FileContents:
  def order(key):  # 'conv2d' -> 0, 'conv2d_12' -> 12: the per-class counter Keras used
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
    return m.group(1), int(m.group(2) or 0)
  entries = []
  for key in root:
    vars_ = root[key]["vars"] if "vars" in root[key] else {}
    if len(vars_):
      cls, idx = order(key)
      entries.append((cls, idx, key, vars_))
  layers = []
  for cls, idx, key, vars_ in sorted(entries, key=lambda e: (e[0], e[1])):
    name = _str(vars_.attrs.get("name", key))
    layers.append(_FileLayer(name, [(f"{key}/vars/{i}", vars_[str(i)]) for i in range(len(vars_))],
                             cls))
  attrs = {k: _str(f.attrs[k]) for k in ("keras_version", "backend") if k in f.attrs}
  return _FileContents(os.fspath(path), "keras3", attrs, len(root), layers)


@functools.lru_cache(maxsize=None)
def _expected(name: str):
  """[(layer name, kind, [(flax path, shape)])] of the weighted layers of the notop table."""
  import jax
  import jax.numpy as jnp
  from flax import traverse_util
  from radimagenet_jax import models
  spec = models.get_spec(name)
  x = jax.ShapeDtypeStruct((1, spec.min_size, spec.min_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda: spec.module_cls().init(
      {"params": jax.random.key(0), "dropout": jax.random.key(0)}, jnp.zeros(x.shape), train=False))
  flat = traverse_util.flatten_dict(shapes)
  return [(l.name, l.kind, [(p, tuple(flat[p].shape)) for p in l.params])
          for l in spec.keras_layers() if l.has_weights]


def _is_dense(layer: _FileLayer) -> bool:
  if layer.cls is not None:
    return layer.cls == "dense"
  s = layer.shapes
  return len(s) in (1, 2) and len(s[0]) == 2 and (len(s) == 1 or s[1] == (s[0][1],))


def _match(contents: _FileContents, model_name: str, expected):
  """Pairs the file's weighted layers with ``expected``. Returns ([(flax path, dataset)], the
  skipped top layers). Raises ValueError at the first layer whose weights do not fit."""
  path = contents.path
  if contents.format == "keras3":
    queues = {}
    for layer in contents.layers:
      queues.setdefault(layer.cls, []).append(layer)
    pick = lambda kind: queues.get(_snake(kind), []).pop(0) if queues.get(_snake(kind)) else None
  else:
    rest = list(contents.layers)
    pick = lambda kind: rest.pop(0) if rest else None
  pairs = []
  for i, (lname, kind, params) in enumerate(expected):
    got = pick(kind)
    want = [s for _, s in params]
    if got is None:
      keras3 = contents.format == "keras3"
      n = sum(1 for l in contents.layers if not keras3 or l.cls == _snake(kind))
      raise ValueError(
          f"{path}: the file ends before weighted layer #{i} {lname!r} ({kind}, shapes {want}) of "
          f"{model_name}; it holds {n} weighted {kind + ' ' if keras3 else ''}layers. It is not a "
          f"{model_name} weight file (`radimagenet-jax inspect {path}` tells what it is).")
    if got.shapes != want:
      raise ValueError(
          f"{path}: weighted layer #{i} does not match {model_name}: the file's layer {got.name!r} "
          f"has weight shapes {got.shapes}, {model_name}'s layer {lname!r} ({kind}) expects {want}. "
          f"Wrong model name, or a file of another architecture.")
    pairs += [(p, d) for (p, _), (_, d) in zip(params, got.weights)]
  leftover = (rest if contents.format != "keras3" else [l for q in queues.values() for l in q])
  bad = [l for l in leftover if not _is_dense(l)]
  if bad:
    raise ValueError(
        f"{path}: after the {len(expected)} weighted layers of {model_name} the file holds more "
        f"layers that are not a Dense top, first {bad[0].name!r} with shapes {bad[0].shapes}; "
        f"{model_name}'s table expects none. It is a file of another architecture.")
  return pairs, leftover


def load_h5(path, name: str) -> dict:
  """Backbone variables ``{'params', 'batch_stats'}`` of model ``name`` from a Keras weight file.

  Reads every format listed in the module docstring. A file with a top (a trailing Dense layer,
  e.g. 'predictions') loads its backbone; the top is skipped and a warning says so.
  Raises ValueError naming the file, the first layer that does not match and both shapes.
  """
  from flax import traverse_util
  from radimagenet_jax import models
  name = models.get_spec(name).name
  expected = _expected(name)
  with _open(path) as f:
    contents = _parse(f, path)
    pairs, top = _match(contents, name, expected)
    try:
      flat = {p: np.asarray(d[()], np.float32) for p, d in pairs}
    except (OSError, RuntimeError) as e:
      raise ValueError(f"{path}: truncated or damaged weight data ({e}).") from None
    top = ", ".join(f"{l.name} {l.shapes}" for l in top)
  if top:
    log.warning("%s: skipped the top of the file (%s); loaded the %s backbone only.", path, top,
                name)
  return traverse_util.unflatten_dict(flat)


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
  from radimagenet_jax import models
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


def describe(path) -> str:
  """A human-readable summary of a Keras weight file: format, Keras version and backend, layers,
  parameter count, which of the four models it matches, whether it has a top."""
  from radimagenet_jax import models
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
           f"layers:          {c.num_layers} ({len(c.layers)} with weights)",
           f"parameters:      {n_params:,} (BatchNorm statistics included)",
           f"matches model:   {', '.join(matches) if matches else 'none of ' + ', '.join(models.names())}",
           f"top (Dense):     {tops or 'none (notop file)'}"]
  return "\n".join(lines)


def convert(h5_path, name: str, workdir) -> str:
  """Loads a Keras weight file and writes it as an Orbax checkpoint in ``workdir`` that
  ``rij.models.create(name, weights=workdir)`` and the training commands read.

  Written to a temporary folder next to ``workdir`` and renamed at the end: nothing is left behind
  when anything fails. Refuses to overwrite an existing non-empty ``workdir``. Returns the path.
  """
  from radimagenet_jax import models
  from radimagenet_jax.train import checkpoint
  spec = models.get_spec(name)
  workdir = os.path.abspath(os.fspath(workdir))
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise FileExistsError(f"{workdir}: already exists and is not an empty folder; convert never "
                          f"overwrites, choose a new --workdir.")
  variables = load_h5(h5_path, spec.name)
  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}.tmp", dir=parent)
  try:
    target = os.path.join(tmp, "ckpt")
    checkpoint.save_variables(target, variables, model_name=spec.name, num_classes=0,
                              extra_metadata={"source": os.path.abspath(os.fspath(h5_path)),
                                              "converted_by": "radimagenet_jax.keras_io.convert",
                                              "head": "none (backbone only)"})
    if os.path.isdir(workdir):
      os.rmdir(workdir)  # empty, checked above
    os.rename(target, workdir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  log.info("Converted %s (%s) to %s.", h5_path, spec.name, workdir)
  return workdir
