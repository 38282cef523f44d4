"""One-line loading of a trained model from other JAX code: ``rij.load(path)``.

    import radimagenet_jax as rij
    model, variables, info = rij.load("runs/own_sweep/runs/resnet50-top10-lr0.001-pretrained-fold0/best")
    x = info.preprocess(images_uint8)                 # resized to info.image_size, then the mode
    probabilities = jax.nn.softmax(model.apply(variables, x, train=False))
    info.class_names[int(probabilities[0].argmax())]

``path`` is an Orbax checkpoint folder written by this project (a run's ``best``, a training
workdir: its latest step, a ``convert`` output) or a Keras .h5 / .weights.h5 file (official
RadImageNet, keras.applications). What the weights are comes from ``keras_io.weights_info``: the
checkpoint's metadata, or the file's contents and name. Weights without a classifier (a Keras
notop file, a pretraining ``convert`` output without head) give a features-only model: ``apply``
returns the pooled features (B, C).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from radimagenet_jax import keras_io, models
from radimagenet_jax.data.preprocess import preprocess as apply_mode, to_rgb
from radimagenet_jax.data.transforms import resize

DEFAULT_PREPROCESS = "radimagenet"  # when the weights do not say (a random or unnamed file)


@dataclasses.dataclass(frozen=True)
class Info:
  """What loaded weights are: model, classes, input size and preprocessing.

  ``preprocess(images_uint8)`` turns uint8 images (B, H, W[, C]) or one (H, W[, C]) image into the
  network input: each resized to ``image_size`` with nearest neighbour (as the training pipeline,
  Keras load_img), gray replicated to RGB, then the weights' preprocessing ``preprocess_mode``.
  """
  model_name: str
  num_classes: int                  # 0: no classifier (apply returns features)
  class_names: Sequence[str] | None
  image_size: int | None
  preprocess_mode: str
  preprocess_origin: str
  path: str
  kind: str                         # 'checkpoint' | 'keras'
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

  def preprocess(self, images_uint8) -> np.ndarray:
    images = np.asarray(images_uint8)
    if images.ndim == 2:  # one gray image
      images = images[None, ..., None]
    elif images.ndim == 3:  # one (H, W, C) image, or a batch of gray (B, H, W)
      images = images[None] if images.shape[-1] in (1, 3) else images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"images of shape {images.shape}; expected (B, H, W[, 1 or 3]) or one "
                       "(H, W[, 1 or 3]) image, uint8 0..255")
    if self.image_size and images.shape[1:3] != (self.image_size, self.image_size):
      images = np.stack([resize(im, (self.image_size,) * 2) for im in images])
    return apply_mode(to_rgb(images), mode=self.preprocess_mode)

  def label(self, index: int) -> str:
    """The class name of an output index (the index itself when the names are unknown)."""
    return str(self.class_names[index]) if self.class_names else str(index)


def load(path: str | os.PathLike, model_name: str | None = None):
  """``(model, variables, info)`` for a checkpoint folder or a Keras file, ready to apply.

  model_name: only needed for a Keras file whose contents match several models (never for the
  four models' own files) or to insist on one (a mismatch is a ValueError).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or folder; expected a run's checkpoint folder "
                            "(e.g. runs/x/best) or a Keras .h5 file")
  meta = keras_io.weights_info(path, model_name)
  name = meta.get("model_name")
  if not name:
    raise ValueError(f"{path}: matches none of {', '.join(models.names())}; pass model_name=")
  num_classes = int(meta.get("num_classes") or 0)
  model, variables = models.create(name, num_classes=num_classes, weights=path,
                                   load_head=True if num_classes else None)
  mode, origin = meta.get("preprocess"), meta.get("preprocess_origin", "weights")
  if not mode:
    mode, origin = DEFAULT_PREPROCESS, "default (the weights do not record one)"
  size = meta.get("image_size")
  info = Info(model_name=name, num_classes=num_classes,
              class_names=list(meta["class_names"]) if meta.get("class_names") else None,
              image_size=int(size) if size else None, preprocess_mode=mode,
              preprocess_origin=str(origin), path=os.path.abspath(path),
              kind=str(meta.get("kind")), metadata=dict(meta))
  return model, variables, info
