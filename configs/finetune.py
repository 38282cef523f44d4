r"""Fine-tuning on the paper's downstream data sets (docs/fidelity.md "Downstream fine-tuning").

Usage:
  radimagenet-jax finetune --config=configs/finetune.py:busi,model=resnet50,init=radimagenet,freeze=top10,lr=1e-3,fold=0 \
      --workdir=runs/busi_r50_top10 --config.inits.radimagenet.resnet50=weights/RadImageNet-ResNet50_notop.h5
  radimagenet-jax sweep --config=configs/finetune.py:busi,sweep=paper --workdir=runs/busi_sweep
  radimagenet-jax finetune --config=configs/finetune.py:demo --workdir=runs/ft_demo
  radimagenet-jax sweep --config=configs/finetune.py:own,data=image_folder,weights=runs/demo/best,scenarios=top10@1e-3,all@1e-4 \
      --workdir=runs/own_sweep

The ``:arg`` is a comma-separated list of one data set variant and ``key=value`` settings:
  busi, ddti, mrnet_acl, mrnet_meniscus, rsna_pneumonia, rsna_ich, cc_ccii   the paper's sets
  official_thyroid, official_breast, official_acl, official_meniscus   the official
               repository's images and five folds (`radimagenet-jax build official/acl
               --manual_dir=RadImageNet/`)
  demo         radimagenet_demo/lesion at 64x64: minutes on a 2-core CPU (init: the tour's
               pretraining demo checkpoint runs/demo, or random)
  tiny         the demo data at 32x32, a few steps: smoke tests
  own          your data set built with `radimagenet-jax build image_folder` (docs/datasets.md
               "Your own data"): ResNet50, batch 32, 5 folds by patient, inits `pretrained` (the
               weights= file) and `random` (without weights=: radimagenet and imagenet, the files
               under weights/), scenarios head@1e-2,top10@1e-3,all@1e-4 (sweep=NAME: a preset's)
  data=NAME    (own) the built TFDS data set, e.g. image_folder or image_folder/lung
  weights=PATH (own) the pretrained weights: a Keras .h5 file or a checkpoint folder (runs/x/best)
  scenarios=LIST  FREEZE@LR items replacing the preset's scenarios, e.g. top10@1e-3,all@1e-4, or
               a file with one a line; a sweep workdir can be extended later with more
  model=NAME   resnet50 | densenet121 | inception_v3 | inception_resnet_v2
  init=INIT    random | a label of config.inits (radimagenet, imagenet, demo) | a .h5 / checkpoint path
  freeze=MODE  all | head (the paper's "freeze all") | top10 | top<N> | rules:REGEX=train|freeze;...
  lr=FLOAT     learning rate (Adam with Keras's defaults)
  fold=K       test on fold K of the fold0..fold4 splits (0..4), `all` (one run per fold in
               WORKDIR/fold<K>), `none` (the builder's train/validation/test)
  sweep=NAME   paper (24 scenarios x inits x folds) | corrected (the same, corrected protocol) |
               demo | tiny, for `radimagenet-jax sweep`
  protocol=P   paper (the official scripts: their folds, Keras epochs with a partial last batch,
               clipped BCE on the softmax, RadImageNet preprocessing for every init) | corrected
               (fixes each); default: paper for the paper's sets, corrected with sweep=corrected
               and for demo/tiny. Each departure is a field (official_folds, partial_batch, loss,
               preprocess, carry_over_folds): radimagenet_jax/finetune/protocols.py
Defaults follow the official scripts: Adam (lr 1e-3, epsilon 1e-7), 30 epochs, 256x256 inputs, batch
256, the data set's augmentation, validation every epoch, the checkpoint of the lowest validation loss
kept as `best` and used for the test metrics; `preprocess=auto` picks `radimagenet` for RadImageNet
weights and Keras's own mode for ImageNet weights (protocol=corrected; protocol=paper feeds every
init the RadImageNet preprocessing, as the official scripts do).
"""
import ml_collections

from radimagenet_jax import config_arg
from radimagenet_jax.finetune import protocols
from radimagenet_jax.train import config

# variant -> (TFDS dataset, augmentation preset, cross-validated); docs/fidelity.md "Augmentation".
DATASETS = {
    "busi": ("busi/benign_vs_malignant", "paper", True),
    "ddti": ("ddti/tirads4", "paper", True),
    "mrnet_acl": ("mrnet/acl_sagittal", "paper", True),
    "mrnet_meniscus": ("mrnet/meniscus_sagittal", "paper", True),
    "rsna_pneumonia": ("rsna_pneumonia/default", "paper_noflip", False),
    "rsna_ich": ("rsna_ich/any", "paper_noflip", False),
    "cc_ccii": ("cc_ccii/ncp_vs_cp", "paper_noflip", False),
    "demo": ("radimagenet_demo/lesion", "paper", True),
    "tiny": ("radimagenet_demo/lesion", "none", True),
    "own": ("image_folder", "paper", True),
    # The official repository's images and folds (tfds_builders/official).
    "official_thyroid": ("official/thyroid", "paper", True),
    "official_breast": ("official/breast", "paper", True),
    "official_acl": ("official/acl", "paper", True),
    "official_meniscus": ("official/meniscus", "paper", True),
}
SETTINGS = ("model", "init", "freeze", "lr", "fold", "sweep", "protocol", "data", "weights",
            "scenarios")
OWN_SCENARIOS = "head@1e-2,top10@1e-3,all@1e-4"


def _keep_scenarios_together(arg):
  """'own,scenarios=top10@1e-3,all@1e-4' -> (arg without the scenarios, 'top10@1e-3,all@1e-4'):
  the items after `scenarios=` that are neither a variant nor a `setting=` belong to it."""
  kept, scenarios, inside = [], None, False
  for item in (arg or "").split(","):
    key = item.split("=", 1)[0].strip() if "=" in item else None
    if item.strip().startswith("scenarios="):
      scenarios, inside = item.split("=", 1)[1], True
    elif inside and item.strip() not in DATASETS and key not in SETTINGS:
      scenarios += "," + item
    else:
      kept.append(item)
      inside = False
  return ",".join(kept), scenarios


def get_config(arg=None):
  """Returns the fine-tuning ConfigDict for the variants and settings in ``arg``."""
  arg, scenarios = _keep_scenarios_together(arg)
  variants, settings = config_arg.parse(arg, variants=tuple(DATASETS), settings=SETTINGS,
                                        where="configs/finetune.py")
  if scenarios is not None:
    settings["scenarios"] = scenarios
  if len(variants) > 1:
    raise ValueError(f"configs/finetune.py: pick one data set variant, got {sorted(variants)}.")
  variant = next(iter(variants), "busi")
  c = config.base_config()
  c.dataset, c.augment, cross_validated = DATASETS[variant]
  c.model = settings.get("model", "resnet50")
  c.num_classes = 0
  c.image_size = 256
  c.preprocess = "auto"                 # auto: what the init weights were trained with
  c.optimizer, c.learning_rate, c.momentum, c.adam_epsilon = "adam", 1e-3, 0.9, 1e-7
  c.weight_decay, c.schedule, c.warmup_steps, c.warmup_epochs = 0.0, "constant", 0, 0.0
  c.batch_size, c.num_epochs, c.num_train_steps = 256, 30.0, 0
  c.eval_every = -1                     # validation every epoch (model selection)
  c.log_every, c.checkpoint_every, c.keep_checkpoints = 10, 0, 1
  c.eval_split = "validation"

  c.init = settings.get("init", "radimagenet")
  # Weight files per init label and model; a sweep compares the labels in sweep_inits.
  c.inits = ml_collections.ConfigDict({
      "radimagenet": {m: f"weights/RadImageNet-{f}_notop.h5" for m, f in (
          ("resnet50", "ResNet50"), ("densenet121", "DenseNet121"), ("inception_v3", "InceptionV3"),
          ("inception_resnet_v2", "IRV2"))},
      "imagenet": {m: f"weights/{f}" for m, f in (
          ("resnet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
          ("densenet121", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
          ("inception_v3", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
          ("inception_resnet_v2", "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"))},
      "demo": {m: "runs/demo" for m in ("resnet50",)},
  })
  c.freeze = settings.get("freeze", "all")
  c.learning_rate = float(settings.get("lr", c.learning_rate))
  c.fold = settings.get("fold", "0" if cross_validated else "none")
  c.num_folds = 5
  c.val_fraction = 0.1                  # of the training folds, carved out by patient, stratified
  # The sweep (`radimagenet-jax sweep`).
  c.sweep = settings.get("sweep", "paper")
  c.sweep_models = "resnet50,densenet121,inception_v3,inception_resnet_v2"
  c.sweep_inits = "radimagenet,imagenet"
  c.sweep_folds = "all" if cross_validated else "none"
  c.shard = "0/1"                       # i/n: this host's slice of the sweep
  c.parallel_runs = 1
  c.sweep_scenarios = settings.get("scenarios", "")  # FREEZE@LR,... or a file; "": the preset's
  # The protocol (finetune/protocols.py): its fields, official values one option away.
  c.protocol, c.official_folds, c.partial_batch, c.loss, c.carry_over_folds = (
      "corrected", False, False, "softmax_ce", False)

  if variant in ("demo", "tiny"):
    c.build_dataset, c.init, c.sweep_inits = True, settings.get("init", "demo"), "demo,random"
    c.sweep, c.sweep_models = settings.get("sweep", "demo"), "resnet50"
    c.sweep_folds = "0,1"
  if variant == "demo":
    # ResNet50 at 64x64, batch 32: ~440 training crops, ~13 steps an epoch, 2 epochs a run.
    c.image_size, c.batch_size, c.num_epochs = 64, 32, 2.0
  if variant == "tiny":
    c.sweep, c.sweep_folds = settings.get("sweep", "tiny"), "0"
    c.image_size, c.batch_size, c.num_epochs, c.num_train_steps = 32, 8, 0.0, 4
    c.eval_every, c.eval_steps, c.log_every, c.progress_bar = 2, 2, 2, False
  if variant == "own":
    c.dataset, c.batch_size, c.sweep_models = settings.get("data", "image_folder"), 32, c.model
    if "sweep" not in settings:
      c.sweep, c.sweep_scenarios = "custom", settings.get("scenarios", OWN_SCENARIOS)
    if "weights" in settings:
      c.inits.pretrained = {m: settings["weights"] for m in (c.model,)}
      c.init, c.sweep_inits = settings.get("init", "pretrained"), "pretrained,random"
  elif "data" in settings or "weights" in settings:
    raise ValueError(f"configs/finetune.py: data= and weights= are settings of the own variant; "
                     f"got them with {variant!r} (use own, or --config.dataset / --config.inits)")
  default = "corrected" if variant in ("demo", "tiny", "own") or c.sweep == "corrected" else "paper"
  protocols.apply(c, settings.get("protocol", default))
  return c
