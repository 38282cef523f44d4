"""Matching a file's weights to a model BY ORDER, as Keras does, and loading them."""
from __future__ import annotations

import functools
import logging

import numpy as np

from flax import traverse_util
import jax
import jax.numpy as jnp
from radimagenet_jax import models
from radimagenet_jax.keras_io.h5file import _FileContents, _FileLayer, _open, _parse, _snake

log = logging.getLogger(__name__)

# The most classes a file's classifier may declare. A weight file is untrusted input: its datasets
# declare their shapes, and reading a head declared (2048, 2**31) would allocate 16 TiB. The
# backbone's shapes are checked against the model exactly; the head's class count is the one
# shape the file chooses (ImageNet-21k's 21,843 classes are the largest head in common use).
MAX_HEAD_CLASSES = 32768


@functools.lru_cache(maxsize=None)
def _init_shapes(name: str) -> dict:
  """{flax path: shape} of every variable of the model with a 1000-class head (no compile)."""
  spec = models.get_spec(name)
  x = jax.ShapeDtypeStruct((1, spec.min_size, spec.min_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda: spec.module_cls().init(
      {"params": jax.random.key(0), "dropout": jax.random.key(0)}, jnp.zeros(x.shape), train=False))
  return {p: tuple(s.shape) for p, s in traverse_util.flatten_dict(shapes).items()}


@functools.lru_cache(maxsize=None)
def _expected(name: str):
  """[(layer name, kind, [(flax path, shape)])] of the weighted layers of the notop table."""
  flat = _init_shapes(name)
  return [(l.name, l.kind, [(p, flat[p]) for p in l.params])
          for l in models.get_spec(name).keras_layers() if l.has_weights]


def feature_channels(name: str) -> int:
  """Channels of the pooled features (the input of the classifier 'predictions')."""
  return _init_shapes(models.get_spec(name).name)[("params", "predictions", "kernel")][0]


def _head_pairs(path, name: str, top) -> list:
  """[(flax path, dataset)] of 'predictions' from the file's top layers; a ValueError when the
  top is not one Dense(num_classes) layer on the pooled features."""
  if not top:
    raise ValueError(f"{path}: load_head=True but the file has no classifier (no Dense layer "
                     f"after the {name} backbone: a notop file); load it with load_head=False.")
  channels, layer = feature_channels(name), top[-1]
  shapes = layer.shapes
  if (len(top) != 1 or len(shapes) != 2 or len(shapes[0]) != 2 or shapes[0][0] != channels
      or shapes[1] != (shapes[0][1],)):
    found = ", ".join(f"{l.name} {l.shapes}" for l in top)
    raise ValueError(f"{path}: the file's top ({found}) is not one Dense layer with a bias on the "
                     f"{channels} pooled {name} features, the paper's classifier 'predictions'; "
                     f"load it with load_head=False.")
  if shapes[0][1] > MAX_HEAD_CLASSES:
    raise ValueError(f"{path}: dataset {layer.weights[0][1].name} of the classifier {layer.name!r} "
                     f"declares shape {shapes[0]}, {shapes[0][1]:,} classes; expected at most "
                     f"{MAX_HEAD_CLASSES:,} (load.MAX_HEAD_CLASSES) on the {channels} {name} "
                     f"features. Refused unread: a damaged or crafted file.")
  return [(("params", "predictions", v), d) for v, (_, d) in zip(("kernel", "bias"), layer.weights)]


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
          f"{model_name} weight file (`radimagenet-jax inspect {path}` tells what it is)."
          + contents.hint)
    if got.shapes != want:
      raise ValueError(
          f"{path}: weighted layer #{i} does not match {model_name}: the file's layer {got.name!r} "
          f"has weight shapes {got.shapes}, {model_name}'s layer {lname!r} ({kind}) expects {want}. "
          f"Wrong model name, or a file of another architecture." + contents.hint)
    pairs += [(p, d) for (p, _), (_, d) in zip(params, got.weights)]
  leftover = (rest if contents.format != "keras3" else [l for q in queues.values() for l in q])
  bad = [l for l in leftover if not _is_dense(l)]
  if bad:
    raise ValueError(
        f"{path}: after the {len(expected)} weighted layers of {model_name} the file holds more "
        f"layers that are not a Dense top, first {bad[0].name!r} with shapes {bad[0].shapes}; "
        f"{model_name}'s table expects none. It is a file of another architecture.")
  return pairs, leftover


def load_h5(path, name: str, load_head: bool | str = False) -> dict:
  """Variables ``{'params', 'batch_stats'}`` of model ``name`` from a Keras weight file.

  Reads every format listed in the module docstring. A file's top (a trailing Dense layer, e.g.
  'predictions'): ``load_head=False`` (default) loads the backbone only, and a warning says the top
  was skipped; ``True`` also loads the top as ``params['predictions']`` (a ValueError when the file
  has none, or a top that is not one Dense on the pooled features); ``'auto'``: loaded when present.
  Weights that hold NaN or Inf load too, with a warning naming the layers.
  Raises ValueError naming the file, the first layer that does not match and both shapes.
  """
  if load_head not in (False, True, "auto"):
    raise ValueError(f"load_head={load_head!r}; expected False, True or 'auto'.")
  name = models.get_spec(name).name
  with _open(path) as f:  # a missing or unreadable file is reported before the model is traced
    contents = _parse(f, path)
    pairs, top = _match(contents, name, _expected(name))
    if load_head is True or (load_head == "auto" and top):
      pairs += _head_pairs(path, name, top)
      top = []
    _check_dtypes(path, pairs)
    try:
      flat = {p: np.asarray(d[()], np.float32) for p, d in pairs}
    except (OSError, RuntimeError) as e:
      raise ValueError(f"{path}: truncated or damaged weight data ({e}).") from None
    top = ", ".join(f"{l.name} {l.shapes}" for l in top)
  if top:
    log.warning("%s: skipped the top of the file (%s); loaded the %s backbone only.", path, top,
                name)
  _warn_non_finite(path, flat)
  return traverse_util.unflatten_dict(flat)


def _check_dtypes(path, pairs) -> None:
  """Every dataset about to be read holds real numbers of at most 8 bytes: a string, compound or
  object dataset of the right shape is refused before it is read, naming it."""
  for p, d in pairs:
    if d.dtype.kind not in "fiu" or d.dtype.itemsize > 8:
      raise ValueError(f"{path}: dataset {d.name} (for {'/'.join(p[1:])}) holds {d.dtype} values "
                       f"of shape {tuple(d.shape)}; expected float32 weights.")


def _warn_non_finite(path, flat, shown: int = 5) -> None:
  """One warning line naming the layers whose weights hold NaN or Inf (the first `shown`, and the
  count): such a file loads, but every output of the model would be NaN."""
  bad = list(dict.fromkeys(p[1] for p, a in flat.items() if not np.isfinite(a).all()))
  if bad:
    more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
    log.warning("%s: %d layers hold NaN or Inf weights: %s%s; outputs computed with them will "
                "not be finite.",
                path, len(bad), ", ".join(bad[:shown]), more)
