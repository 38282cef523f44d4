"""Data: preprocessing modes, augmentations, grain pipelines, patient-grouped splits, TFDS builds.

`preprocess` is re-exported (`rij.data.preprocess(images, mode='radimagenet')`). The other submodules
(augment, pipeline, splits, build, readers, tfds_base) are imported on first attribute access, so that
importing the package stays cheap and does not pull in grain or TFDS.
"""
import importlib

from radimagenet_jax.data.preprocess import MODES as PREPROCESS_MODES
from radimagenet_jax.data.preprocess import preprocess

_SUBMODULES = ("augment", "pipeline", "splits", "build", "readers", "tfds_base")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"radimagenet_jax.data.{name}")
  raise AttributeError(f"module 'radimagenet_jax.data' has no attribute {name!r}")


__all__ = ["preprocess", "PREPROCESS_MODES", *_SUBMODULES]
