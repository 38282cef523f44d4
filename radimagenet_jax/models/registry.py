"""Model registry: name -> architecture class, and ``create`` (build + init + load weights).

Each architecture class declares its metadata once as class attributes (``base.KerasApplication``)
and registers itself with the ``@register`` class decorator; ``ModelSpec`` is a read-only view of
those attributes. ``create`` builds the module, initialises variables (``init_variables``, the one
model-init helper) and optionally loads weights: the ONE lazy import of the package's lower layers
sits there (Keras .h5 files through ``keras_io``, which itself builds on ``models``).
Orbax checkpoints come through ``radimagenet_jax.checkpoints``, a lower layer.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from radimagenet_jax._collections import variables_only  # also re-exported by models
from radimagenet_jax.models import random_init
from radimagenet_jax.models.base import _REGISTRY, register  # noqa: F401  (re-exported)
from radimagenet_jax.models.layers import KerasLayer


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the registry knows about an architecture: its class, whose attributes are the metadata."""
  module_cls: type  # a base.KerasApplication subclass

  name = property(lambda self: self.module_cls.spec_name)
  min_size = property(lambda self: self.module_cls.min_size)
  default_size = property(lambda self: self.module_cls.default_size)
  feature_layer = property(lambda self: self.module_cls.feature_layer)
  keras_application = property(lambda self: self.module_cls.keras_application)

  def keras_layers(self) -> Sequence[KerasLayer]:
    return self.module_cls.layer_table()


_ALIASES = {"irv2": "inception_resnet_v2", "inceptionv3": "inception_v3",
            "inceptionresnetv2": "inception_resnet_v2"}


def _ensure_loaded():  # pylint: disable=unused-import
  # Importing the architecture modules registers them (they import this module, so not at the top).
  from radimagenet_jax.models import (densenet, inception_resnet_v2, inception_v3,  # noqa: F401
                                      resnet)


def names() -> list[str]:
  _ensure_loaded()
  return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
  _ensure_loaded()
  key = _ALIASES.get(name.lower().replace("-", "_"), name.lower().replace("-", "_"))
  if key not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}; valid choices: {', '.join(sorted(_REGISTRY))}.")
  return ModelSpec(_REGISTRY[key])


def keras_layers(name: str) -> list[KerasLayer]:
  """The ordered Keras layer table of ``keras.applications.<Model>(include_top=False,
  pooling='avg')``: one KerasLayer per ``model.layers`` entry, weightless layers included."""
  return list(get_spec(name).keras_layers())


@functools.lru_cache(maxsize=32)
def _jitted_init(model, size: int):
  # One compiled init per (module config, input size): repeated create() calls (tests, sweeps over
  # freeze modes, Grad-CAM on two models) do not recompile.
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  return jax.jit(lambda r: model.init({"params": r, "dropout": r}, x, train=False))


def variable_shapes(model, input_size: int | None = None) -> dict[str, Any]:
  """{'params', 'batch_stats'} as ShapeDtypeStructs (traced only, nothing computed)."""
  size = input_size or type(model).min_size
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return variables_only(jax.eval_shape(
      lambda r, x: model.init({"params": r, "dropout": r}, x, train=False), jax.random.key(0), x))


def init_variables(model, rng=None, input_size: int | None = None, law: str = "lecun_normal"):
  """Random init (params + batch_stats): drawn on the host from the shapes (``random_init``, no
  compile) when every variable is of a declared kind, else the jitted ``model.init``. ``law``:
  the kernels' law, ``random_init.LAWS`` ('glorot_uniform': Keras's layer default)."""
  size = input_size or type(model).min_size
  rng = jax.random.key(0) if rng is None else rng
  if not isinstance(rng, jax.core.Tracer):
    drawn = random_init.draw(variable_shapes(model, size), rng, law)
    if drawn is not None:
      return jax.tree.map(jnp.asarray, drawn)
  if law != random_init.LAWS[0]:
    raise ValueError(f"init law {law!r} needs variables of the declared kinds (kernel, bias, scale, "
                     f"mean, var); {type(model).__name__} has others: use law='{random_init.LAWS[0]}'")
  return variables_only(_jitted_init(model, size)(rng))


def create(name: str, num_classes: int = 1000, weights: str | os.PathLike | None = None, *,
           load_head: bool | None = None, dropout_rate: float = 0.5, dtype=jnp.float32, rng=None,
           **module_kwargs):
  """Returns ``(model, variables)``.

  weights: None (random init) | a Keras .h5 / .weights.h5 file | an Orbax checkpoint directory
  written by this project (train workdir or `convert` output) | a name: 'imagenet' (Keras's
  official notop file, downloaded once and cached) or 'radimagenet' (the official file, read from
  the cache; `keras_io.hub`). A path that is spelled like a name is given as './imagenet'.
  num_classes: the classifier's classes; 0 gives a features-only model (``model.apply`` returns
  the pooled features (B, C), no head parameters, no head loaded).
  load_head: None (default): a Keras file's classifier is skipped (a warning says so; the head
  starts random), a checkpoint's classifier is loaded when it has one. True: the weights'
  classifier is loaded, an error when they have none or its class count is not ``num_classes``.
  False: the backbone only, from either.
  """
  spec = get_spec(name)
  if isinstance(weights, str) and weights in ("imagenet", "radimagenet"):
    from radimagenet_jax import keras_io  # before the model is built: a missing file fails fast
    weights = keras_io.hub.weights_path(spec.name, weights)
  if num_classes == 0 and load_head:
    raise ValueError(f"load_head=True with num_classes=0: a features-only {spec.name} has no "
                     f"classifier to load; pass the classifier's num_classes, or load_head=None.")
  model = spec.module_cls(num_classes=num_classes, dropout_rate=dropout_rate, dtype=dtype,
                          **module_kwargs)
  variables = init_variables(model, rng)
  if weights is None:
    if load_head:
      raise ValueError(f"load_head=True without weights: there is no classifier to load; pass "
                       f"weights=FILE_OR_DIR.")
    return model, variables
  path = os.fspath(weights)
  if os.path.isdir(path):
    from radimagenet_jax import checkpoints  # a lower layer; lazy only to keep imports light
    loaded = checkpoints.load_variables(path, spec.name)
  elif os.path.isfile(path):
    from radimagenet_jax import keras_io  # the documented lazy import (keras_io builds on models)
    loaded = (keras_io.load_h5(path, spec.name, load_head=True) if load_head
              else keras_io.load_h5(path, spec.name))
  else:
    raise FileNotFoundError(f"weights={path!r}: no such file or directory; expected a Keras .h5 "
                            f"file or an Orbax checkpoint directory.")
  return model, merge_variables(variables, _choose_head(loaded, num_classes, load_head, path),
                                source=path)


def _choose_head(loaded, num_classes: int, load_head: bool | None, source: str):
  """``loaded`` with or without its classifier 'predictions', as ``create``'s load_head says."""
  head = loaded.get("params", {}).get("predictions")
  if head is None:
    if load_head:
      raise ValueError(f"{source}: load_head=True but the weights have no classifier "
                       f"'predictions' (backbone only); use load_head=None or False.")
    return loaded
  if load_head is False or num_classes == 0:
    return {k: {n: v for n, v in c.items() if n != "predictions"} for k, c in loaded.items()}
  found = int(head["kernel"].shape[-1])
  if found != num_classes:
    raise ValueError(f"{source}: the weights' classifier has {found} classes, num_classes="
                     f"{num_classes} was requested; pass num_classes={found}, or load_head=False "
                     f"to load the backbone only.")
  return loaded


def merge_variables(target, loaded, source: str = "<weights>"):
  """Overwrites every leaf of ``target`` that ``loaded`` provides, checking shapes. Leaves that
  ``loaded`` lacks (e.g. the classifier head of a notop file) keep their initial values."""
  from flax import traverse_util
  flat_t = traverse_util.flatten_dict(target)
  flat_l = traverse_util.flatten_dict(loaded)
  for path, value in flat_l.items():
    if path not in flat_t:
      raise ValueError(f"{source}: variable {'/'.join(path)} does not exist in the model.")
    if tuple(flat_t[path].shape) != tuple(value.shape):
      raise ValueError(f"{source}: variable {'/'.join(path)} has shape {tuple(value.shape)}, "
                       f"the model expects {tuple(flat_t[path].shape)}.")
    flat_t[path] = jnp.asarray(value, flat_t[path].dtype)
  return traverse_util.unflatten_dict(flat_t)
