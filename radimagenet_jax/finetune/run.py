"""One fine-tuning run: `finetune(config, workdir)`, the `radimagenet-jax finetune` command.

The run is the training engine (`train.loop.fit`) with: the data set's train / validation / test
sources (a cross-validation fold, or the builder's splits), starting weights with a fresh head
(`init`), a freeze mask and the frozen BatchNorm layers (`freeze`), validation every epoch and the
lowest-validation-loss checkpoint kept as `best`. The test split is then predicted with `best`.

The workdir afterwards (besides the engine's checkpoints/, best/, metrics.jsonl, summary.json):
  run.json          settings, what was loaded, trainable counts, the best step/epoch, status
  splits.json       the example ids of the train, validation and test sets (auditable splits)
  predictions.csv   id, patient, label, score_<k> per class (test split, `best` weights)
  metrics.json      AUC with its DeLong CI, accuracy, sensitivity/specificity... (evaluate package)
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import ml_collections

from radimagenet_jax import checkpoints, distributed, evaluate, models
from radimagenet_jax.data import tfds_source
from radimagenet_jax.finetune import folds, freeze, initial_weights as init_lib, protocols
from radimagenet_jax.train import config as config_lib
from radimagenet_jax.train import inference, loop, losses, preemption

FINETUNE_KEYS = ("init", "inits", "freeze", "fold", "num_folds", "val_fraction",
                 "sweep", "sweep_models", "sweep_inits", "sweep_folds", "shard", "parallel_runs",
                 "sweep_scenarios", "protocol") + protocols.FIELDS


def validate_config(config) -> None:
  """The engine's checks plus fine-tuning's, before anything is opened or written."""
  mode = config.preprocess
  if mode == "auto":  # the engine knows the concrete modes only
    config = _with(config, preprocess="radimagenet")
  config_lib.validate(config, extra=FINETUNE_KEYS)
  freeze.check_mode(config.freeze)
  if config.fold not in ("none", "all") and not str(config.fold).isdigit():
    raise ValueError(f"config.fold={config.fold!r}: expected a fold number 0..{config.num_folds - 1}"
                     f", 'none' (the builder's train/validation/test splits) or 'all' (every fold).")
  if str(config.fold).isdigit() and int(config.fold) >= config.num_folds:
    raise ValueError(f"config.fold={config.fold} is not below config.num_folds={config.num_folds}.")
  if not 0 < config.val_fraction < 1:
    raise ValueError(f"config.val_fraction={config.val_fraction} must be in (0, 1).")
  if config.protocol not in protocols.PROTOCOLS:
    raise ValueError(f"config.protocol={config.protocol!r}: expected one of "
                     f"{', '.join(protocols.PROTOCOLS)}.")
  losses.check(config.loss)
  batched = [f"{k}={config[k]!r}" for k, ok in (("partial_batch", not config.partial_batch),
                                                ("loss", config.loss == "softmax_ce"),
                                                ("carry_over_folds", not config.carry_over_folds),
                                                ("optimizer", config.optimizer != "keras_adam"))
             if not ok]
  if config.parallel_runs > 1 and batched:
    raise ValueError(f"config.parallel_runs={config.parallel_runs} (batched runs) does not support "
                     f"{', '.join(batched)}; use parallel_runs=1 for the paper protocol.")


def _with(config, **values):
  """A copy of ``config`` with ``values`` set (the command-line config is locked)."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.update(values)
  return copy


def finetune(config, workdir: str) -> dict[str, Any]:
  """Fine-tunes, selects the best epoch on validation, predicts the test set; returns run.json.

  ``config.fold == 'all'``: one run per fold in ``<workdir>/fold<k>`` (each resumable), and a
  dict {fold: run.json}; `radimagenet-jax report <workdir>/fold*` pools them."""
  validate_config(config)
  if config.fold == "all":
    with preemption.catch_sigterm():  # SIGTERM between two folds is kept: the next one stops
      return {k: finetune(_with(config, fold=str(k)), os.path.join(workdir, f"fold{k}"))
              for k in range(config.num_folds)}
  workdir = config_lib.resolve_workdir(workdir)
  config_lib.check_workdir_writable(workdir)
  # Before `prepare` reads the init weights (a checkpoint restore starts JAX's backends, after
  # which a multi-process job can no longer be joined).
  distributed.initialize()
  prepared = prepare(config, carry_from=carried_fold(config, workdir))
  os.makedirs(workdir, exist_ok=True)
  # SIGTERM in any phase (training, validation, the test predictions, the records) stops cleanly:
  # in training after the next step (the engine), later once the records are written.
  with preemption.catch_sigterm():
    summary = loop.fit(prepared.config, workdir, prepared.task)
    run = finish(prepared, workdir, summary)
    if preemption.stop_agreed():
      raise preemption.Preempted(None, workdir, after="the run finished")
  return run


RUN_SETS = ("train", "validation", "test")


def evaluate_run(workdir: str, *, step: int | None = None, split: str | None = None,
                 config=None) -> dict[str, Any]:
  """`radimagenet-jax evaluate` on a fine-tuning run's workdir: its checkpoint (latest, or
  ``step``) on one of the run's own sets, rebuilt from its config as in training: ``validation``
  (the default: the set its `best` was chosen on), ``train`` or ``test`` (its fold); any other
  ``split`` is a TFDS split of the data set. (The data set's own 'validation' split is not the
  run's: with folds, most of it is in the run's training set.)"""
  from radimagenet_jax.evaluate import command as evaluate_command  # pylint: disable=g-import-not-at-top
  workdir = config_lib.resolve_workdir(workdir)
  config = evaluate_command.workdir_config(workdir, config)
  split = split or "validation"
  source = load_sets(config)[1][split] if split in RUN_SETS else None
  return evaluate_command.evaluate_workdir(workdir, step=step, split=split, config=config,
                                           source=source)


@dataclasses.dataclass
class Prepared:
  """A run ready for the engine: its config (preprocess resolved), data, task and run.json."""
  config: Any
  sets: dict
  sources: dict
  num_classes: int
  task: loop.Task
  run: dict


def load_sets(config) -> tuple[dict, dict]:
  """(sets, sources) of the run's fold (test) + carved-out validation, or the builder's splits."""
  data_dir = config.data_dir or None
  fold = None if config.fold == "none" else int(config.fold)
  if config.build_dataset:
    tfds_source.open_source(config.dataset, "train", data_dir, build=True)
  sets = folds.fold_splits(config.dataset, data_dir, fold,
                           config.num_folds if fold is not None else None, config.val_fraction,
                           config.seed, official=bool(config.get("official_folds", True)))
  return sets, folds.make_sources(sets, config.dataset, data_dir)


def carried_fold(config, workdir: str) -> str | None:
  """With ``carry_over_folds`` and fold K > 0: the run directory of fold K-1 (the workdir's name
  with ``fold<K-1>`` for its trailing ``fold<K>``), which must be finished; else None."""
  if not config.get("carry_over_folds") or config.fold in ("none", "all") or int(config.fold) == 0:
    return None
  k = int(config.fold)
  name = os.path.basename(os.path.normpath(workdir))
  if not re.search(rf"fold{k}$", name):
    raise ValueError(f"carry_over_folds=True: the run directory {workdir} does not end in "
                     f"'fold{k}', so fold {k - 1}'s run cannot be found next to it.")
  previous = os.path.join(os.path.dirname(os.path.normpath(workdir)),
                          re.sub(rf"fold{k}$", f"fold{k - 1}", name))
  if loop.read_best(previous) is None or not os.path.isfile(os.path.join(previous, "run.json")):
    raise ValueError(f"carry_over_folds=True: fold {k} continues from fold {k - 1}'s last weights "
                     f"(breast_train.py's leak), but {previous} holds no finished run; run the "
                     f"folds in order, on one shard.")
  return previous


def prepare(config, data: tuple[dict, dict] | None = None, carry_from: str | None = None
            ) -> Prepared:
  """Resolves the init and preprocessing, opens the data (or takes ``data`` = load_sets(config)),
  loads the starting weights and builds the freeze mask: everything before training.
  ``carry_from``: a finished run whose last weights (head included) replace the init's
  (``carry_over_folds``, the official breast script's behaviour)."""
  label, path = init_lib.resolve(config)
  config = _with(config, preprocess=init_lib.preprocess_mode(config, label, path))
  spec = models.get_spec(config.model)
  sets, sources = data if data is not None else load_sets(config)
  class_names = tfds_source.class_names(sources["train"])
  num_classes = config.num_classes or len(class_names)
  if num_classes != len(class_names):  # the test metrics need one name per score column
    raise ValueError(f"config.num_classes={config.num_classes}, but {config.dataset} has "
                     f"{len(class_names)} classes ({', '.join(map(str, class_names))}); expected "
                     f"0 (from the data) or {len(class_names)}. Nothing was trained.")

  # ---- Starting weights, freeze mask, frozen BatchNorm layers ----
  variables, init_info = init_lib.initial_variables(config, num_classes, label, path)
  if carry_from is not None:  # the previous fold's LAST weights, as the Keras model object held
    variables = checkpoints.load_variables(carry_from, spec.name)
    init_info = dict(init_info, carried_over_from=carry_from, head="carried over")
  if variables is None:  # random init: the mask needs the parameter shapes only (no compile)
    params = models.variable_shapes(spec.module_cls(num_classes=num_classes),
                                    config.image_size)["params"]
  else:
    params = variables["params"]
  mask = freeze.trainable_mask(spec.name, params, config.freeze)
  counts = freeze.describe(spec.name, params, config.freeze)
  frozen_bn = freeze.frozen_bn_layers(spec.name, mask)
  run = {"model": spec.name, "dataset": config.dataset, "freeze": config.freeze,
         "lr": float(config.learning_rate), "fold": None if config.fold == "none" else int(config.fold),
         "class_names": list(class_names), "preprocess": config.preprocess,
         "scenario": f"{spec.name}-{config.freeze}-lr{config.learning_rate:g}",
         "sets": folds.summary(sets), "protocol": protocols.name_of(config.to_dict()),
         "patient_overlap": folds.overlap(sets),
         **init_info, **counts, "status": "running"}
  task = loop.Task(train_source=sources["train"], eval_source=sources["validation"],
                   class_names=class_names,
                   variables=variables, trainable=mask, frozen_bn=frozen_bn, select_best=True,
                   metadata={"init": label, "init_source": path or "random",
                             "freeze": config.freeze},
                   describe=(f"init {label}, freeze {config.freeze}: "
                             f"{counts['trainable_params']:,} of {counts['total_params']:,} "
                             f"parameters train ({counts['trainable_backbone_params']:,} in the "
                             f"backbone), preprocess {config.preprocess}"))
  return Prepared(config, sets, sources, num_classes, task, run)


def finish(prepared: Prepared, workdir: str, summary: dict) -> dict[str, Any]:
  """After training: the test split predicted with `best`; writes predictions.csv, metrics.json,
  splits.json and run.json (status done); returns run.json."""
  config, sets, sources, run = prepared.config, prepared.sets, prepared.sources, prepared.run
  class_names, num_classes = prepared.task.class_names, prepared.num_classes
  spec = models.get_spec(config.model)
  mesh = distributed.make_mesh()
  best_dir = os.path.join(workdir, loop.BEST_SUBDIR)
  best_meta = checkpoints.read_metadata(best_dir)
  model = loop.create_model(config, num_classes)
  best_vars = distributed.put_replicated(checkpoints.load_variables(best_dir, spec.name), mesh)
  labels, probs = inference.predict(config, model, best_vars, sources["test"], mesh)
  # Thresholds (Youden, target sensitivity) are chosen on validation, then applied to test.
  validation = inference.predict(config, model, best_vars, sources["validation"], mesh)
  metrics = dict(evaluate.classification_metrics(labels, probs, list(class_names),
                                                 validation=validation), split="test",
                 best_step=best_meta["best"]["step"], best_epoch=best_meta["best"]["epoch"])
  run = dict(run, status="done", best_step=best_meta["best"]["step"],
             best_epoch=best_meta["best"]["epoch"], best_validation_loss=best_meta["best"]["loss"],
             final_validation_loss=summary["eval"]["loss"])
  if distributed.is_main_process():
    loop.write_json(os.path.join(workdir, "splits.json"), folds.audit(sets))
    evaluate.write_predictions(os.path.join(workdir, "predictions.csv"),
                               [e.id for e in sets["test"]], [e.group for e in sets["test"]],
                               labels, probs)
    loop.write_json(os.path.join(workdir, "metrics.json"), metrics)
    loop.write_json(os.path.join(workdir, "run.json"), run)
    auc = metrics.get("auc")
    print(f"test ({len(labels)} examples, best epoch {run['best_epoch']:.1f}): AUC "
          + (f"{auc:.3f} [{metrics['ci_low']:.3f}, {metrics['ci_high']:.3f}]"
             if auc is not None and metrics.get("ci_low") is not None else str(auc))
          + f", accuracy {metrics['accuracy']:.3f}")
    for warning in evaluate.run_warnings(metrics, probs):
      print(f"WARNING: {warning}")
    for name in ("run.json", "metrics.json", "predictions.csv", "splits.json"):
      print(f"wrote {os.path.join(workdir, name)}")
  return run
