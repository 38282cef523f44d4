"""One run's state and its jitted steps (`steps.train_step`), as the training loop drives them.

`loop.fit` trains one `OneRun`; `loop.fit_runs` trains a `vmapped.Vmapped`, the same interface over
K runs stacked on a leading axis. Answers are per run (lists of one here).
"""
from __future__ import annotations

import jax

from radimagenet_jax import checkpoints as ckpt_lib
from radimagenet_jax import distributed
from radimagenet_jax.train import inference, optim, state as state_lib, steps


class OneRun:
  """One run (``runs``: its `loop` bookkeeping, one entry): the train state, created or restored
  from the run's checkpoint at ``start``, and its compiled train and eval steps."""

  def __init__(self, model, runs, mesh, lengths: tuple[int, int], start, data_iter):
    (run,) = runs
    config, task = run.config, run.task
    self.mesh = mesh
    tx = optim.freeze(optim.create_optimizer(config, optim.create_learning_rate_fn(
        config, *lengths)), task.trainable)
    self.state = state_lib.create(model, tx, config.seed, config.image_size,
                                  distributed.replicated(mesh), variables=task.variables,
                                  init_law=config.init_law)
    bn_frozen = steps.bn_frozen_flags(self.state.batch_stats, task.frozen_bn)
    loss = config.get("loss", "softmax_ce")
    self.local_batch = distributed.process_batch_size(config.batch_size, mesh)
    self.train_fn = steps.compile_train_step(model, tx, mesh, config.preprocess, task.trainable,
                                             bn_frozen, loss)
    # An epoch's partial last batch (config.partial_batch, one process): replicated, compiled on
    # first use.
    self.partial_fn = steps.compile_train_step(model, tx, mesh, config.preprocess, task.trainable,
                                               bn_frozen, loss, replicate_batch=True)
    self.eval_fn = steps.compile_eval_step(model, mesh, config.preprocess, loss)
    if start is not None:
      variables, train_part = ckpt_lib.restore(run.mngr, start, variables=self.state.variables,
                                               train_state=self.state.train_part(),
                                               data_iter=data_iter)
      self.state = self.state.replace_from(variables, train_part)
    self._reset()

  def _reset(self):
    self.acc = jax.device_put(steps.init_train_metrics(), distributed.replicated(self.mesh))

  def step(self) -> int:
    return int(jax.device_get(self.state.step))

  def train(self, batch) -> None:
    """One step on this process's host ``batch`` (a partial last batch runs replicated)."""
    if len(batch["label"]) < self.local_batch:
      self.state, self.acc = self.partial_fn(self.state, self.acc,
                                             distributed.put_replicated(batch, self.mesh))
    else:
      self.state, self.acc = self.train_fn(self.state, self.acc,
                                           distributed.to_global(batch, self.mesh))

  def block(self) -> None:
    jax.block_until_ready(self.acc)

  def bad_steps(self) -> list[int | None]:
    bad = int(jax.device_get(self.acc["first_bad_step"]))
    return [None if bad == steps.NO_BAD_STEP else bad]

  def train_metrics(self) -> list[dict]:
    out = steps.summarize(self.acc)
    self._reset()
    return [out]

  def finite_params(self) -> list[bool]:
    return [bool(jax.device_get(steps.all_finite(self.state.params)))]

  def inference_variables(self, step: int, correct_bn) -> dict:
    if not correct_bn[0]:
      return self.state.variables
    return {"params": self.state.params,
            "batch_stats": state_lib.bn_bias_corrected(self.state.batch_stats, step)}

  def run_variables(self, variables, i: int):
    return variables

  def train_part(self, i: int) -> dict:
    return self.state.train_part()

  def evaluate(self, variables, source, config, num_classes: int) -> list[dict]:
    return [inference.run_eval(config, self.eval_fn, variables, source, self.mesh, num_classes)]
