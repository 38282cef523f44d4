"""Model registry: name -> (Flax module class, Keras layer table, metadata).

Each architecture module registers itself with ``register``; ``create`` builds the module,
initialises variables and optionally loads weights (a Keras .h5 file or an Orbax checkpoint).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from radimagenet_jax.models.common import KerasLayer


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  module_cls: type                       # flax.linen.Module subclass
  keras_layers: Callable[[], Sequence[KerasLayer]]  # pooling='avg' table, model.layers order
  min_size: int                          # smallest input side keras.applications accepts
  default_size: int                      # the ImageNet default (224 or 299)
  feature_layer: str                     # last layer of the notop model (Grad-CAM default)
  keras_application: str                 # keras.applications attribute, e.g. 'ResNet50'


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES = {"irv2": "inception_resnet_v2", "inceptionv3": "inception_v3",
            "inceptionresnetv2": "inception_resnet_v2"}


def register(spec: ModelSpec) -> ModelSpec:
  _REGISTRY[spec.name] = spec
  return spec


def _ensure_loaded():
  # Importing the architecture modules registers them.
  from radimagenet_jax.models import resnet  # noqa: F401
  for mod in ("densenet", "inception_v3", "inception_resnet_v2"):
    try:
      __import__(f"radimagenet_jax.models.{mod}")
    except ModuleNotFoundError as e:
      if e.name != f"radimagenet_jax.models.{mod}":
        raise


def names() -> list[str]:
  _ensure_loaded()
  return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
  _ensure_loaded()
  key = _ALIASES.get(name.lower().replace("-", "_"), name.lower().replace("-", "_"))
  if key not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}; valid choices: {', '.join(sorted(_REGISTRY))}.")
  return _REGISTRY[key]


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


def init_variables(model, rng=None, input_size: int | None = None):
  """Random init (params + batch_stats) with a tiny batch."""
  spec = get_spec(model.spec_name)
  size = input_size or spec.min_size
  rng = jax.random.key(0) if rng is None else rng
  variables = _jitted_init(model, size)(rng)
  return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def create(name: str, num_classes: int = 1000, weights: str | os.PathLike | None = None, *,
           dropout_rate: float = 0.5, dtype=jnp.float32, rng=None, **module_kwargs):
  """Returns ``(model, variables)``.

  weights: None (random init) | a Keras .h5 / .weights.h5 file (backbone loaded, head random) |
  an Orbax checkpoint directory written by this project (train workdir or `convert` output).
  """
  spec = get_spec(name)
  model = spec.module_cls(num_classes=num_classes, dropout_rate=dropout_rate, dtype=dtype,
                          **module_kwargs)
  variables = init_variables(model, rng)
  if weights is None:
    return model, variables
  path = os.fspath(weights)
  if os.path.isdir(path):
    from radimagenet_jax.train import checkpoint
    loaded = checkpoint.load_variables(path, spec.name)
  elif os.path.isfile(path):
    from radimagenet_jax import keras_io
    loaded = keras_io.load_h5(path, spec.name)
  else:
    raise FileNotFoundError(f"weights={path!r}: no such file or directory; expected a Keras .h5 "
                            f"file or an Orbax checkpoint directory.")
  return model, merge_variables(variables, loaded, source=path)


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
