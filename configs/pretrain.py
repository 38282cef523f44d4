r"""Pretraining a CNN on RadImageNet (or the built-in demo data), big_vision style.

Usage:
  radimagenet-jax pretrain --config=configs/pretrain.py:demo --workdir=runs/demo
  radimagenet-jax pretrain --config=configs/pretrain.py:radimagenet,model=densenet121 \
      --workdir=gs://bucket/r50 --config.data_dir=gs://bucket/tfds
  radimagenet-jax evaluate --config=configs/pretrain.py:demo --workdir=runs/demo

The ``:arg`` is a comma-separated list of variants and ``key=value`` settings:
  demo         radimagenet_demo/pretrain at 64x64, sized to finish in minutes on a 2-core CPU
  radimagenet  the real RadImageNet (165 classes) at 224x224, global batch 512
  tiny         smallest sizes and a few steps, for tests and smoke runs
  model=NAME   resnet50 | densenet121 | inception_v3 | inception_resnet_v2
Any field can then be overridden with ``--config.KEY=VALUE``; unknown keys are errors.
"""
import ml_collections

from radimagenet_jax import config_arg

VARIANTS = ("demo", "radimagenet", "tiny")


def get_config(arg=None):
  """Returns the pretraining ConfigDict for the variants in ``arg`` (see module docstring)."""
  variants, settings = config_arg.parse(arg, variants=VARIANTS, settings=("model",),
                                        where="configs/pretrain.py")
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
  c.worker_count = 0                   # grain worker processes (0: in the main process)

  # Model.
  c.model = settings.get("model", "resnet50")
  c.num_classes = 0                    # 0: from the dataset's label feature
  c.dropout_rate = 0.5
  c.dtype = "float32"                  # compute dtype: float32 | bfloat16 (params stay float32)
  # Evaluate/checkpoint BatchNorm running statistics with the weight of their initial values
  # (0.99**step) divided out; matters for short runs only (see train/state.bn_bias_corrected).
  c.bn_bias_correction = True

  # Optimisation. batch_size is GLOBAL (split over all processes and devices).
  c.batch_size = 512
  c.eval_batch_size = 0                # 0: same as batch_size
  c.num_train_steps = 0                # > 0 wins over num_epochs
  c.num_epochs = 30.0
  c.optimizer = "sgd"                  # sgd | adam | adamw
  c.learning_rate = 0.1                # peak, reached after the warmup
  c.momentum = 0.9                     # sgd momentum; adam/adamw b1
  c.weight_decay = 1e-4                # sgd/adam: L2 added to the gradient; adamw: decoupled
  c.warmup_steps = 0                   # > 0 wins over warmup_epochs
  c.warmup_epochs = 1.0
  c.schedule = "cosine"                # cosine | constant (both after the linear warmup)

  # Bookkeeping.
  c.log_every = 100
  c.eval_every = 0                     # 0: only at the end
  c.eval_steps = 0                     # 0: the whole eval split (remainder batch dropped)
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.seed = 0
  c.progress_bar = True

  if "radimagenet" in variants:
    c.dataset, c.image_size, c.num_classes = "radimagenet/default", 224, 165
    c.batch_size, c.num_epochs = 512, 30.0
  if "demo" in variants:
    # Sized for a 2-core CPU: ResNet50 at 64x64, batch 32 takes ~2.8 s/step (measured with
    # benchmarks/train_throughput.py on 2 idle cores), so 120 steps (~4 epochs of the 924 training
    # images) take ~6 minutes; with the dataset build, compilation and the evaluations the whole
    # command stays under 10 minutes.
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
