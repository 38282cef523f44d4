"""The training engine's config: every field written once, with its default, and the checks that
run before anything is compiled or written.

Config files (`configs/pretrain.py`, `configs/finetune.py`) start from `base_config()` and change
values; a command that needs more fields adds them (`extra` in `validate`). Unknown keys are errors.
"""
from __future__ import annotations

import os
from typing import Iterable

import jax.numpy as jnp
import ml_collections

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Fields that may change when a run resumes (they do not change what is trained).
RESUMABLE_CHANGES = ("progress_bar", "log_every", "eval_every", "eval_steps", "checkpoint_every",
                     "keep_checkpoints", "worker_count", "data_dir", "build_dataset",
                     "eval_batch_size", "num_train_steps", "num_epochs", "compilation_cache_dir",
                     "augment_on_device", "init_law")


def base_config() -> ml_collections.ConfigDict:
  """The engine's fields with their defaults (those of RadImageNet pretraining)."""
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = "radimagenet/default"    # TFDS name[/config]; built with `radimagenet-jax build`
  c.data_dir = ""                      # TFDS data dir ("": $TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.build_dataset = False              # build the TFDS dataset first if it is missing
  c.train_split = "train"
  c.eval_split = "validation"
  c.image_size = 224
  c.preprocess = "radimagenet"         # radimagenet | caffe | imagenet | unit | tf
  c.augment = "none"                   # none | paper | paper_noflip
  # auto | on | off: the jitted step warps (the workers ship pixels + transform parameters) instead
  # of the worker processes; auto: on unless JAX's backend is the CPU (data/augment_device.py).
  c.augment_on_device = "auto"
  c.worker_count = 0                   # grain worker processes (0: in the main process)
  # Model.
  c.model = "resnet50"
  c.num_classes = 0                    # 0: from the dataset's label feature
  c.dropout_rate = 0.5
  # Random init (training from scratch): lecun_normal kernels (Flax's default) or glorot_uniform
  # (Keras's layer default, the original's). Only a fresh start reads it, so it may change on resume.
  c.init_law = "lecun_normal"
  c.dtype = "float32"                  # compute dtype: float32 | bfloat16 (params stay float32)
  # Evaluate/checkpoint BatchNorm running statistics with the weight of their initial values
  # (0.99**step) divided out; matters for short runs from scratch only (train/state.py).
  c.bn_bias_correction = True
  # Optimisation. batch_size is GLOBAL (split over all processes and devices).
  c.batch_size = 512
  c.eval_batch_size = 0                # 0: same as batch_size
  c.num_train_steps = 0                # > 0 wins over num_epochs
  c.num_epochs = 30.0
  c.optimizer = "sgd"                  # sgd | adam | adamw
  c.learning_rate = 0.1                # peak, reached after the warmup
  c.momentum = 0.9                     # sgd momentum; adam/adamw b1
  c.adam_epsilon = 1e-7                # Keras's Adam default (optax's is 1e-8)
  c.weight_decay = 1e-4                # sgd/adam: L2 added to the gradient; adamw: decoupled
  c.warmup_steps = 0                   # > 0 wins over warmup_epochs
  c.warmup_epochs = 1.0
  c.schedule = "cosine"                # cosine | constant (both after the linear warmup)
  # Bookkeeping.
  c.log_every = 100
  c.eval_every = 0                     # steps; 0: only at the end; -1: every epoch
  c.eval_steps = 0                     # 0: the whole eval split
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3               # newest N kept (0: keep all); the final one is never deleted
  c.seed = 0
  c.progress_bar = True
  c.compilation_cache_dir = ""         # JAX persistent compilation cache ("": default, "none": off)
  return c


def validate(config, extra: Iterable[str] = (), *, device_count: int | None = None) -> None:
  """Checks keys, choices and sizes up front, so a typo fails before any compile or write."""
  from radimagenet_jax.data import PREPROCESS_MODES, augment
  from radimagenet_jax.models import random_init, registry
  from radimagenet_jax.train import optim
  allowed = set(base_config().keys()) | set(extra)
  keys = set(config.keys())
  missing, unknown = sorted(allowed - keys), sorted(keys - allowed)
  if missing or unknown:
    raise ValueError(f"config: missing keys {missing}, unknown keys {unknown}; valid keys: "
                     f"{', '.join(sorted(allowed))}.")
  spec = registry.get_spec(config.model)  # raises listing the valid model names
  choices = {"preprocess": tuple(PREPROCESS_MODES), "augment": tuple(augment.PRESETS),
             "augment_on_device": augment.ON_DEVICE_MODES, "init_law": random_init.LAWS,
             "dtype": tuple(DTYPES), "optimizer": optim.OPTIMIZERS, "schedule": optim.SCHEDULES}
  for key, valid in choices.items():
    if config[key] not in valid:
      raise ValueError(f"config.{key}={config[key]!r} is not valid; choices: {', '.join(valid)}.")
  for key in ("batch_size", "image_size", "log_every"):
    if config[key] <= 0:
      raise ValueError(f"config.{key}={config[key]} must be positive.")
  if config.eval_every < -1:
    raise ValueError(f"config.eval_every={config.eval_every}: expected a step count, 0 (only at "
                     f"the end) or -1 (every epoch).")
  for key in ("eval_batch_size", "num_train_steps", "num_epochs", "eval_steps",
              "checkpoint_every", "keep_checkpoints", "warmup_steps", "warmup_epochs",
              "weight_decay", "num_classes"):
    if config[key] < 0:
      raise ValueError(f"config.{key}={config[key]} must be >= 0.")
  if not config.learning_rate > 0:
    raise ValueError(f"config.learning_rate={config.learning_rate} must be positive.")
  if not 0 <= config.dropout_rate < 1:
    raise ValueError(f"config.dropout_rate={config.dropout_rate} must be in [0, 1).")
  if config.num_train_steps == 0 and config.num_epochs == 0:
    raise ValueError("config.num_train_steps and config.num_epochs are both 0: nothing to train.")
  if config.image_size < spec.min_size:
    raise ValueError(f"config.image_size={config.image_size} is below the minimum input size "
                     f"{spec.min_size} of {spec.name}.")
  if device_count:
    for key in ("batch_size", "eval_batch_size"):
      if config[key] and config[key] % device_count:
        raise ValueError(f"config.{key}={config[key]} must be a multiple of the device count "
                         f"{device_count}; e.g. {max(device_count, config[key] // device_count * device_count)}.")


def changed_fields(saved: dict, config) -> list[str]:
  """Fields whose value differs between a workdir's saved config.json and ``config`` and may not
  change on resume (RESUMABLE_CHANGES may)."""
  now = config.to_dict()
  keys = sorted(set(saved) | set(now))
  return [k for k in keys if k not in RESUMABLE_CHANGES and _norm(saved.get(k)) != _norm(now.get(k))]


def _norm(value):
  # JSON round trips turn tuples into lists and ints into floats where the config held floats.
  if isinstance(value, (list, tuple)):
    return [_norm(v) for v in value]
  if isinstance(value, dict):
    return {k: _norm(v) for k, v in value.items()}
  if isinstance(value, bool) or value is None or isinstance(value, str):
    return value
  if isinstance(value, (int, float)):
    return float(value)
  return value


def resolve_workdir(workdir) -> str:
  """The absolute local path of ``--workdir``; a URL (gs://, s3://, ...) is refused in one line:
  checkpoints, logs and the atomic JSON records are written with POSIX renames and locks."""
  path = os.fspath(workdir)
  if "://" in path:
    raise ValueError(f"--workdir={path}: a URL; expected a directory path. Runs write with POSIX "
                     f"renames and file locks, so mount the bucket on every host (Cloud Storage "
                     f"FUSE, NFS, Filestore) and give the mounted path, e.g. "
                     f"--workdir=/mnt/BUCKET/runs/r50 (launch/README.md).")
  path = os.path.abspath(os.path.expanduser(path))
  refuse_shared_folder(path)
  return path


def refuse_shared_folder(path: str, flag: str = "--workdir") -> None:
  """Refuses the filesystem root and the home directory itself as a place to write runs: a sweep
  given `--workdir=/` wrote /sweep.json, /results.csv and /runs/ beside the system's folders."""
  real = os.path.realpath(path)
  home = os.path.realpath(os.path.expanduser("~"))
  if real == os.path.dirname(real):
    what = "the filesystem root"
  elif real == home:
    what = "your home directory itself"
  else:
    return
  raise ValueError(f"{flag}={path} is {what}; records, runs and checkpoints would be written "
                   f"among its folders. Give a folder of its own, e.g. "
                   f"{flag}={os.path.join(home, 'runs', 'NAME')}.")


def check_workdir_writable(workdir: str) -> None:
  """One clear line (not a PermissionError traceback after minutes of work) when ``workdir``
  cannot be written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise FileExistsError(f"--workdir={workdir} is a file; expected a directory (new or existing).")
  parent = workdir
  while not os.path.exists(parent):
    parent = os.path.dirname(parent) or "."
  if not os.access(parent, os.W_OK | os.X_OK):
    raise PermissionError(f"--workdir={workdir}: {parent} is not writable; choose a writable "
                          f"directory.")
