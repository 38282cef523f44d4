"""radimagenet_jax: RadImageNet in JAX.

    import radimagenet_jax as rij
    model, variables = rij.models.create("resnet50", num_classes=2, weights=None)
    logits = model.apply(variables, rij.data.preprocess(images_uint8), train=False)

Submodules are imported on first use, so `radimagenet-jax --help` stays fast.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("models", "keras_io", "data", "train", "gradcam", "stats", "distributed",
               "segmentation_metrics", "plots")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"radimagenet_jax.{name}")
  raise AttributeError(f"module 'radimagenet_jax' has no attribute {name!r}")
