"""`cc_ccii`: China Consortium of Chest CT Image Investigation (Zhang et al., Cell 2020) CT slices.

Release layout in `--manual_dir` (the per-class archives extracted side by side):

    {NCP,CP,Normal}/<patient_id>/<scan_id>/<slice>.png|.jpg

NCP = novel coronavirus pneumonia (COVID-19), CP = common pneumonia, Normal = healthy controls.
Each slice is an example with its folder's class; the patient folder is the group (all scans of a
patient in one split). Slices are stored as grayscale. Configs:

- `ncp_vs_cp` (default): the paper's SARS-CoV-2 task, CP (0) vs NCP (1); Normal left out;
- `three_class`: CP / NCP / Normal.
"""
from __future__ import annotations

import os

import tensorflow_datasets as tfds

from tfds_builders import common

SOURCE_CLASSES = ("CP", "NCP", "Normal")
EXTS = (".png", ".jpg", ".jpeg")
_CONFIGS = {"ncp_vs_cp": ("CP", "NCP"), "three_class": SOURCE_CLASSES}


class CcCcii(common.SplitBuilder):
  """CC-CCII chest CT slices: NCP / CP (/ Normal)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      common.RadConfig(name="ncp_vs_cp", description="CP (0) vs NCP (1); Normal left out."),
      common.RadConfig(name="three_class", description="CP / NCP / Normal."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  CC-CCII is published by the China Consortium of Chest CT Image Investigation (Zhang K. et al.,
  Cell 2020;181(6):1423-1433): download the slice archives from http://ncov-ai.big.ac.cn/download
  and extract them so that --manual_dir contains NCP/, CP/ and Normal/, each with
  <patient_id>/<scan_id>/<slice>.png|jpg.
  """

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=("CC-CCII chest CT slices; " + self.builder_config.description +
                     " Groups: patients. " + common.split_description(self.builder_config)),
        features=tfds.features.FeaturesDict({
            "image": common.image_feature(1),
            "label": common.class_label(_CONFIGS[self.builder_config.name]),
            "patient_id": tfds.features.Text(),
            "scan_id": tfds.features.Text(),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="http://ncov-ai.big.ac.cn/download",
        citation="Zhang K, Liu X, Shen J, et al. Clinically Applicable AI System for Accurate "
                 "Diagnosis, Quantitative Measurements, and Prognosis of COVID-19 Pneumonia Using "
                 "Computed Tomography. Cell. 2020;181(6):1423-1433.",
    )

  def _list_items(self, manual_dir):
    names = _CONFIGS[self.builder_config.name]
    items = []
    for source in names:
      folder = self.require(manual_dir, source)
      for dirpath, dirnames, filenames in os.walk(os.fspath(folder)):
        dirnames.sort()
        slices = sorted(f for f in filenames if f.lower().endswith(EXTS))
        if not slices:
          continue
        parts = common.rel(dirpath, manual_dir).split("/")
        if len(parts) != 3:
          for fn in slices:
            self.source_error(os.path.join(dirpath, fn),
                              "slice not in a <class>/<patient_id>/<scan_id>/ folder")
          continue
        for fn in slices:  # one item per slice: a corrupt slice costs only itself
          items.append(common.Item(key="/".join(parts + [fn]), group=parts[1],
                                   label=names.index(source), data=os.path.join(dirpath, fn)))
    return items

  def _examples(self, item):
    _, patient, scan, _ = item.key.split("/")
    image = self.read_image_or_error(item.data, 1)
    if image is not None:
      yield item.key, {"image": common.encode_png(image), "label": item.label,
                       "patient_id": patient, "scan_id": scan, "file_name": item.key}
