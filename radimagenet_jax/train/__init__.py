"""Pretraining: train state, sharded steps, the loop, checkpoints and metric writers.

    from radimagenet_jax.train import loop
    loop.train_and_evaluate(config, workdir)   # resumes from the latest checkpoint in workdir
    loop.evaluate(config, workdir)

Submodules are imported on first use so that `checkpoint` stays importable on its own.
"""
import importlib

_SUBMODULES = ("checkpoint", "loop", "metrics", "optim", "state", "steps")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"radimagenet_jax.train.{name}")
  raise AttributeError(f"module 'radimagenet_jax.train' has no attribute {name!r}")
