"""The training engine shared by pretraining and fine-tuning.

    from radimagenet_jax.train import loop
    summary = loop.fit(config, workdir, task)   # resumes from the latest checkpoint in workdir

Modules: `config` (fields, defaults, checks), `state` (TrainState), `optim` (schedules, optimizers,
freeze masks), `steps` (sharded jitted train and eval steps), `eval_batches` (the one padding rule
for evaluation, prediction and Grad-CAM batches), `inference` (metrics and per-example
probabilities on a split), `loop` (`fit`), `preemption` (SIGTERM), `writers` (metrics.jsonl,
TensorBoard, progress), `summary` (per-class report). Submodules are imported on first use.
"""
import importlib

_SUBMODULES = ("config", "eval_batches", "inference", "loop", "optim", "preemption", "state", "steps",
               "summary", "writers")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"radimagenet_jax.train.{name}")
  raise AttributeError(f"module 'radimagenet_jax.train' has no attribute {name!r}")
