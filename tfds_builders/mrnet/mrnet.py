"""`mrnet`: Stanford MRNet knee MRI (Bien et al., PLOS Medicine 2018) as 2D slices.

Release layout (`--manual_dir` holds `MRNet-v1.0/`, or is that folder):

    MRNet-v1.0/{train,valid}/{axial,coronal,sagittal}/0000.npy   uint8 (slices, 256, 256) per exam
    MRNet-v1.0/{train,valid}-{acl,meniscus,abnormal}.csv        no header: exam id, label 0/1

Configs `<task>_<plane>`: task acl / meniscus / abnormal (the label), plane axial / coronal /
sagittal (the volumes sliced). Every slice of an exam is an example with the exam's label; the
exam is the group (`patient_id` = exam id: MRNet publishes no patient ids, so two exams of one
patient could fall into different splits). The official train and valid sets are pooled and
re-split 75/10/15 by exam; `official_split` keeps 'train' / 'valid' for reproducing the official
split by filtering.
"""
from __future__ import annotations

import csv
import os

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

FOLDER = "MRNet-v1.0"
TASKS = {"acl": ("no_tear", "tear"), "meniscus": ("no_tear", "tear"),
         "abnormal": ("normal", "abnormal")}
PLANES = ("axial", "coronal", "sagittal")
OFFICIAL = ("train", "valid")


class MrnetConfig(common.RadConfig):
  """A RadConfig whose name is '<task>_<plane>'."""

  @property
  def task(self) -> str:
    return self.name.split("_")[0]

  @property
  def plane(self) -> str:
    return self.name.split("_")[1]


class Mrnet(common.SplitBuilder):
  """MRNet knee MRI slices with ACL / meniscus / abnormal exam labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [MrnetConfig(name=f"{t}_{p}", description=f"{t} label, {p} slices.")
                     for t in TASKS for p in PLANES]
  DEFAULT_BUILDER_CONFIG_NAME = "acl_sagittal"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  MRNet is distributed by the Stanford ML Group under its research use agreement: register at
  https://stanfordmlgroup.github.io/competitions/mrnet/ , download MRNet-v1.0.zip and extract it so
  that --manual_dir contains {FOLDER}/train, {FOLDER}/valid and the {FOLDER}/*-{{acl,meniscus,
  abnormal}}.csv label files.
  """

  def _info(self):
    cfg = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"MRNet knee MRI, {cfg.plane} slices, {cfg.task} label per exam. Groups: "
                     "exams (no patient ids published). " + common.split_description(cfg)),
        features=tfds.features.FeaturesDict({
            "image": common.image_feature(1),
            "label": common.class_label(TASKS[cfg.task]),
            "patient_id": tfds.features.Text(),
            "slice_index": np.int32,
            "official_split": common.class_label(OFFICIAL),
        }),
        supervised_keys=("image", "label"),
        homepage="https://stanfordmlgroup.github.io/competitions/mrnet/",
        citation="Bien N, Rajpurkar P, Ball RL, et al. Deep-learning-assisted diagnosis for knee "
                 "magnetic resonance imaging: Development and retrospective validation of MRNet. "
                 "PLoS Med. 2018;15(11):e1002699.",
    )

  def _list_items(self, manual_dir):
    root = manual_dir / FOLDER if (manual_dir / FOLDER).exists() else manual_dir
    task, plane = self.builder_config.task, self.builder_config.plane
    items = []
    for split in OFFICIAL:
      csv_path = self.require(root, f"{split}-{task}.csv")
      with open(csv_path, newline="") as f:
        rows = [(n, r) for n, r in enumerate(csv.reader(f), 1) if r]  # no header: line = row
      for line, row in rows:
        exam = row[0].strip()
        exam = exam.zfill(4) if exam.isdigit() else exam
        volume = self.source_path(manual_dir, os.path.join(os.fspath(root), split, plane),
                                  f"{exam}.npy", source=csv_path, where=f"line {line}")
        if volume is None:
          continue
        if len(row) < 2 or row[1].strip() not in ("0", "1"):
          self.source_error(csv_path, f"exam {exam}: label {row[1:]!r} is not 0 or 1")
          continue
        if not os.path.exists(volume):
          self.source_error(volume, f"named in {os.path.basename(csv_path)} but missing")
          continue
        items.append(common.Item(key=f"{split}/{exam}", group=exam, label=int(row[1]),
                                 data=(volume, split)))
    return items

  def _examples(self, item):
    path, split = item.data
    try:
      volume = np.load(path, allow_pickle=False)
    except Exception as e:  # pylint: disable=broad-except  # truncated / not an .npy: bad source
      self.source_error(path, f"unreadable .npy ({type(e).__name__}: {e})")
      return
    if volume.ndim != 3 or volume.dtype != np.uint8:
      self.source_error(path, f"expected a uint8 (slices, H, W) volume, got {volume.dtype} "
                        f"{volume.shape}")
      return
    for i, sl in enumerate(volume):
      yield f"{item.key}#{i:03d}", {
          "image": common.encode_png(sl[..., None]),
          "label": item.label,
          "patient_id": item.group,
          "slice_index": i,
          "official_split": split,
      }
