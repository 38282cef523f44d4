"""The pretraining loop: `train_and_evaluate(config, workdir)` and `evaluate(config, workdir)`.

Reads top to bottom in sections (config, mesh, input pipeline, model and optimizer, checkpoint and
resume, loop, summary). Every process runs the same code; only process 0 logs and writes files
other than checkpoints. Re-running on the same workdir resumes from the latest checkpoint exactly.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from radimagenet_jax import distributed
from radimagenet_jax.data import pipeline
from radimagenet_jax import checkpoints as ckpt_lib
from radimagenet_jax.train import metrics as metrics_lib
from radimagenet_jax.train import optim, state as state_lib, steps

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Fields train_and_evaluate reads; a config lacking one (or carrying an unknown one) is an error.
REQUIRED_KEYS = (
    "dataset", "data_dir", "build_dataset", "train_split", "eval_split", "image_size", "preprocess",
    "augment", "worker_count", "model", "num_classes", "dropout_rate", "dtype", "batch_size",
    "eval_batch_size", "num_train_steps", "num_epochs", "optimizer", "learning_rate", "momentum",
    "weight_decay", "warmup_steps", "warmup_epochs", "schedule", "log_every", "eval_every",
    "eval_steps", "checkpoint_every", "keep_checkpoints", "seed", "progress_bar",
    "bn_bias_correction")


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or Inf."""


# ---- Config --------------------------------------------------------------------------------------

def validate_config(config) -> None:
  """Checks keys and choices up front, so a typo fails before any compile or write."""
  keys = set(config.keys())
  missing, unknown = sorted(set(REQUIRED_KEYS) - keys), sorted(keys - set(REQUIRED_KEYS))
  if missing or unknown:
    raise ValueError(f"config: missing keys {missing}, unknown keys {unknown}; valid keys: "
                     f"{', '.join(sorted(REQUIRED_KEYS))}.")
  from radimagenet_jax.data import PREPROCESS_MODES, augment
  from radimagenet_jax.models import registry
  registry.get_spec(config.model)  # raises listing the valid model names
  choices = {"preprocess": tuple(PREPROCESS_MODES), "augment": tuple(augment.PRESETS),
             "dtype": tuple(DTYPES), "optimizer": optim.OPTIMIZERS, "schedule": optim.SCHEDULES}
  for key, valid in choices.items():
    if config[key] not in valid:
      raise ValueError(f"config.{key}={config[key]!r} is not valid; choices: {', '.join(valid)}.")
  if config.batch_size <= 0 or config.image_size <= 0:
    raise ValueError(f"config.batch_size={config.batch_size} and config.image_size="
                     f"{config.image_size} must be positive.")


def _save_config(config, workdir):
  if distributed.is_main_process():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


# ---- Input pipeline ------------------------------------------------------------------------------

def _open(config, split):
  return pipeline.open_source(config.dataset, split, config.data_dir or None,
                              build=config.build_dataset)


def _eval_batches(config, source, mesh, batch_size):
  """Yields full-size global eval batches with a 0/1 'mask' (padding for the last batch). Every
  process yields the same number of batches, so collectives line up on multi-host."""
  local_bs = distributed.process_batch_size(batch_size, mesh)
  loader = pipeline.make_loader(source, batch_size=local_bs, image_size=config.image_size,
                                preprocess_mode=config.preprocess, shuffle=False, num_epochs=1,
                                worker_count=config.worker_count, drop_remainder=False,
                                preprocess_on_device=True)
  n = math.ceil(len(source) / batch_size)
  if config.eval_steps:
    n = min(n, config.eval_steps)
  it = iter(loader)
  # Pixels as the loader ships them (preprocessed in the jitted step): padding takes the shape
  # and dtype of the first batch; a process with no examples at all falls back to RGB uint8.
  pixel_shape, pixel_dtype = (config.image_size, config.image_size, 3), np.uint8
  for _ in range(n):
    batch = next(it, None)
    if batch is not None:
      pixel_shape, pixel_dtype = batch["image"].shape[1:], batch["image"].dtype
    images = np.zeros((local_bs,) + tuple(pixel_shape), pixel_dtype)
    labels, mask = np.zeros(local_bs, np.int32), np.zeros(local_bs, np.float32)
    if batch is not None:
      k = len(batch["label"])
      images[:k], labels[:k], mask[:k] = batch["image"], batch["label"], 1.0
    yield distributed.to_global({"image": images, "label": labels, "mask": mask}, mesh)


def run_eval(config, eval_fn, variables, source, mesh, num_classes) -> dict:
  """Loss / top-1 / top-5 / confusion over the eval split (metric sums stay on device)."""
  batch_size = config.eval_batch_size or config.batch_size
  acc = jax.device_put(steps.init_eval_metrics(num_classes), distributed.replicated(mesh))
  for batch in _eval_batches(config, source, mesh, batch_size):
    acc = eval_fn(variables, acc, batch)
  return steps.summarize(acc)


# ---- Model and optimizer -------------------------------------------------------------------------

def create_model(config, num_classes):
  from radimagenet_jax.models import registry
  spec = registry.get_spec(config.model)
  return spec.module_cls(num_classes=num_classes, dropout_rate=config.dropout_rate,
                         dtype=DTYPES[config.dtype])


def _schedule_lengths(config, num_train_examples):
  steps_per_epoch = max(num_train_examples // config.batch_size, 1)
  total = config.num_train_steps or int(math.ceil(config.num_epochs * steps_per_epoch))
  warmup = config.warmup_steps or int(config.warmup_epochs * steps_per_epoch)
  return steps_per_epoch, total, warmup


def _identity(config, num_classes):
  from radimagenet_jax.models import registry
  return {"model_name": registry.get_spec(config.model).name, "num_classes": int(num_classes),
          "image_size": int(config.image_size)}


# ---- Training ------------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates, writes the summary.

  Returns the summary dict (also written to ``workdir/summary.json``)."""
  validate_config(config)
  distributed.initialize()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  main = distributed.is_main_process()

  # ---- Mesh and input pipeline ----
  mesh = distributed.make_mesh()
  local_bs = distributed.process_batch_size(config.batch_size, mesh)
  train_source = _open(config, config.train_split)
  eval_source = _open(config, config.eval_split)
  class_names = pipeline.class_names(train_source)
  num_classes = config.num_classes or len(class_names)
  steps_per_epoch, total_steps, warmup = _schedule_lengths(config, len(train_source))

  # ---- A workdir of another model/shape is refused before anything is written ----
  identity = _identity(config, num_classes)
  os.makedirs(workdir, exist_ok=True)
  mngr = ckpt_lib.manager(workdir, keep=config.keep_checkpoints)
  start = mngr.latest_step()
  if start is not None:
    ckpt_lib.check_identity(ckpt_lib.read_metadata(workdir, start), identity, workdir)
  _save_config(config, workdir)

  # ---- Model, optimizer, state (replicated on the mesh) ----
  model = create_model(config, num_classes)
  lr_fn = optim.create_learning_rate_fn(config, total_steps, warmup)
  tx = optim.create_optimizer(config, lr_fn)
  state = state_lib.create(model, tx, config.seed, config.image_size,
                           distributed.replicated(mesh))
  train_fn = steps.compile_train_step(model, tx, mesh, config.preprocess)
  eval_fn = steps.compile_eval_step(model, mesh, config.preprocess)

  loader = pipeline.make_loader(train_source, batch_size=local_bs, image_size=config.image_size,
                                preprocess_mode=config.preprocess, augment=config.augment,
                                shuffle=True, seed=config.seed, num_epochs=None,
                                worker_count=config.worker_count, preprocess_on_device=True)
  data_iter = iter(loader)

  # ---- Resume ----
  if start is not None:
    variables, train_part = ckpt_lib.restore(mngr, start, variables=state.variables,
                                             train_state=state.train_part(), data_iter=data_iter)
    state = state.replace_from(variables, train_part)
  start = int(jax.device_get(state.step))

  writer = metrics_lib.MetricWriter(workdir, enabled=main)
  progress = metrics_lib.Progress(total_steps, start, enabled=main, bar=config.progress_bar)
  if main:
    progress.log(f"{identity['model_name']} on {config.dataset}: {len(train_source)} train "
                 f"examples, {num_classes} classes, global batch {config.batch_size} on "
                 f"{jax.device_count()} device(s) / {jax.process_count()} process(es), steps "
                 f"{start} -> {total_steps}" + (" (resumed)" if start else ""))
  metadata = dict(identity, dataset=config.dataset, class_names=class_names)

  def inference_variables(step):
    # What evaluation and checkpoint consumers use; the raw statistics stay in the train state.
    if not config.bn_bias_correction:
      return state.variables
    return {"params": state.params,
            "batch_stats": state_lib.bn_bias_corrected(state.batch_stats, step)}

  def save(step, force=False):
    ckpt_lib.save(mngr, step, variables=inference_variables(step),
                  train_state=state.train_part(),
                  data_iter=data_iter, metadata=dict(metadata, step=step), force=force)

  # ---- Loop ----
  acc = jax.device_put(steps.init_train_metrics(), distributed.replicated(mesh))
  throughput = metrics_lib.Throughput()
  try:
    for step in range(start + 1, total_steps + 1):
      batch = distributed.to_global(next(data_iter), mesh)
      state, acc = train_fn(state, acc, batch)
      if step == start + 1:
        # The first step includes compilation: keep it out of the images/s figures.
        jax.block_until_ready(acc)
        throughput.reset()
      else:
        throughput.add(config.batch_size)
      is_last = step == total_steps
      do_ckpt = is_last or (config.checkpoint_every and step % config.checkpoint_every == 0)
      # Fetch metrics on log steps, and always before a checkpoint: a NaN state is never saved.
      if is_last or do_ckpt or step % config.log_every == 0:
        m = steps.summarize(acc)
        if m["first_bad_step"] is not None:
          raise NonFiniteLossError(
              f"training loss is NaN/Inf at step {m['first_bad_step']}; stopped. The last good "
              f"checkpoint (step {mngr.latest_step()}) in {workdir}/checkpoints is kept. Lower "
              f"config.learning_rate (now {config.learning_rate}) or check the input data.")
        acc = jax.device_put(steps.init_train_metrics(), distributed.replicated(mesh))
        rate = throughput.rate()
        scalars = {"loss": m["loss"], "top1": m["top1"], "top5": m["top5"],
                   "learning_rate": float(lr_fn(step - 1)), "images_per_second": rate,
                   "epoch": step / steps_per_epoch}
        writer.write(step, "train", scalars)
        progress.update(step, f"loss {m['loss']:.4f} top1 {m['top1']:.3f} {rate:.1f} img/s")
      if do_ckpt:
        save(step, force=is_last)
      if config.eval_every and step % config.eval_every == 0 and not is_last:
        ev = run_eval(config, eval_fn, inference_variables(step), eval_source, mesh, num_classes)
        writer.write(step, config.eval_split, {k: ev[k] for k in ("loss", "top1", "top5")})
        progress.log(f"step {step} {config.eval_split}: loss {ev['loss']:.4f} top-1 "
                     f"{ev['top1']:.3f} top-5 {ev['top5']:.3f}")
  finally:
    progress.close()
    mngr.wait_until_finished()

  # ---- Final evaluation and summary ----
  ev = run_eval(config, eval_fn, inference_variables(total_steps), eval_source, mesh,
                num_classes)
  writer.write(total_steps, config.eval_split, {k: ev[k] for k in ("loss", "top1", "top5")})
  writer.close()
  mngr.close()
  summary = _summary(config, total_steps, ev, class_names, throughput.overall())
  if main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    metrics_lib.print_summary(summary)
  return summary


def _summary(config, step, ev, class_names, images_per_second):
  confusion = ev.pop("confusion")
  return {"model": config.model, "dataset": config.dataset, "split": config.eval_split,
          "step": int(step), "eval": ev, "images_per_second": images_per_second,
          "chance_top1": metrics_lib.chance_top1(confusion),
          "per_class": metrics_lib.per_class_report(confusion, class_names),
          "confusion": np.asarray(confusion).tolist(), "class_names": list(class_names)}


# ---- Evaluation of a finished (or running) workdir -----------------------------------------------

def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the latest checkpoint in ``workdir`` on ``config.eval_split``; prints the result
  and writes ``workdir/eval_<split>_step<N>.json``."""
  validate_config(config)
  distributed.initialize()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  step = ckpt_lib.latest_step(workdir)
  if step is None:
    raise FileNotFoundError(f"{workdir}: no checkpoint to evaluate; train first with "
                            f"`radimagenet-jax pretrain --config=... --workdir={workdir}`.")
  mesh = distributed.make_mesh()
  source = _open(config, config.eval_split)
  class_names = pipeline.class_names(source)
  num_classes = config.num_classes or len(class_names)
  ckpt_lib.check_identity(ckpt_lib.read_metadata(workdir, step), _identity(config, num_classes),
                          workdir)
  model = create_model(config, num_classes)
  variables = distributed.put_replicated(
      ckpt_lib.load_variables(workdir, config.model, step=step), mesh)
  ev = run_eval(config, steps.compile_eval_step(model, mesh, config.preprocess), variables, source, mesh,
                num_classes)
  result = _summary(config, step, ev, class_names, 0.0)
  result.pop("images_per_second")
  if distributed.is_main_process():
    path = os.path.join(workdir, f"eval_{config.eval_split}_step{step}.json")
    with open(path, "w") as f:
      json.dump(result, f, indent=2)
    metrics_lib.print_summary(result)
    print(f"wrote {path}")
  return result
