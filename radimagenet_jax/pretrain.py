"""Pretraining (RadImageNet, or the built-in demo data) on the training engine.

    from radimagenet_jax import pretrain
    pretrain.train_and_evaluate(config, workdir)   # resumes from the latest checkpoint in workdir

`radimagenet-jax pretrain --config=configs/pretrain.py:demo --workdir=runs/demo` calls this. A
pretraining run is the engine (`train.loop.fit`) with a random initialisation and every parameter
trainable; the datasets are the config's train and eval splits.
"""
from __future__ import annotations

from typing import Any

from radimagenet_jax.data import tfds_source
from radimagenet_jax.train import config as config_lib
from radimagenet_jax.train import loop


def validate_config(config) -> None:
  """The engine's checks; pretraining adds no fields of its own."""
  config_lib.validate(config)


def _open(config, split):
  return tfds_source.open_source(config.dataset, split, config.data_dir or None,
                                 build=config.build_dataset)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates, writes the summary.

  Returns the summary dict (also written to ``workdir/summary.json``)."""
  validate_config(config)
  train_source = _open(config, config.train_split)
  eval_source = _open(config, config.eval_split)
  task = loop.Task(train_source=train_source, eval_source=eval_source,
                   class_names=tfds_source.class_names(train_source))
  return loop.fit(config, workdir, task)
