r"""Grad-CAM maps, Dice against lesion masks and statistics between two models.

Usage:
  radimagenet-jax gradcam --config=configs/gradcam.py:demo --workdir=runs/gradcam_demo
  radimagenet-jax gradcam --config=configs/gradcam.py:busi,model_a=resnet50,model_b=resnet50 \
      --config.model_a.weights=runs/busi_radimagenet --config.model_a.label=RadImageNet \
      --config.model_b.weights=runs/busi_imagenet --config.model_b.label=ImageNet \
      --workdir=runs/gradcam_busi

The ``:arg`` is a comma-separated list of variants and ``key=value`` settings:
  demo          radimagenet_demo/lesion test split (built on first use from PyPI-shipped data),
                two randomly initialised ResNet50s (seeds 0 and 1): a smoke run of the whole path
  busi          busi/benign_vs_malignant test split (build it first with `radimagenet-jax build`)
  ddti          ddti test split (idem)
  tiny          16 images at 64x64, for tests and smoke runs
  own           your image_folder data set (built with masks, docs/datasets.md "Your own data"),
                split fold0: the held-out fold of a sweep's fold-0 runs (set --config.split=foldK
                for fold K's runs, whose training set is every other fold)
  model_a=NAME, model_b=NAME   architectures (model_b=none: one model, no comparison)
Over a sweep (the paper's Figure 5): ``--config.sweep=runs/sweep`` explains each finished run's own
held-out test images with its best checkpoint, Dice per init averaged over scenarios.
Weights: ``--config.model_a.weights=`` an Orbax checkpoint dir (training workdir or `convert` output)
or a Keras .h5 file; empty = random init (seed ``model_a.seed``).
Preprocessing: ``preprocess='auto'`` (default) uses what each model's weights record
(`rij.keras_io.weights_info`: checkpoint metadata; for a Keras file its name, RadImageNet-* ->
radimagenet, keras.applications ImageNet files -> their mode); 'radimagenet' for random init.
The workdir must be new, empty or a previous gradcam run: another command's run is refused.
"""
import ml_collections

from radimagenet_jax import config_arg

VARIANTS = ("demo", "busi", "ddti", "tiny", "own")
DATASETS = {"demo": "radimagenet_demo/lesion", "busi": "busi/benign_vs_malignant",
            "ddti": "ddti", "own": "image_folder"}


def _model(name, label, seed):
  m = ml_collections.ConfigDict()
  m.name = name          # resnet50 | densenet121 | inception_v3 | inception_resnet_v2 | "" (none)
  m.weights = ""         # Orbax checkpoint dir or Keras .h5 file; "" = random init
  m.label = label        # name in the CSV, the JSON and the pictures
  m.layer = ""           # Grad-CAM layer; "" = the paper's (conv5_block3_out, relu, mixed10, conv_7b_ac)
  m.preprocess = ""      # preprocessing mode of these weights; "" = config.preprocess
  m.seed = seed          # random init seed when weights == ""
  return m


def get_config(arg=None):
  """Returns the Grad-CAM ConfigDict for the variants in ``arg`` (see module docstring)."""
  variants, settings = config_arg.parse(arg, variants=VARIANTS, settings=("model_a", "model_b"),
                                        where="configs/gradcam.py")
  c = ml_collections.ConfigDict()

  # Data: a split whose records have 'image', 'label' and a lesion mask.
  dataset = next((DATASETS[v] for v in ("busi", "ddti", "own", "demo") if v in variants),
                 DATASETS["demo"])
  c.dataset = dataset
  c.data_dir = ""                      # TFDS data dir ("": $TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.build_dataset = dataset.startswith("radimagenet_demo")  # build the demo data if missing
  c.split = "fold0" if "own" in variants else "test"
  c.mask_key = "mask"
  c.id_key = ""                        # "": the first of source_id, file_name, patient_id
  c.max_images = 0                     # 0: the whole split
  c.image_size = 256                   # the paper's fine-tuning input size
  c.resize = "nearest"                 # as the training pipeline (Keras load_img)
  c.preprocess = "auto"                # auto (the weights') | radimagenet | caffe | imagenet | tf
  c.batch_size = 16
  c.num_classes = 0                    # 0: from the dataset's label feature
  # Weights of a fine-tuning run (its splits.json): images of its training or validation set are
  # refused (left out and counted); True keeps them, and their Dice is then optimistic.
  c.allow_seen_images = False
  # A sweep workdir (or one fine-tuning run): every finished run explains its own held-out test
  # images with its best checkpoint (model_a / model_b, dataset and split are then unused).
  c.sweep = ""

  # Models (model_b.name == "": one model, no paired statistics).
  c.model_a = _model(settings.get("model_a", "resnet50"), "A", 0)
  b = settings.get("model_b", "resnet50")
  c.model_b = _model("" if b.lower() in ("none", "") else b, "B", 1)

  # Grad-CAM.
  c.score = "logit"                    # logit (before the softmax, Grad-CAM paper) | softmax
  c.target = "predicted"               # predicted | label (explain the true class)

  # Dice: floor(255 * map) compared with `threshold` (see segmentation_metrics.py).
  c.threshold = 180
  c.comparison = ">"                   # > (the paper's "above") | >=
  c.order = "resize_then_threshold"    # | threshold_then_resize (at the layer's resolution)
  c.include_empty_masks = False        # empty ground truth: counted apart, not in the statistics
  c.alpha = 0.05                       # Shapiro-Wilk level for choosing t-test vs Wilcoxon

  # Pictures.
  c.num_overlays = 8                   # overlay PNGs for the first N images (per model)
  c.panel_rows = 4                     # Figure-5-like panel rows (images with a lesion first)
  c.colormap = "jet"

  if "tiny" in variants:
    c.max_images = 16
    c.image_size = 64
    c.batch_size = 8
    c.num_overlays = 2
    c.panel_rows = 2
  return c
