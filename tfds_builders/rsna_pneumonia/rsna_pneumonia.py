"""`rsna_pneumonia`: RSNA Pneumonia Detection Challenge 2018 chest radiographs, with box masks.

Release layout in `--manual_dir` (the Kaggle competition files, extracted):

    stage_2_train_labels.csv    patientId,x,y,width,height,Target (one row per box; Target 0 rows
                                have no box)
    stage_2_train_images/<patientId>.dcm

One example per patientId (one radiograph each): label = 1 ('pneumonia', lung opacity) when any
row of the patient has Target 1, else 0 ('negative': normal or other abnormality, no opacity);
`mask` = union of the patient's boxes (1 inside; a box covers rows floor(y)..ceil(y+height)-1 and
columns floor(x)..ceil(x+width)-1, clipped to the image); `num_boxes` counts them. The DICOM
pixels (uint8 in the release) are stored as they are when they lie in 0..255, else scaled
min..max. Groups: patientId.
"""
from __future__ import annotations

import collections
import csv
import math
import os

import numpy as np
import tensorflow_datasets as tfds

from radimagenet_jax.data.build import readers
from tfds_builders import common

LABELS_CSV = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"
CLASSES = ("negative", "pneumonia")


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """Radiograph pixels -> uint8: as they are when within 0..255, else min..max scaled."""
  if pixels.min() >= 0 and pixels.max() <= 255:
    return np.round(pixels).astype(np.uint8)
  lo, hi = float(pixels.min()), float(pixels.max())
  return np.round((pixels - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def box_mask(shape, boxes) -> np.ndarray:
  """uint8 mask of `shape` with 1 inside the union of (x, y, width, height) boxes."""
  mask = np.zeros(shape, np.uint8)
  for x, y, w, h in boxes:
    r0, r1 = max(0, math.floor(y)), min(shape[0], math.ceil(y + h))
    c0, c1 = max(0, math.floor(x)), min(shape[1], math.ceil(x + w))
    mask[r0:r1, c0:c1] = 1
  return mask


class RsnaPneumonia(common.SplitBuilder):
  """RSNA pneumonia: radiograph, opacity label, box mask."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [common.RadConfig(name="default", description="Lung opacity vs none.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Accept the rules of the Kaggle competition "RSNA Pneumonia Detection Challenge"
  (https://www.kaggle.com/c/rsna-pneumonia-detection-challenge), download its data
  (`kaggle competitions download -c rsna-pneumonia-detection-challenge`) and extract it so that
  --manual_dir contains {LABELS_CSV} and {IMAGES}/.
  """

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=("RSNA Pneumonia Detection chest radiographs; label 1 = lung opacity box(es); "
                     "mask = union of the boxes. Groups: patientId. " +
                     common.split_description(self.builder_config)),
        features=tfds.features.FeaturesDict({
            "image": common.image_feature(1),
            "mask": common.mask_feature(),
            "label": common.class_label(CLASSES),
            "num_boxes": np.int32,
            "patient_id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://www.kaggle.com/c/rsna-pneumonia-detection-challenge",
    )

  def _list_items(self, manual_dir):
    csv_path = self.require(manual_dir, LABELS_CSV)
    self.require(manual_dir, IMAGES)
    rows, first_line = collections.defaultdict(list), {}
    with open(csv_path, newline="") as f:
      reader = csv.DictReader(f)
      for r in reader:
        pid = (r["patientId"] or "").strip()
        rows[pid].append(r)
        first_line.setdefault(pid, reader.line_num)
    items = []
    for pid, patient_rows in rows.items():
      path = self.source_path(manual_dir, manual_dir / IMAGES, f"{pid}.dcm", source=csv_path,
                              where=f"line {first_line[pid]} (patientId)")
      if path is None:
        continue
      targets = {r["Target"].strip() for r in patient_rows}
      if not targets <= {"0", "1"}:
        self.source_error(csv_path, f"patientId {pid}: Target {sorted(targets)} not in 0/1")
        continue
      try:
        boxes = [tuple(float(r[k]) for k in ("x", "y", "width", "height"))
                 for r in patient_rows if r["Target"].strip() == "1"]
      except ValueError:
        self.source_error(csv_path, f"patientId {pid}: a Target 1 row without a numeric box")
        continue
      if not os.path.exists(path):
        self.source_error(path, f"named in {LABELS_CSV} but missing")
        continue
      items.append(common.Item(key=pid, group=pid, label=int("1" in targets), data=(path, boxes)))
    return items

  def _examples(self, item):
    path, boxes = item.data
    try:
      pixels = readers.read_dicom(path)
    except readers.ReaderError as e:
      self.source_error(path, e.reason)
      return
    if pixels.ndim != 2:
      self.source_error(path, f"expected a 2D grayscale radiograph, got shape {pixels.shape}")
      return
    yield item.key, {
        "image": common.encode_png(to_uint8(pixels)[..., None]),
        "mask": common.encode_png(box_mask(pixels.shape, boxes)[..., None]),
        "label": item.label,
        "num_boxes": len(boxes),
        "patient_id": item.group,
    }
