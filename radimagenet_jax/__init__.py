"""radimagenet_jax: RadImageNet in JAX.

    import radimagenet_jax as rij
    model, variables = rij.models.create("resnet50", num_classes=2, weights=None)
    logits = model.apply(variables, rij.data.preprocess(images_uint8), train=False)

Packages, from low to high (imports point one way; see README "Layout"):
checkpoints, distributed -> models -> keras_io -> data -> train -> pretrain, finetune, evaluate,
explain, export -> cli. Submodules are imported on first use, so `radimagenet-jax --help` stays fast.
"""
from radimagenet_jax import _host_malloc, _lazy, _xla_cpu_flags

_xla_cpu_flags.apply()   # before JAX starts a backend: XLA:CPU convolutions on Eigen
# Steps on the calling thread + glibc malloc options (per-step buffers stay mapped): the commands that
# run steps call it unless RADIMAGENET_JAX_HOST_MALLOC=off; a script calls it before creating arrays.
tune_host_malloc = _host_malloc.apply

__version__ = "0.1.0"

__getattr__ = _lazy.attach(
    __name__,
    ("checkpoints", "config_arg", "distributed", "evaluate", "explain", "export", "finetune",
     "data", "keras_io", "models", "pretrain", "train"),
    # Names from before the packages existed, kept working.
    {"gradcam": "radimagenet_jax.explain.gradcam", "plots": "radimagenet_jax.explain.plots",
     "segmentation_metrics": "radimagenet_jax.explain.regions",
     "stats": "radimagenet_jax.evaluate.paired"})


def load(path, model_name=None):
  """``(model, variables, info)`` of a checkpoint folder or Keras file (`radimagenet_jax.loading`)."""
  from radimagenet_jax import loading  # pylint: disable=g-import-not-at-top
  return loading.load(path, model_name)
