"""`rsna_ich`: RSNA Intracranial Hemorrhage Detection 2019 head CT slices, three CT windows.

Release layout in `--manual_dir` (the Kaggle competition files, extracted):

    stage_2_train.csv          ID,Label with ID = ID_<image>_<subtype>, subtype in epidural,
                               intraparenchymal, intraventricular, subarachnoid, subdural, any
    stage_2_train/ID_<image>.dcm

One example per image: label = the `any` row (1 = some hemorrhage); `subtypes` = the five subtype
labels in the order above. The image is the slice in Hounsfield units (Rescale Slope/Intercept
applied) through three windows stacked as RGB: brain (center 40, width 80), subdural (80, 200) and
bone (600, 2800). Groups: the DICOM PatientID (read from the headers while listing), so that no
patient's slices cross splits.

Config `any` writes no k-fold splits (about 750,000 slices: folds would double the disk use);
`any_5fold` adds them.
"""
from __future__ import annotations

import collections
import csv
import os

import numpy as np
import tensorflow_datasets as tfds

from radimagenet_jax.data.build import readers
from tfds_builders import common

LABELS_CSV = "stage_2_train.csv"
IMAGES = "stage_2_train"
SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
WINDOWS = (("brain", 40, 80), ("subdural", 80, 200), ("bone", 600, 2800))


def three_windows(hu: np.ndarray) -> np.ndarray:
  """HU slice -> uint8 HxWx3: brain, subdural and bone windows as the channels."""
  return np.stack([readers.window(hu, c, w) for _, c, w in WINDOWS], axis=-1)


class RsnaIch(common.SplitBuilder):
  """RSNA intracranial hemorrhage: 3-window CT slice, 'any' label, subtype labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      common.RadConfig(name="any", folds=0, description="'any' hemorrhage label; no k-fold."),
      common.RadConfig(name="any_5fold", folds=5, description="'any' label; with 5 folds."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Accept the rules of the Kaggle competition "RSNA Intracranial Hemorrhage Detection"
  (https://www.kaggle.com/c/rsna-intracranial-hemorrhage-detection), download its data
  (`kaggle competitions download -c rsna-intracranial-hemorrhage-detection`) and extract it so that
  --manual_dir contains {LABELS_CSV} and {IMAGES}/.
  """

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=("RSNA intracranial hemorrhage head CT; channels = brain (40/80), subdural "
                     "(80/200), bone (600/2800) windows; label = 'any'. Groups: DICOM PatientID. " +
                     common.split_description(self.builder_config)),
        features=tfds.features.FeaturesDict({
            "image": common.image_feature(3),
            "label": common.class_label(("no_hemorrhage", "hemorrhage")),
            "subtypes": tfds.features.Tensor(shape=(len(SUBTYPES),), dtype=np.int32),
            "patient_id": tfds.features.Text(),
            "image_id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://www.kaggle.com/c/rsna-intracranial-hemorrhage-detection",
    )

  def _list_items(self, manual_dir):
    import pydicom
    csv_path = self.require(manual_dir, LABELS_CSV)
    self.require(manual_dir, IMAGES)
    labels, first_line = collections.defaultdict(dict), {}
    with open(csv_path, newline="") as f:
      reader = csv.DictReader(f)
      for r in reader:
        image_id, _, subtype = (r["ID"] or "").strip().rpartition("_")
        if subtype not in SUBTYPES + ("any",):
          self.source_error(csv_path, f"ID {r['ID']}: subtype {subtype!r} not in "
                            f"{SUBTYPES + ('any',)}")
          continue
        if (r["Label"] or "").strip() not in ("0", "1"):
          self.source_error(csv_path, f"ID {r['ID']}: Label {r['Label']!r} not 0 or 1")
          continue
        labels[image_id][subtype] = int(r["Label"])
        first_line.setdefault(image_id, reader.line_num)
    items = []
    for image_id, lab in sorted(labels.items()):
      path = self.source_path(manual_dir, manual_dir / IMAGES, f"{image_id}.dcm", source=csv_path,
                              where=f"line {first_line[image_id]} (ID)")
      if path is None:
        continue
      if "any" not in lab:
        self.source_error(csv_path, f"{image_id}: no '{image_id}_any' row")
        continue
      if not os.path.exists(path):
        self.source_error(path, f"named in {LABELS_CSV} but missing")
        continue
      try:  # the patient is only in the header: read it (without pixels) to group the slices
        patient = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
                      .get("PatientID", "")).strip()
      except Exception as e:  # pylint: disable=broad-except  # any pydicom error: bad source file
        self.source_error(path, f"not a readable DICOM file ({type(e).__name__}: {e})")
        continue
      if not patient:
        self.source_error(path, "DICOM header has no PatientID (needed for the patient split)")
        continue
      subtypes = [lab.get(s, 0) for s in SUBTYPES]
      items.append(common.Item(key=image_id, group=patient, label=lab["any"],
                               data=(path, subtypes)))
    return items

  def _examples(self, item):
    path, subtypes = item.data
    try:
      hu = readers.read_dicom(path)
    except readers.ReaderError as e:
      self.source_error(path, e.reason)
      return
    if hu.ndim != 2:
      self.source_error(path, f"expected a 2D CT slice, got shape {hu.shape}")
      return
    yield item.key, {
        "image": common.encode_png(three_windows(hu)),
        "label": item.label,
        "subtypes": np.asarray(subtypes, np.int32),
        "patient_id": item.group,
        "image_id": item.key,
    }
