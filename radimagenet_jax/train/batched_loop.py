"""`fit_runs(configs, workdirs, tasks)`: `loop.fit` for K runs that share one compiled step.

The runs must share everything that determines the data stream and the compiled shapes (model,
image size, data set and train set, batch size, steps, seed, dtype, evaluation settings; checked
here) and start from the same step (a fresh start, or checkpoints at the same step: the caller
groups runs by their latest checkpoint). They may differ in starting variables, trainable mask,
frozen BatchNorm layers, learning rate and preprocessing mode (`train.batched`).

Per run, every file is what `loop.fit` writes alone in that run's workdir: config.json,
checkpoints (the alone run's optimizer-state layout, the shared loader's position), best/,
metrics.jsonl, tb/, summary.json. A run whose loss or parameters become non-finite stops updating
at once (on the device), is reported with the alone run's `NonFiniteLossError` and never
checkpointed again; the others go on. Returns one entry per run: its summary dict, or the
exception that stopped it.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from radimagenet_jax import checkpoints as ckpt_lib
from radimagenet_jax import distributed
from radimagenet_jax.data import pipeline
from radimagenet_jax.train import batched, config as config_lib, eval_batches, loop, optim, preemption
from radimagenet_jax.train import state as state_lib
from radimagenet_jax.train import summary as summary_lib
from radimagenet_jax.train import writers

# Config fields that may differ between the runs of a group; every other field must agree.
PER_RUN_FIELDS = ("learning_rate", "preprocess", "init", "freeze")


def check_group(configs: Sequence[Any]) -> None:
  """Raises ValueError naming the first field (other than PER_RUN_FIELDS) that differs."""
  ref = configs[0].to_dict()
  for c in configs[1:]:
    other = c.to_dict()
    for key in sorted(set(ref) | set(other)):
      if key not in PER_RUN_FIELDS and ref.get(key) != other.get(key):
        raise ValueError(f"runs of one batched group differ in config.{key} ({ref.get(key)!r} vs "
                         f"{other.get(key)!r}); expected only {', '.join(PER_RUN_FIELDS)} to differ")


class _Run:
  """One run's host-side bookkeeping."""

  def __init__(self, index, config, workdir, task, num_classes):
    self.index, self.config, self.task = index, config, task
    self.workdir = config_lib.resolve_workdir(workdir)
    self.ident = loop.identity(config, num_classes)
    self.metadata = loop.run_metadata(config, self.ident, task)
    self.correct_bn = loop.corrects_bn(config, task)
    self.mngr = self.writer = None
    self.best = None
    self.error: BaseException | None = None
    self.summary: dict | None = None


def fit_runs(configs: Sequence[Any], workdirs: Sequence[str], tasks: Sequence[loop.Task],
             log=print) -> list[Any]:
  """Trains the runs together; returns per run its summary dict or the exception that stopped it."""
  distributed.enable_compilation_cache(configs[0].compilation_cache_dir or None)
  mesh = distributed.make_mesh()
  rep = distributed.replicated(mesh)
  main = distributed.is_main_process()
  check_group(configs)
  config = configs[0]
  for c in configs:
    config_lib.validate(c, extra=c.keys(), device_count=mesh.devices.size)
  train_source = tasks[0].train_source
  if any(len(t.train_source) != len(train_source) for t in tasks):
    raise ValueError("runs of one batched group have train sets of different sizes; expected one "
                     "train set (the same data set, fold, val_fraction and seed)")
  num_classes = config.num_classes or len(tasks[0].class_names)
  steps_per_epoch, total_steps, warmup = loop.schedule_lengths(config, len(train_source))
  eval_every = steps_per_epoch if config.eval_every < 0 else config.eval_every
  runs = [_Run(i, c, w, t, num_classes) for i, (c, w, t) in enumerate(zip(configs, workdirs, tasks))]

  # ---- Per-run checks, then the common start step ----
  starts = []
  for r in runs:
    config_lib.check_workdir_writable(r.workdir)
    os.makedirs(r.workdir, exist_ok=True)
    r.mngr = ckpt_lib.manager(r.workdir, keep=r.config.keep_checkpoints)
    starts.append(loop.check_resume(r.config, r.workdir, r.ident, r.mngr))
  if len(set(starts)) > 1:
    raise ValueError(f"runs of one batched group resume from different steps {starts}; expected "
                     "one step (group runs by their latest checkpoint)")
  for r in runs:
    loop.write_json(os.path.join(r.workdir, "config.json"), r.config)

  # ---- Model, per-run states stacked over runs ----
  model = loop.create_model(config, num_classes)
  full_tx = batched.optimizer(config, config.learning_rate, total_steps, warmup)
  create = lambda variables: state_lib.create(model, full_tx, config.seed, config.image_size, rep,
                                              variables=variables, init_law=config.init_law)
  fresh = None  # runs from a random init share the seed, hence one drawn state
  per_run = []
  for r in runs:
    if r.task.variables is None:
      fresh = fresh if fresh is not None else create(None)
      per_run.append(fresh)
    else:
      per_run.append(create(r.task.variables))
  data = batched.runs_data([r.task.trainable for r in runs],
                           [r.config.learning_rate for r in runs], per_run[0].batch_stats,
                           [r.task.frozen_bn for r in runs])
  local_bs = distributed.process_batch_size(config.batch_size, mesh)
  loader = pipeline.make_loader(train_source, batch_size=local_bs, image_size=config.image_size,
                                preprocess_mode=configs[0].preprocess, augment=config.augment,
                                shuffle=True, seed=config.seed, num_epochs=None,
                                worker_count=config.worker_count, preprocess_on_device=True,
                                augment_on_device=config.augment_on_device)
  data_iter = iter(loader)
  # Each run's checkpointed optimizer state is its alone run's (`optim.freeze`): its shapes, once.
  alone_opt = [jax.eval_shape(optim.freeze(optim.create_optimizer(r.config, lambda _: 0.0),
                                           r.task.trainable).init, per_run[i].params)
               for i, r in enumerate(runs)]
  if starts[0] is not None:
    for i, r in enumerate(runs):
      template = dict(per_run[i].train_part(), opt_state=jax.tree.map(
          lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), alone_opt[i]))
      variables, train = ckpt_lib.restore(r.mngr, starts[0], variables=per_run[i].variables,
                                          train_state=template,
                                          data_iter=data_iter if i == 0 else None)
      train["opt_state"] = batched.from_alone_opt_state(train["opt_state"],
                                                        per_run[i].opt_state)
      per_run[i] = per_run[i].replace_from(variables, train)
  states = jax.device_put(batched.stack(per_run), rep)
  data = jax.device_put(data, rep)
  del per_run
  start = int(jax.device_get(states.step[0]))
  modes = tuple(r.config.preprocess for r in runs)
  train_fn = batched.compile_train_step(model, config, (total_steps, warmup), modes, mesh)
  eval_fn = batched.compile_eval_step(model, modes, mesh)
  k = len(runs)
  for r in runs:
    r.best = loop.read_best(r.workdir) if r.task.select_best else None
    r.writer = writers.MetricWriter(r.workdir, enabled=main)
  progress = writers.Progress(total_steps, start, enabled=main, bar=config.progress_bar)
  progress.log(f"{k} {config.model} runs in one step on {config.dataset}: "
               f"{len(train_source)} train examples, global batch {config.batch_size}, steps "
               f"{start} -> {total_steps}" + (" (resumed)" if start else ""))

  def active():
    return [r for r in runs if r.error is None]

  def inference_variables(step):
    if not any(r.correct_bn for r in runs):
      return {"params": states.params, "batch_stats": states.batch_stats}
    corrected = state_lib.bn_bias_corrected(states.batch_stats, step)
    flags = np.asarray([r.correct_bn for r in runs])
    pick = lambda c, raw: jax.numpy.where(flags.reshape((k,) + (1,) * (raw.ndim - 1)), c, raw)
    return {"params": states.params,
            "batch_stats": jax.tree.map(pick, corrected, states.batch_stats)}

  def fail(r, error):
    r.error = error
    progress.log(f"run {r.index} ({r.workdir}): {error}")

  def check_bad(bad_step):
    for r, bad in zip(runs, np.asarray(jax.device_get(bad_step))):
      if r.error is None and int(bad) != batched.NO_BAD_STEP:
        fail(r, loop.loss_error(int(bad), r.mngr.latest_step(), r.workdir, r.config.learning_rate))

  def save(step, force=False):
    finite = np.asarray(jax.device_get(batched.all_finite(states.params)))
    variables = inference_variables(step)
    for r in active():
      if not finite[r.index]:
        fail(r, loop.params_error(step, r.mngr.latest_step(), r.workdir, r.config.learning_rate))
        continue
      try:
        mine = batched.take(states, r.index)
        train_part = dict(mine.train_part(), opt_state=batched.to_alone_opt_state(
            mine.opt_state, alone_opt[r.index]))
        ckpt_lib.save(r.mngr, step, variables=batched.take(variables, r.index),
                      train_state=train_part, data_iter=data_iter,
                      metadata=dict(r.metadata, step=step), force=force)
      except Exception as e:  # pylint: disable=broad-except
        fail(r, e)   # this run's files only: the others go on

  def evaluate(step):
    variables = inference_variables(step)
    acc = jax.device_put(batched.init_eval_metrics(k, num_classes), rep)
    for batch in eval_batches.eval_batches(tasks[0].eval_source,
                                      batch_size=config.eval_batch_size or config.batch_size,
                                      image_size=config.image_size, preprocess_mode=modes[0],
                                      mesh=mesh, worker_count=config.worker_count,
                                      max_batches=config.eval_steps):
      acc = eval_fn(variables, acc, batch)
    results = batched.summarize(acc, k)
    for r in active():
      ev = results[r.index]
      r.writer.write(step, config.eval_split, {key: ev[key] for key in ("loss", "top1", "top5")})
      progress.log(f"step {step} run {r.index} {config.eval_split}: loss {ev['loss']:.4f} "
                   f"top-1 {ev['top1']:.3f}")
      # A best kept at this step or later comes from an earlier attempt at these same steps (a
      # run restarted without its checkpoint): it stays.
      if r.task.select_best and math.isfinite(ev["loss"]) and (
          r.best is None or (ev["loss"] < r.best["loss"] and step > r.best["step"])):
        r.best = {"loss": float(ev["loss"]), "step": int(step), "epoch": step / steps_per_epoch}
        try:
          loop.save_best(r.workdir, batched.take(variables, r.index), r.ident, num_classes,
                         r.metadata, r.best)
        except Exception as e:  # pylint: disable=broad-except
          fail(r, e)
    return results

  # ---- Loop ----
  acc = jax.device_put(batched.init_train_metrics(k), rep)
  bad_step = jax.device_put(np.full(k, batched.NO_BAD_STEP, np.int32), rep)
  throughput = writers.Throughput()
  try:
    with preemption.catch_sigterm():
      for step in range(start + 1, total_steps + 1):
        batch = distributed.to_global(next(data_iter), mesh)
        t0 = time.perf_counter()
        states, acc, bad_step = train_fn(states, acc, bad_step, batch, data)
        if step == start + 1:
          jax.block_until_ready(acc)
          progress.log(f"compiled and ran the first step in {time.perf_counter() - t0:.1f} s")
          throughput.reset()
        else:
          throughput.add(config.batch_size * k)
        is_last = step == total_steps
        stop = preemption.stop_agreed()
        do_ckpt = is_last or stop or (config.checkpoint_every
                                      and step % config.checkpoint_every == 0)
        do_eval = bool(eval_every and step % eval_every == 0 and not is_last)
        if is_last or do_ckpt or do_eval or step % config.log_every == 0:
          check_bad(bad_step)
        if is_last or do_ckpt or step % config.log_every == 0:
          ms = batched.summarize(acc, k)
          acc = jax.device_put(batched.init_train_metrics(k), rep)
          rate = throughput.rate()
          for r in active():
            m = ms[r.index]
            r.writer.write(step, "train", {
                "loss": m["loss"], "top1": m["top1"], "top5": m["top5"],
                "learning_rate": float(optim.create_learning_rate_fn(
                    r.config, total_steps, warmup)(step - 1)),
                "images_per_second": rate / k, "epoch": step / steps_per_epoch})
          progress.update(step, f"{len(active())}/{k} runs, {rate:.1f} img/s over all runs")
        if do_ckpt:
          save(step, force=is_last or stop)
        if stop and not is_last:
          for r in runs:
            r.mngr.wait_until_finished()
          raise preemption.Preempted(step, os.path.dirname(runs[0].workdir))
        if do_eval:
          evaluate(step)
        if not active():
          break
  finally:
    progress.close()
    for r in runs:
      r.mngr.wait_until_finished()

  # ---- Final evaluation and summaries ----
  if active():
    results = evaluate(total_steps)
    for r in active():
      r.summary = summary_lib.build(r.config, total_steps, results[r.index], r.task.class_names,
                                    throughput.overall() / k)
      if r.best is not None:
        r.summary["best"] = r.best
      if main:
        loop.write_json(os.path.join(r.workdir, "summary.json"), r.summary)
  for r in runs:
    r.writer.close()
    r.mngr.close()
  return [r.error if r.error is not None else r.summary for r in runs]
