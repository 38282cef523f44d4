"""Where a fine-tuning run starts: weights from a Keras .h5 file, an Orbax checkpoint, or random.

The model is the paper's: backbone, GAP, Dropout(0.5), Dense(num_classes). The backbone (and its
BatchNorm statistics) comes from the weights; the Dense head is always fresh and initialised as
Keras initialises a Dense layer (glorot_uniform kernel, zero bias) unless an Orbax checkpoint of the
same class count provides one (a run resumed elsewhere, a fine-tuned model fine-tuned further).

`init` in the config is `random`, a path, or a label of `config.inits` (e.g. `radimagenet` ->
`config.inits.radimagenet.resnet50`), so a sweep can name one weight file per model and label.
The labels `imagenet` and `radimagenet` whose file is not where the config says (or whose entry is
the name itself) come from the weights cache (`keras_io.hub`): Keras's ImageNet files are
downloaded there once; the RadImageNet files are read there, with instructions when absent.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

from radimagenet_jax import checkpoints, keras_io, models
from radimagenet_jax.keras_io import hub

log = logging.getLogger(__name__)
RANDOM = "random"


def resolve(config) -> tuple[str, str | None]:
  """(label, source path or None for random) of ``config.init`` for ``config.model``."""
  init, model = str(config.init), models.get_spec(config.model).name
  if init == RANDOM:
    return RANDOM, None
  inits = config.inits.to_dict() if hasattr(config.inits, "to_dict") else dict(config.inits)
  if init in inits:
    path = (inits[init] or {}).get(model, "")
    if not path:
      raise ValueError(f"config.init={init!r}: config.inits.{init} names no weights for {model} "
                       f"(it has: {', '.join(sorted(inits[init] or {})) or 'nothing'}); set "
                       f"--config.inits.{init}.{model}=PATH.")
    path = os.path.expanduser(path)
    if path in hub.NAMES or (init in hub.NAMES and not os.path.exists(path)):
      # A name, or the label's file missing where the config says: the cache (and, for
      # imagenet, Keras's download), looking first in the folder the config names.
      return init, hub.weights_path(model, path if path in hub.NAMES else init,
                                    folder=None if path in hub.NAMES else os.path.dirname(path))
    return init, path
  if init in hub.NAMES:
    return init, hub.weights_path(model, init)
  if os.path.exists(os.path.expanduser(init)):
    return os.path.basename(os.path.normpath(init)), os.path.expanduser(init)
  raise ValueError(f"config.init={init!r} is neither 'random', a label of config.inits "
                   f"({', '.join(sorted(inits)) or 'none defined'}) nor an existing .h5 file or "
                   f"checkpoint directory.")


def preprocess_mode(config, label: str, path: str | None) -> str:
  """``config.preprocess`` unless it is 'auto': then what the weights were trained with (their
  metadata, or a Keras file's name: `keras_io.weights_info`), `radimagenet` for a random init or
  when the weights do not say; the label `imagenet` means Keras's ImageNet weights."""
  if config.preprocess != "auto":
    return config.preprocess
  name = models.get_spec(config.model).name
  if path is not None:
    mode = keras_io.weights_info(path, name).get("preprocess")
    if mode:
      return mode
  if label == "imagenet":
    return checkpoints.KERAS_IMAGENET_PREPROCESS[name]
  return checkpoints.DEFAULT_PREPROCESS


def keras_dense_init(rng, variables: dict) -> dict:
  """The head 'predictions' as a fresh Keras Dense layer: glorot_uniform kernel, zero bias."""
  head = variables["params"]["predictions"]
  kernel = jax.nn.initializers.glorot_uniform()(rng, head["kernel"].shape, np.float32)
  params = dict(variables["params"], predictions={"kernel": kernel,
                                                  "bias": np.zeros(head["bias"].shape, np.float32)})
  return dict(variables, params=params)


def initial_variables(config, num_classes: int, label: str, path: str | None
                      ) -> tuple[dict | None, dict[str, Any]]:
  """(variables, info). ``variables`` is None for a random init (the engine initialises from the
  seed, head included, as in pretraining); ``info`` says what was loaded, for run.json."""
  spec = models.get_spec(config.model)
  info = {"init": label, "init_source": path or RANDOM, "head": "fresh (glorot_uniform)"}
  if path is None:
    info["head"] = "random init (seed)"
    return None, info
  model = spec.module_cls(num_classes=num_classes)
  seed_key = jax.random.key(config.seed)
  fresh = keras_dense_init(jax.random.fold_in(seed_key, 1),
                           models.init_variables(model, seed_key, config.image_size))
  if os.path.isdir(path):
    meta = checkpoints.read_metadata(path)
    if meta.get("model_name") not in (None, spec.name):
      raise ValueError(f"config.init={path}: the checkpoint holds {meta.get('model_name')} "
                       f"weights, but config.model is {spec.name}.")
    loaded = checkpoints.load_variables(path, spec.name)
    same_head = int(meta.get("num_classes") or -1) == num_classes
    if not same_head:
      for collection in loaded.values():
        collection.pop("predictions", None)
      if meta.get("num_classes"):
        log.warning("%s: checkpoint of %s classes; its backbone is loaded and the %d-class head "
                    "is fresh.", path, meta.get("num_classes"), num_classes)
        info["note"] = (f"checkpoint has {meta.get('num_classes')} classes: backbone loaded, "
                        f"fresh {num_classes}-class head")
    else:
      info["head"] = "loaded from the checkpoint"
  else:
    loaded = keras_io.load_h5(path, spec.name)  # raises naming both models when they differ
  return models.merge_variables(fresh, loaded, source=path), info
