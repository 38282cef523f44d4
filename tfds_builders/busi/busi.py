"""`busi`: Breast Ultrasound Images (Al-Dhabyani et al., Data in Brief 2020), with lesion masks.

Release layout (`--manual_dir` holds `Dataset_BUSI_with_GT/`, or is that folder):

    Dataset_BUSI_with_GT/{benign,malignant,normal}/benign (1).png
                                                  /benign (1)_mask.png
                                                  /benign (1)_mask_1.png   (2nd lesion, a few)

All mask files of an image are merged by OR into one mask (1 = lesion, 0 = background; normal
images have empty masks). Configs:

- `benign_vs_malignant` (default): normal counts as benign, as in the RadImageNet paper
  (570 benign = 437 benign + 133 normal; 210 malignant);
- `lesions_only`: benign vs malignant, normal images left out;
- `three_class`: benign / malignant / normal.

BUSI has no patient ids: each image is its own group (`patient_id` = the image's file stem), so the
splits are per image; images of one woman may fall into different splits.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

FOLDER = "Dataset_BUSI_with_GT"
SOURCE_CLASSES = ("benign", "malignant", "normal")


_CONFIGS = {  # name -> (class names, source class -> class name or None = left out)
    "benign_vs_malignant": (("benign", "malignant"),
                            {"benign": "benign", "malignant": "malignant", "normal": "benign"}),
    "lesions_only": (("benign", "malignant"),
                     {"benign": "benign", "malignant": "malignant", "normal": None}),
    "three_class": (SOURCE_CLASSES, {c: c for c in SOURCE_CLASSES}),
}


class Busi(common.SplitBuilder):
  """BUSI breast ultrasound: image, merged lesion mask, label."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      common.RadConfig(name="benign_vs_malignant",
                       description="benign (incl. normal, as in the paper) vs malignant."),
      common.RadConfig(name="lesions_only", description="benign vs malignant; normal left out."),
      common.RadConfig(name="three_class", description="benign / malignant / normal."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "benign_vs_malignant"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download "Dataset_BUSI_with_GT" (Al-Dhabyani W. et al., Dataset of breast ultrasound images,
  Data in Brief 2020; https://scholar.cu.edu.eg/?q=afahmy/pages/dataset, also mirrored on Kaggle as
  "Breast Ultrasound Images Dataset") and extract it so that --manual_dir contains
  {FOLDER}/benign, {FOLDER}/malignant and {FOLDER}/normal.
  """

  def _info(self):
    names, _ = _CONFIGS[self.builder_config.name]
    return tfds.core.DatasetInfo(
        builder=self,
        description=("BUSI breast ultrasound with merged lesion masks; " +
                     self.builder_config.description +
                     " No patient ids: each image is its own group. " +
                     common.split_description(self.builder_config)),
        features=tfds.features.FeaturesDict({
            "image": common.image_feature(3),
            "mask": common.mask_feature(),
            "label": common.class_label(names),
            "source_class": common.class_label(SOURCE_CLASSES),
            "patient_id": tfds.features.Text(),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
        citation="Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. "
                 "Data in Brief. 2020;28:104863.",
    )

  def _list_items(self, manual_dir):
    root = manual_dir / FOLDER if (manual_dir / FOLDER).exists() else manual_dir
    names, mapping = _CONFIGS[self.builder_config.name]
    items = []
    for source in SOURCE_CLASSES:
      folder = os.path.join(os.fspath(root), source)
      if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} not found: the {FOLDER} release has "
                                f"{'/'.join(SOURCE_CLASSES)} folders.\n"
                                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      target = mapping[source]
      files = sorted(os.listdir(folder))
      for fn in files:
        if not fn.lower().endswith(".png") or "_mask" in fn:
          continue
        stem = fn[:-4]
        masks = [os.path.join(folder, m) for m in files
                 if m.startswith(stem + "_mask") and m.lower().endswith(".png")]
        if target is None:
          continue
        path = os.path.join(folder, fn)
        if not masks:
          self.source_error(path, f"no mask file {stem}_mask.png next to the image")
          continue
        items.append(common.Item(key=f"{source}/{fn}", group=stem, label=names.index(target),
                                 data=(path, masks, source)))
    return items

  def _examples(self, item):
    path, mask_paths, source = item.data
    image = self.read_image_or_error(path, 3)
    if image is None:
      return
    mask = np.zeros(image.shape[:2], bool)
    for m in mask_paths:
      part = self.read_image_or_error(m, 1)
      if part is None:
        return
      if part.shape[:2] != mask.shape:
        self.source_error(m, f"mask size {part.shape[:2]} differs from the image's {mask.shape}")
        return
      mask |= part[..., 0] > 0
    yield item.key, {
        "image": common.encode_png(image),
        "mask": common.encode_png(mask.astype(np.uint8)[..., None]),
        "label": item.label,
        "source_class": source,
        "patient_id": item.group,
        "file_name": item.key,
    }
