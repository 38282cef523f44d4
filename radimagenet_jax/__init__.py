"""radimagenet_jax: RadImageNet in JAX.

    import radimagenet_jax as rij
    model, variables = rij.models.create("resnet50", num_classes=2, weights=None)
    logits = model.apply(variables, rij.data.preprocess(images_uint8), train=False)

Packages, from low to high (imports point one way; docs/architecture.md):
checkpoints, distributed -> models -> keras_io -> data -> train -> pretrain, finetune, evaluate,
explain, export -> cli. Submodules are imported on first use, so `radimagenet-jax --help` stays fast.
Beside them: `config_arg` (a config file's `:arg`), `config_files` (finding configs, their
`--help`), `configs/` (the packaged copy of the config files); private helpers `_cpu_tuning`
(`tune_cpu`) with `_xla_cpu_flags` and `_host_malloc`, `_files` (atomic writes), `_lazy` (lazy
submodules) and `_collections` (the variable collections).

Importing any module changes nothing global (environment, malloc, JAX config, logging). The CPU
speed settings are one explicit call, `rij.tune_cpu()`, made by the `radimagenet-jax` commands;
a script on a CPU host calls it before creating arrays (docs/performance.md).
"""
from radimagenet_jax import _cpu_tuning, _host_malloc, _lazy

tune_cpu = _cpu_tuning.tune_cpu
# The malloc/dispatch half of tune_cpu alone, on any platform (its name before tune_cpu existed).
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
