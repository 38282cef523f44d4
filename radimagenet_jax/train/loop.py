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
from radimagenet_jax.train import inference, optim, preemption, state as state_lib, steps
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


def fit(config, workdir: str, task: Task) -> dict[str, Any]:
  """Trains (resuming from ``workdir``), evaluates, writes summary.json; returns the summary."""
  distributed.initialize()
  distributed.enable_compilation_cache(config.compilation_cache_dir or None)
  workdir = config_lib.resolve_workdir(workdir)
  main = distributed.is_main_process()
  mesh = distributed.make_mesh()

  # ---- Every check before the first compile or write ----
  config_lib.validate(config, extra=config.keys(), device_count=mesh.devices.size)
  config_lib.check_workdir_writable(workdir)
  num_classes = config.num_classes or len(task.class_names)
  if num_classes < len(task.class_names):
    raise ValueError(f"config.num_classes={config.num_classes} is smaller than the "
                     f"{len(task.class_names)} classes of {config.dataset}; use 0 (from the "
                     f"dataset) or at least {len(task.class_names)}.")
  local_bs = distributed.process_batch_size(config.batch_size, mesh)
  if config.get("partial_batch", False) and jax.process_count() > 1:
    raise ValueError(f"config.partial_batch=True (Keras's partial last batch) runs on one process; "
                     f"this job has {jax.process_count()}. Set partial_batch=False.")
  steps_per_epoch, total_steps, warmup = schedule_lengths(config, len(task.train_source))
  eval_every = steps_per_epoch if config.eval_every < 0 else config.eval_every
  ident = identity(config, num_classes)
  os.makedirs(workdir, exist_ok=True)
  mngr = ckpt_lib.manager(workdir, keep=config.keep_checkpoints)
  start = check_resume(config, workdir, ident, mngr)
  write_json(os.path.join(workdir, "config.json"), config)

  # ---- Model, optimizer, state (replicated on the mesh) ----
  model = create_model(config, num_classes, task.frozen_bn)
  lr_fn = optim.create_learning_rate_fn(config, total_steps, warmup)
  tx = optim.freeze(optim.create_optimizer(config, lr_fn), task.trainable)
  state = state_lib.create(model, tx, config.seed, config.image_size,
                           distributed.replicated(mesh), variables=task.variables,
                           init_law=config.init_law)
  loss, partial = config.get("loss", "softmax_ce"), bool(config.get("partial_batch", False))
  train_fn = steps.compile_train_step(model, tx, mesh, config.preprocess, task.trainable, loss)
  # An epoch's partial last batch (partial_batch=True, one process): replicated, compiled once.
  partial_fn = steps.compile_train_step(model, tx, mesh, config.preprocess, task.trainable, loss,
                                        replicate_batch=True)
  eval_fn = steps.compile_eval_step(model, mesh, config.preprocess, loss)
  loader = pipeline.make_loader(task.train_source, batch_size=local_bs,
                                image_size=config.image_size, preprocess_mode=config.preprocess,
                                augment=config.augment, shuffle=True, seed=config.seed,
                                num_epochs=None, worker_count=config.worker_count,
                                preprocess_on_device=True,
                                augment_on_device=config.augment_on_device,
                                partial_batch=partial)
  data_iter = iter(loader)

  # ---- Resume ----
  if start is not None:
    variables, train_part = ckpt_lib.restore(mngr, start, variables=state.variables,
                                             train_state=state.train_part(), data_iter=data_iter)
    state = state.replace_from(variables, train_part)
  start = int(jax.device_get(state.step))
  best = read_best(workdir) if task.select_best else None

  writer = writers.MetricWriter(workdir, enabled=main)
  progress = writers.Progress(total_steps, start, enabled=main, bar=config.progress_bar)
  if main:
    progress.log(f"{ident['model_name']} on {config.dataset}: {len(task.train_source)} train "
                 f"examples, {num_classes} classes, global batch {config.batch_size} on "
                 f"{jax.device_count()} device(s) / {jax.process_count()} process(es), steps "
                 f"{start} -> {total_steps}" + (" (resumed)" if start else "")
                 + (f"; {task.describe}" if task.describe else ""))
  metadata = run_metadata(config, ident, task)
  correct_bn = corrects_bn(config, task)

  def inference_variables(step):
    if not correct_bn:
      return state.variables
    return {"params": state.params,
            "batch_stats": state_lib.bn_bias_corrected(state.batch_stats, step)}

  def save(step, force=False):
    if not bool(jax.device_get(steps.all_finite(state.params))):
      raise params_error(step, mngr.latest_step(), workdir, config.learning_rate)
    ckpt_lib.save(mngr, step, variables=inference_variables(step), train_state=state.train_part(),
                  data_iter=data_iter, metadata=dict(metadata, step=step), force=force)

  def evaluate(step):
    ev = inference.run_eval(config, eval_fn, inference_variables(step), task.eval_source, mesh,
                             num_classes)
    writer.write(step, config.eval_split, {k: ev[k] for k in ("loss", "top1", "top5")})
    progress.log(f"step {step} {config.eval_split}: loss {ev['loss']:.4f} top-1 {ev['top1']:.3f}"
                 f" top-5 {ev['top5']:.3f}")
    return ev

  def keep_best(step, ev):
    nonlocal best
    if not task.select_best or not math.isfinite(ev["loss"]):
      return
    if best is None or ev["loss"] < best["loss"]:
      best = {"loss": float(ev["loss"]), "step": int(step), "epoch": step / steps_per_epoch}
      save_best(workdir, inference_variables(step), ident, num_classes, metadata, best)

  # ---- Loop ----
  acc = jax.device_put(steps.init_train_metrics(), distributed.replicated(mesh))
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
        if len(batch["label"]) < local_bs:
          state, acc = partial_fn(state, acc, distributed.put_replicated(batch, mesh))
        else:
          state, acc = train_fn(state, acc, distributed.to_global(batch, mesh))
        if step == start + 1:
          # The first step includes compilation: keep it out of the images/s figures.
          jax.block_until_ready(acc)
          if main:
            progress.log(f"compiled and ran the first step in {time.perf_counter() - t0:.1f} s")
          throughput.reset()
        else:
          throughput.add(config.batch_size)
        is_last = step == total_steps
        stop = preemption.stop_agreed()
        do_ckpt = is_last or stop or (config.checkpoint_every
                                      and step % config.checkpoint_every == 0)
        if is_last or do_ckpt or step % config.log_every == 0:
          m = steps.summarize(acc)
          if m["first_bad_step"] is not None:
            raise loss_error(m["first_bad_step"], mngr.latest_step(), workdir,
                             config.learning_rate)
          acc = jax.device_put(steps.init_train_metrics(), distributed.replicated(mesh))
          rate = throughput.rate()
          writer.write(step, "train", {
              "loss": m["loss"], "top1": m["top1"], "top5": m["top5"],
              "learning_rate": float(lr_fn(step - 1)), "images_per_second": rate,
              "epoch": step / steps_per_epoch})
          progress.update(step, f"loss {m['loss']:.4f} top1 {m['top1']:.3f} {rate:.1f} img/s")
        if do_ckpt:
          save(step, force=is_last or stop)
        if stop and not is_last:
          mngr.wait_until_finished()
          raise preemption.Preempted(step, workdir)
        if eval_every and step % eval_every == 0 and not is_last:
          keep_best(step, evaluate(step))
  finally:
    progress.close()
    mngr.wait_until_finished()

  # ---- Final evaluation and summary ----
  ev = evaluate(total_steps)
  keep_best(total_steps, ev)
  writer.close()
  mngr.close()
  summary = summary_lib.build(config, total_steps, ev, task.class_names, throughput.overall())
  if best is not None:
    summary["best"] = best
  if main:
    write_json(os.path.join(workdir, "summary.json"), summary)
    summary_lib.print_summary(summary)
  return summary


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
