"""The training engine shared by pretraining and fine-tuning.

    from radimagenet_jax.train import loop
    summary = loop.fit(config, workdir, task)   # resumes from the latest checkpoint in workdir
    results = loop.fit_runs(configs, workdirs, tasks)   # K runs in one vmapped step, same loop

Modules: `config` (fields, defaults, checks), `state` (TrainState), `optim` (schedules, optimizers,
freeze masks and their optimizer state), `losses` (softmax cross-entropy, Keras's clipped BCE on
the softmax), `steps` (the one sharded jitted train step, eval and
predict steps), `one_run` (one run's state and steps, as the loop drives them), `vmapped` (K runs'
stacked state and `steps.train_step` under `jax.vmap`, the same interface), `loop` (`loop.fit`,
`loop.fit_runs`: the one loop), `eval_batches` (the one padding rule for evaluation, prediction and
Grad-CAM batches), `inference` (metrics and per-example probabilities on a split), `preemption`
(SIGTERM), `writers` (metrics.jsonl, TensorBoard, progress), `summary` (per-class report).
Submodules are imported on first use.
"""
import importlib

_SUBMODULES = ("config", "eval_batches", "inference", "loop", "losses", "one_run", "optim",
               "preemption", "state", "steps", "summary", "vmapped", "writers")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"radimagenet_jax.train.{name}")
  raise AttributeError(f"module 'radimagenet_jax.train' has no attribute {name!r}")
