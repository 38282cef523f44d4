"""The training engine shared by pretraining and fine-tuning: `fit(config, workdir, task)`.

Reads top to bottom in sections (checks before writing, mesh and state, resume, loop, final
evaluation). Every process runs the same code; only process 0 logs and writes files other than
checkpoints. Re-running on the same workdir resumes from the latest checkpoint exactly (parameters,
BatchNorm statistics, optimizer state, step, input pipeline position; dropout keys derive from
(seed, step)). A checkpoint is written only when the state it holds is finite; SIGTERM saves one at
the next step and stops (`preemption`).

What differs between pretraining and fine-tuning is data, not code: a `Task` gives the sources,
the starting variables (None: random init), the trainable mask and frozen BatchNorm layers, the
checkpoint metadata, and whether to keep the checkpoint of the lowest validation loss as `best`.

`fit_runs` trains K such runs in one vmapped step with the SAME loop: what differs is only the
state and step it drives (`one_run.OneRun`, `vmapped.Vmapped`); saving, evaluation, model selection
and loading are written once.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Sequence

import jax

from radimagenet_jax import _files
from radimagenet_jax import checkpoints as ckpt_lib
from radimagenet_jax import distributed, models
from radimagenet_jax.data import pipeline
from radimagenet_jax.train import config as config_lib
from radimagenet_jax.train import one_run, optim, preemption
from radimagenet_jax.train import summary as summary_lib
from radimagenet_jax.train import writers

BEST_SUBDIR = "best"


class NonFiniteLossError(FloatingPointError):
  """The training loss (or the parameters) became NaN or Inf."""


@dataclasses.dataclass
class Task:
  """What a run trains, beyond the config's numbers."""
  train_source: Sequence[Any]
  eval_source: Sequence[Any]
  class_names: list[str]
  variables: dict | None = None       # starting {'params', 'batch_stats'}; None: random init
  trainable: Any = None               # boolean pytree like the params; None: all train
  frozen_bn: tuple[str, ...] = ()     # BatchNorm layers in inference mode while training
  metadata: dict = dataclasses.field(default_factory=dict)  # extra checkpoint metadata
  select_best: bool = False           # keep the lowest-validation-loss checkpoint in <workdir>/best
  describe: str = ""                  # one line for the start-up log


def create_model(config, num_classes: int, frozen_bn: tuple[str, ...] = ()):
  """The config's model. The engine passes frozen BatchNorm layers as data (`one_run`), not as
  ``frozen_bn``: one way for one run and for K vmapped runs."""
  return models.get_spec(config.model).module_cls(
      num_classes=num_classes, dropout_rate=config.dropout_rate,
      dtype=config_lib.DTYPES[config.dtype], frozen_bn=tuple(frozen_bn))


def identity(config, num_classes: int) -> dict:
  """What a workdir's checkpoints must agree with to be resumed."""
  return {"model_name": models.get_spec(config.model).name, "num_classes": int(num_classes),
          "image_size": int(config.image_size)}


def schedule_lengths(config, num_train_examples: int) -> tuple[int, int, int]:
  if config.get("partial_batch", False):  # Keras's epoch: the last batch partial
    steps_per_epoch = max(-(-num_train_examples // config.batch_size), 1)
  else:
    steps_per_epoch = max(num_train_examples // config.batch_size, 1)
  total = config.num_train_steps or int(math.ceil(config.num_epochs * steps_per_epoch))
  warmup = config.warmup_steps or int(config.warmup_epochs * steps_per_epoch)
  return steps_per_epoch, total, warmup


def write_json(path: str, data) -> None:
  """Process 0 writes ``data`` as JSON atomically (a tmp file, then rename): the one writer of
  config.json, summary.json and the other run records."""
  if distributed.is_main_process():
    _files.write_json_atomic(path, data)


def check_resume(config, workdir: str, ident: dict, mngr) -> int | None:
  """The step to resume from (None: a fresh run), after checking that the workdir's checkpoint and
  config.json belong to this run. Raises before anything is written."""
  start = mngr.latest_step()
  if start is None:
    return None
  ckpt_lib.check_identity(ckpt_lib.read_metadata(workdir, start), ident, workdir)
  saved_path = os.path.join(workdir, "config.json")
  if os.path.exists(saved_path):
    try:
      with open(saved_path, "rb") as f:
        saved = json.loads(f.read().decode("utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: name the file and the fix
      raise ValueError(f"{saved_path} is not valid JSON ({e}); it is the saved config of the run "
                       f"to resume (step {start}): restore it, or delete {workdir} to train the "
                       f"run from scratch.") from None
    changed = config_lib.changed_fields(saved, config)
    if changed:
      diffs = "; ".join(f"{k}: saved {saved.get(k)!r}, now {config.to_dict().get(k)!r}"
                        for k in changed)
      raise ValueError(
          f"{workdir} holds a run (step {start}) with another config ({diffs}). Nothing was "
          f"overwritten. Only these fields may change on resume: "
          f"{', '.join(config_lib.RESUMABLE_CHANGES)}; use another --workdir for a new run.")
  return start


@dataclasses.dataclass
class _Run:
  """One run's host-side bookkeeping."""
  index: int
  config: Any
  task: Task
  workdir: str
  ident: dict
  mngr: Any = None
  writer: Any = None
  best: dict | None = None
  error: BaseException | None = None
  summary: dict | None = None


def fit(config, workdir: str, task: Task) -> dict[str, Any]:
  """Trains (resuming from ``workdir``), evaluates, writes summary.json; returns the summary."""
  (result,) = _fit([config], [workdir], [task], one_run.OneRun)
  if isinstance(result, BaseException):
    raise result
  return result


def fit_runs(configs: Sequence[Any], workdirs: Sequence[str], tasks: Sequence[Task]) -> list[Any]:
  """`fit` for K runs that share one compiled step (`train.vmapped`): the same loop, files and
  checks per run. The runs must share everything that determines the data stream and compiled
  shapes (`vmapped.check_group`) and start from the same step (a fresh start, or checkpoints at
  the same step). A run whose loss or parameters become non-finite, or whose files cannot be
  written, stops alone with `fit`'s error; the others go on. Returns per run its summary dict or
  the exception that stopped it."""
  from radimagenet_jax.train import vmapped  # pylint: disable=g-import-not-at-top
  vmapped.check_group(configs, tasks)
  return _fit(configs, workdirs, tasks, vmapped.Vmapped)


def _fit(configs, workdirs, tasks, kind) -> list[Any]:
  """The loop of `fit` and `fit_runs`; ``kind``: `one_run.OneRun` or `vmapped.Vmapped`."""
  distributed.initialize()
  distributed.enable_compilation_cache(configs[0].compilation_cache_dir or None)
  config, alone = configs[0], kind is one_run.OneRun
  main = distributed.is_main_process()
  mesh = distributed.make_mesh()

  # ---- Every check before the first compile or write ----
  num_classes = config.num_classes or len(tasks[0].class_names)
  runs = []
  for i, (c, w, t) in enumerate(zip(configs, workdirs, tasks)):
    config_lib.validate(c, extra=c.keys(), device_count=mesh.devices.size)
    w = config_lib.resolve_workdir(w)
    config_lib.check_workdir_writable(w)
    if num_classes < len(t.class_names):
      raise ValueError(f"config.num_classes={c.num_classes} is smaller than the "
                       f"{len(t.class_names)} classes of {c.dataset}; use 0 (from the "
                       f"dataset) or at least {len(t.class_names)}.")
    runs.append(_Run(i, c, t, w, identity(c, num_classes)))
  local_bs = distributed.process_batch_size(config.batch_size, mesh)
  if config.get("partial_batch", False) and jax.process_count() > 1:
    raise ValueError(f"config.partial_batch=True (Keras's partial last batch) runs on one process; "
                     f"this job has {jax.process_count()}. Set partial_batch=False.")
  steps_per_epoch, total_steps, warmup = schedule_lengths(config, len(tasks[0].train_source))
  eval_every = steps_per_epoch if config.eval_every < 0 else config.eval_every
  starts = []
  for r in runs:
    os.makedirs(r.workdir, exist_ok=True)
    r.mngr = ckpt_lib.manager(r.workdir, keep=r.config.keep_checkpoints)
    starts.append(check_resume(r.config, r.workdir, r.ident, r.mngr))
  if len(set(starts)) > 1:
    raise ValueError(f"runs of one batched group resume from different steps {starts}; expected "
                     "one step (group runs by their latest checkpoint)")
  for r in runs:
    write_json(os.path.join(r.workdir, "config.json"), r.config)

  # ---- Model, optimizer, state (replicated on the mesh), resumed ----
  model = create_model(config, num_classes)
  partial = bool(config.get("partial_batch", False))  # Keras's epochs: a partial last batch
  loader = pipeline.make_loader(tasks[0].train_source, batch_size=local_bs,
                                image_size=config.image_size, preprocess_mode=config.preprocess,
                                augment=config.augment, shuffle=True, seed=config.seed,
                                num_epochs=None, worker_count=config.worker_count,
                                preprocess_on_device=True,
                                augment_on_device=config.augment_on_device,
                                partial_batch=partial)
  data_iter = iter(loader)
  states = kind(model, runs, mesh, (total_steps, warmup), starts[0], data_iter)
  start = states.step()
  k = len(runs)
  for r in runs:
    r.best = read_best(r.workdir) if r.task.select_best else None
    r.writer = writers.MetricWriter(r.workdir, enabled=main)
  lr_fns = [optim.create_learning_rate_fn(r.config, total_steps, warmup) for r in runs]
  metadata = [run_metadata(r.config, r.ident, r.task) for r in runs]
  correct_bn = [corrects_bn(r.config, r.task) for r in runs]
  progress = writers.Progress(total_steps, start, enabled=main, bar=config.progress_bar)
  if main:
    head = (f"{runs[0].ident['model_name']} on {config.dataset}" if alone else
            f"{k} {config.model} runs in one step on {config.dataset}")
    progress.log(f"{head}: {len(tasks[0].train_source)} train examples, {num_classes} classes, "
                 f"global batch {config.batch_size} on {jax.device_count()} device(s) / "
                 f"{jax.process_count()} process(es), steps {start} -> {total_steps}"
                 + (" (resumed)" if start else "")
                 + (f"; {tasks[0].describe}" if alone and tasks[0].describe else ""))

  def active():
    return [r for r in runs if r.error is None]

  def fail(r, error):
    r.error = error
    if not alone:
      progress.log(f"run {r.index} ({r.workdir}): {error}")

  def save(step, force=False):
    finite = states.finite_params()
    variables = states.inference_variables(step, correct_bn)
    for r in active():
      if not finite[r.index]:
        fail(r, params_error(step, r.mngr.latest_step(), r.workdir, r.config.learning_rate))
        continue
      try:
        ckpt_lib.save(r.mngr, step, variables=states.run_variables(variables, r.index),
                      train_state=states.train_part(r.index), data_iter=data_iter,
                      metadata=dict(metadata[r.index], step=step), force=force)
      except Exception as e:  # pylint: disable=broad-except
        fail(r, e)   # this run's files only: the others go on

  def evaluate(step):
    variables = states.inference_variables(step, correct_bn)
    results = states.evaluate(variables, tasks[0].eval_source, config, num_classes)
    for r in active():
      ev = results[r.index]
      r.writer.write(step, config.eval_split, {key: ev[key] for key in ("loss", "top1", "top5")})
      top5 = f" top-5 {ev['top5']:.3f}" if num_classes > 5 else ""  # always 1 with <= 5 classes
      progress.log(f"step {step} {'' if alone else f'run {r.index} '}{config.eval_split}: loss "
                   f"{ev['loss']:.4f} top-1 {ev['top1']:.3f}{top5}")
      # The lowest validation loss is `best`. One kept at this step or later comes from an earlier
      # attempt at these same steps (a run restarted without its checkpoint): it stays.
      if r.task.select_best and math.isfinite(ev["loss"]) and (
          r.best is None or (ev["loss"] < r.best["loss"] and step > r.best["step"])):
        r.best = {"loss": float(ev["loss"]), "step": int(step), "epoch": step / steps_per_epoch}
        try:
          save_best(r.workdir, states.run_variables(variables, r.index), r.ident, num_classes,
                    metadata[r.index], r.best)
        except Exception as e:  # pylint: disable=broad-except
          fail(r, e)
    return results

  # ---- Loop ----
  throughput = writers.Throughput()
  step = start
  try:
    with preemption.catch_sigterm():
      for step in range(start + 1, total_steps + 1):
        batch = next(data_iter)
        batch = pipeline.real_examples(batch) if partial else batch
        if step == start + 1 and main:
          progress.log("compiling the train step (first step)...")
        t0 = time.perf_counter()
        states.train(batch)
        if step == start + 1:
          # The first step includes compilation: keep it out of the images/s figures.
          states.block()
          if main:
            progress.log(f"compiled and ran the first step in {time.perf_counter() - t0:.1f} s")
          throughput.reset()
        else:
          throughput.add(config.batch_size * k)
        is_last = step == total_steps
        stop = preemption.stop_agreed()
        do_ckpt = is_last or stop or (config.checkpoint_every
                                      and step % config.checkpoint_every == 0)
        do_eval = bool(eval_every and step % eval_every == 0 and not is_last)
        do_log = is_last or do_ckpt or step % config.log_every == 0
        if do_log or do_eval:
          for r, bad in zip(runs, states.bad_steps()):
            if r.error is None and bad is not None:
              fail(r, loss_error(bad, r.mngr.latest_step(), r.workdir, r.config.learning_rate))
          if not active():
            break
        if do_log:
          ms, rate = states.train_metrics(), throughput.rate()
          for r in active():
            m = ms[r.index]
            r.writer.write(step, "train", {
                "loss": m["loss"], "top1": m["top1"], "top5": m["top5"],
                "learning_rate": float(lr_fns[r.index](step - 1)),
                "images_per_second": rate / k, "epoch": step / steps_per_epoch})
          progress.update(step, f"loss {ms[0]['loss']:.4f} top1 {ms[0]['top1']:.3f} {rate:.1f} "
                          "img/s" if alone else
                          f"{len(active())}/{k} runs, {rate:.1f} img/s over all runs")
        if do_ckpt:
          save(step, force=is_last or stop)
        if stop and not is_last:
          for r in runs:
            r.mngr.wait_until_finished()
          raise preemption.Preempted(step, runs[0].workdir if alone
                                     else os.path.dirname(runs[0].workdir))
        if do_eval and active():
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
        write_json(os.path.join(r.workdir, "summary.json"), r.summary)
        if alone:
          summary_lib.print_summary(r.summary)
  for r in runs:
    r.writer.close()
    r.mngr.close()
  return [r.error if r.error is not None else r.summary for r in runs]


def params_error(step: int, last: int | None, workdir: str, lr) -> NonFiniteLossError:
  """The error of a run whose parameters are non-finite at a checkpoint (``last``: latest step)."""
  return NonFiniteLossError(
      f"the parameters became NaN/Inf by step {step}; no checkpoint written. "
      + (f"The last good checkpoint is step {last} in {workdir}/checkpoints. " if last
         is not None else "There is no good checkpoint. ")
      + f"Lower config.learning_rate (now {lr}) or check the input data.")


def loss_error(step: int, last: int | None, workdir: str, lr) -> NonFiniteLossError:
  """The error of a run whose training loss became non-finite at ``step``."""
  return NonFiniteLossError(
      f"training loss is NaN/Inf at step {step}; stopped. "
      + (f"The last good checkpoint (step {last}) in {workdir}/checkpoints is kept. "
         if last is not None else "There is no good checkpoint. ")
      + f"Lower config.learning_rate (now {lr}) or check the data.")


def run_metadata(config, ident: dict, task: Task) -> dict:
  """What a run's checkpoints carry besides the step: identity, data set, classes, preprocessing."""
  return dict(ident, dataset=config.dataset, class_names=list(task.class_names),
              preprocess=config.preprocess, **task.metadata)


def corrects_bn(config, task: Task) -> bool:
  """Raw running statistics are only biased towards their initial values when they started there."""
  return bool(config.bn_bias_correction and task.variables is None)


def save_best(workdir: str, variables, ident: dict, num_classes: int, metadata: dict,
              best: dict) -> None:
  """Writes ``variables`` as ``<workdir>/best`` with the ``best`` record (loss, step, epoch)."""
  ckpt_lib.save_variables(os.path.join(workdir, BEST_SUBDIR), variables,
                          model_name=ident["model_name"], num_classes=num_classes,
                          step=best["step"], keep=1,
                          extra_metadata=dict(metadata, best=best, image_size=ident["image_size"]))


def read_best(workdir: str) -> dict | None:
  """The `best` record (loss, step, epoch) of ``<workdir>/best``, or None."""
  path = os.path.join(workdir, BEST_SUBDIR)
  if ckpt_lib.latest_step(path) is None:
    return None
  return ckpt_lib.read_metadata(path).get("best")
