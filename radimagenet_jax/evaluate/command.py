"""The `evaluate` command: a workdir's checkpoint (latest or a step) on a split, with the config the
run was trained with (the workdir's own config.json). A binary task also gets the AUC with its
DeLong 95% CI (positive class: label index 1; the unit is the image, as the split holds them)."""
from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from radimagenet_jax import checkpoints as ckpt_lib
from radimagenet_jax import distributed
from radimagenet_jax.data import tfds_source
from radimagenet_jax.evaluate import roc
from radimagenet_jax.train import config as config_lib
from radimagenet_jax.train import loop, steps, summary as summary_lib
from radimagenet_jax.train.inference import predict, run_eval


def binary_auc(labels, probabilities, class_names) -> dict | None:
  """AUC of P(class 1) with DeLong's 95% CI for a 2-class task (None otherwise, or when the split
  holds one class only)."""
  if probabilities.shape[-1] != 2 or len(set(labels.tolist())) < 2:
    return None
  out = roc.delong_ci(labels, probabilities[:, 1], level=0.95)
  positive = class_names[1] if len(class_names) == 2 else "1"
  return dict(out, method="DeLong", positive_class=positive, unit="image", n=int(len(labels)))


def workdir_config(workdir: str, config=None) -> ml_collections.ConfigDict:
  """The config a workdir's run was trained with (its config.json), or a copy of ``config`` when
  given, whose ``preprocess='auto'`` (a fine-tuning config) becomes the mode the run resolved."""
  config_path = os.path.join(workdir, "config.json")
  saved = None
  if os.path.isfile(config_path):
    with open(config_path) as f:
      saved = ml_collections.ConfigDict(json.load(f))
  if config is None:
    if saved is None:
      raise FileNotFoundError(f"{workdir}: no config.json; expected the workdir of a `pretrain` "
                              f"or `finetune` run.")
    return saved
  config = ml_collections.ConfigDict(config.to_dict())
  if config.get("preprocess") == "auto" and saved is not None:
    config.preprocess = saved.preprocess
  return config


def evaluate_workdir(workdir: str, *, step: int | None = None, split: str | None = None,
                     config=None, source=None) -> dict[str, Any]:
  """`radimagenet-jax evaluate --workdir=DIR [--step N] [--split S]`: the workdir's checkpoint
  (latest, or ``step``) on its config's eval split (or ``split``), with the config it was trained
  with (`workdir_config`); writes ``<workdir>/eval_<split>_step<N>.json``. ``source``: the
  examples of ``split`` when they are not a TFDS split (a fine-tuning run's own sets)."""
  distributed.initialize()
  workdir = config_lib.resolve_workdir(workdir)
  config_lib.check_workdir_writable(workdir)  # before a minute of evaluation, not after
  config = workdir_config(workdir, config)
  if split:
    config.eval_split = split
  step = ckpt_lib.latest_step(workdir) if step is None else int(step)
  if step is None:
    raise FileNotFoundError(f"{workdir}: no checkpoint to evaluate; train first.")
  mesh = distributed.make_mesh()
  if source is None:
    source = tfds_source.open_source(config.dataset, config.eval_split, config.data_dir or None)
  class_names = tfds_source.class_names(source)
  meta = ckpt_lib.read_metadata(workdir, step)
  num_classes = int(meta.get("num_classes") or config.num_classes or len(class_names))
  ckpt_lib.check_identity(meta, loop.identity(config, num_classes), workdir)
  model = loop.create_model(config, num_classes)
  variables = distributed.put_replicated(
      ckpt_lib.load_variables(workdir, meta["model_name"], step=step), mesh)
  eval_fn = steps.compile_eval_step(model, mesh, config.preprocess,
                                    config.get("loss", "softmax_ce"))  # the run's own loss
  print(f"evaluating {workdir} step {step} on {config.dataset} [{config.eval_split}] "
        f"({len(source)} examples)...", flush=True)
  ev = run_eval(config, eval_fn, variables, source, mesh, num_classes)
  result = summary_lib.build(config, step, ev, class_names, 0.0)
  result.pop("images_per_second")
  if num_classes == 2 and not config.get("eval_steps"):  # the whole split: the AUC's scores
    labels, probabilities = predict(config, model, variables, source, mesh)
    auc = binary_auc(labels, probabilities, class_names)
    if auc is not None:
      result["auc"] = auc
  if distributed.is_main_process():
    path = os.path.join(workdir, f"eval_{config.eval_split}_step{step}.json")
    loop.write_json(path, result)
    summary_lib.print_summary(result)
    print(f"wrote {path}")
  return result
