r"""Pretraining a CNN on RadImageNet (or the built-in demo data), big_vision style.

Usage:
  radimagenet-jax pretrain --config=configs/pretrain.py:demo --workdir=runs/demo
  radimagenet-jax pretrain --config=configs/pretrain.py:radimagenet,model=densenet121 \
      --workdir=/mnt/bucket/runs/densenet121 --config.data_dir=/mnt/bucket/tfds
  radimagenet-jax evaluate --config=configs/pretrain.py:demo --workdir=runs/demo

The ``:arg`` is a comma-separated list of variants and ``key=value`` settings:
  demo         radimagenet_demo/pretrain at 64x64, sized to finish in minutes on a 2-core CPU
  radimagenet  the real RadImageNet (165 classes) at 224x224, global batch 512
  tiny         smallest sizes and a few steps, for tests and smoke runs
  model=NAME   resnet50 | densenet121 | inception_v3 | inception_resnet_v2
Any field can then be overridden with ``--config.KEY=VALUE``; unknown keys are errors.
"""
from radimagenet_jax import config_arg
from radimagenet_jax.train import config

VARIANTS = ("demo", "radimagenet", "tiny")


def get_config(arg=None):
  """Returns the pretraining ConfigDict for the variants in ``arg`` (see module docstring)."""
  variants, settings = config_arg.parse(arg, variants=VARIANTS, settings=("model",),
                                        where="configs/pretrain.py")
  # Every field and its default is written once, in the engine (radimagenet_jax/train/config.py);
  # the defaults are RadImageNet pretraining's. `radimagenet-jax pretrain --help` lists them.
  c = config.base_config()
  c.model = settings.get("model", "resnet50")

  if "radimagenet" in variants:
    c.dataset, c.image_size, c.num_classes = "radimagenet/default", 224, 165
    c.batch_size, c.num_epochs = 512, 30.0
  if "demo" in variants:
    # Sized for a 2-core CPU: ResNet50 at 64x64, batch 32, 120 steps (~4 epochs of the 924 training
    # images) at 35-52 training images/s; with the dataset build, compilation and the evaluations
    # the whole command takes about 3 minutes there (timed runs: docs/performance.md).
    c.dataset, c.build_dataset, c.image_size = "radimagenet_demo/pretrain", True, 64
    c.batch_size, c.num_train_steps, c.warmup_steps = 32, 120, 10
    c.optimizer, c.learning_rate, c.weight_decay = "adam", 1e-3, 0.0
    c.log_every, c.eval_every, c.checkpoint_every, c.keep_checkpoints = 10, 40, 40, 2
  if "tiny" in variants:
    c.dataset, c.build_dataset, c.image_size = "radimagenet_demo/pretrain", True, 32
    c.batch_size, c.num_train_steps, c.warmup_steps = 8, 4, 1
    c.optimizer, c.learning_rate, c.weight_decay = "adam", 1e-3, 0.0
    c.log_every, c.eval_every, c.eval_steps, c.checkpoint_every, c.keep_checkpoints = 2, 0, 2, 2, 2
    c.progress_bar = False
  return c
