"""`radimagenet`: the RadImageNet release (Mei et al., Radiology: AI 2022), 165 classes.

Release layout in `--manual_dir`:

    radiology_ai/{CT,MR}/<anatomy>/<label>/<file>.png    e.g. CT/abd/normal/abd-normal039513.png
    radiology_ai/US/<label>/<file>.png                   e.g. US/gb/usn309850.png
    RadiologyAI_{train,val,test}.csv                     optional; columns filename,label

Labels and splits:

- with the split CSVs (next to `radiology_ai/` or inside it): the official split (train /
  validation / test = RadiologyAI_train / _val / _test); the class names are the CSV labels
  (e.g. `abd-normal`), sorted; a file named in a CSV but missing, or resolving outside
  `--manual_dir` (`..`, a symlink out of it), is a bad source file. Files on disk that no CSV names are not used (counted in the
  description).
- without them: class name `<anatomy>-<label folder>` (CT/MR) or `us-<label folder>` (US), sorted,
  and a per-image 75/10/15 split (`splits.group_split`). The release carries no patient ids (file
  names are running numbers per anatomy), so this split is PER IMAGE, not per patient as in the
  paper: images of one patient can land in different splits. Prefer the official CSVs.

Known data problems are reported, not hidden: identical files (same MD5) under different labels
(`duplicates.tsv`: md5, file_name, label) and blank images, all pixels equal (`blank.tsv`:
file_name, label, value). Their counts are in the dataset description. Config `clean` drops them
(every copy of a conflicting duplicate; blank images); `default` keeps everything.

Features: image (uint8 HxWx3 PNG, grayscale replicated as Keras' color_mode='rgb' does), label,
modality (CT/MR/US), anatomy (the folder; `us` for ultrasound, which has no anatomy level),
file_name (path from radiology_ai/).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import os

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common

MODALITIES = ("CT", "MR", "US")
SPLIT_CSVS = {"train": "RadiologyAI_train.csv", "validation": "RadiologyAI_val.csv",
              "test": "RadiologyAI_test.csv"}
DUPLICATES_FILE = "duplicates.tsv"
BLANK_FILE = "blank.tsv"
_MARKER = "\n\nData problems:"


@dataclasses.dataclass(eq=False)
class RadImageNetConfig(common.RadConfig):
  """drop_problems: leave out conflicting duplicates and blank images."""
  drop_problems: bool = False
  folds: int = 0  # 1.35 M images: no k-fold copies by default


def class_from_path(rel_path: str) -> tuple[str, str, str]:
  """'radiology_ai/CT/abd/normal/x.png' -> ('CT', 'abd', 'abd-normal'); US -> ('US', 'us', 'us-gb').

  Raises:
    ValueError: the path does not follow the release layout.
  """
  parts = rel_path.split("/")
  if len(parts) < 4 or parts[0] != "radiology_ai" or parts[1] not in MODALITIES:
    raise ValueError(f"not under radiology_ai/{{{','.join(MODALITIES)}}}/")
  if parts[1] == "US":
    if len(parts) != 4:
      raise ValueError("expected radiology_ai/US/<label>/<file>")
    return "US", "us", f"us-{parts[2]}"
  if len(parts) != 5:
    raise ValueError(f"expected radiology_ai/{parts[1]}/<anatomy>/<label>/<file>")
  return parts[1], parts[2], f"{parts[2]}-{parts[3]}"


class Radimagenet(common.SplitBuilder):
  """RadImageNet: CT / MR / US key images in 165 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      RadImageNetConfig(name="default", description="All images; data problems reported."),
      RadImageNetConfig(name="clean", drop_problems=True,
                        description="Conflicting duplicates and blank images left out."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  RadImageNet is distributed by the RadImageNet team (BioMedical Engineering and Imaging Institute,
  Icahn School of Medicine at Mount Sinai) on request: fill in the data request form at
  https://www.radimagenet.com/ and, once access is granted, download and extract the release so
  that --manual_dir contains radiology_ai/CT, radiology_ai/MR, radiology_ai/US and (recommended,
  for the official split) RadiologyAI_train.csv, RadiologyAI_val.csv, RadiologyAI_test.csv.
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    if os.path.exists(os.path.join(os.fspath(self.data_path), DUPLICATES_FILE)):
      self._append_problems(_read_tsv(os.path.join(os.fspath(self.data_path), DUPLICATES_FILE)),
                            _read_tsv(os.path.join(os.fspath(self.data_path), BLANK_FILE)), None)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=("RadImageNet key images (CT, MR, US). " + self.builder_config.description +
                     " Official split from RadiologyAI_{train,val,test}.csv when present, else a "
                     "per-image 75/10/15 split (no patient ids in the release)."),
        features=tfds.features.FeaturesDict({
            "image": common.image_feature(3),
            "label": common.class_label(getattr(self, "_found_names", None)),
            "modality": common.class_label(MODALITIES),
            "anatomy": tfds.features.Text(),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://www.radimagenet.com/",
        citation="Mei X, Liu Z, Robson PM, et al. RadImageNet: An Open Radiologic Deep Learning "
                 "Research Dataset for Effective Transfer Learning. Radiol Artif Intell. "
                 "2022;4(5):e210315.",
    )

  def _set_names(self, names):
    self._found_names = names
    self.info.features["label"].names = names

  def _csv_dir(self, manual_dir):
    for d in (manual_dir, manual_dir / "radiology_ai"):
      if all((d / f).exists() for f in SPLIT_CSVS.values()):
        return d
    return None

  def _list_items(self, manual_dir):
    self.require(manual_dir, "radiology_ai")
    on_disk = {}
    for dirpath, dirnames, filenames in os.walk(os.fspath(manual_dir / "radiology_ai")):
      dirnames.sort()
      for fn in sorted(filenames):
        if fn.lower().endswith(".png"):
          path = os.path.join(dirpath, fn)
          on_disk[common.rel(path, manual_dir)] = path
    csv_dir = self._csv_dir(manual_dir)
    self._official = csv_dir is not None
    if self._official:
      rows = []  # (rel path, label, split)
      for split, name in SPLIT_CSVS.items():
        with open(csv_dir / name, newline="") as f:
          reader = csv.DictReader(f)
          if not {"filename", "label"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{csv_dir / name}: expected columns filename,label, got "
                             f"{reader.fieldnames}")
          for r in reader:  # a name that leaves manual_dir is a bad row, never looked at
            rel = _release_path(r["filename"] or "")
            if self.source_path(manual_dir, manual_dir, rel, source=csv_dir / name,
                                where=f"line {reader.line_num}") is not None:
              rows.append((rel, (r["label"] or "").strip(), split))
      names = sorted({label for _, label, _ in rows})
      self._unused = len(set(on_disk) - {r for r, _, _ in rows})
    else:
      rows = []
      for r in on_disk:
        try:
          rows.append((r, class_from_path(r)[2], None))
        except ValueError as e:
          self.source_error(on_disk[r], str(e))
      names = sorted({label for _, label, _ in rows})
      self._unused = 0
    self._set_names(names)
    index = {n: i for i, n in enumerate(names)}
    items = []
    for r, label, split in rows:
      path = on_disk.get(r) or os.fspath(manual_dir / r)
      if r not in on_disk:
        self.source_error(path, "named in the split CSVs but missing")
        continue
      try:
        modality, anatomy, _ = class_from_path(r)
      except ValueError as e:
        self.source_error(path, str(e))
        continue
      with open(path, "rb") as f:
        md5 = hashlib.md5(f.read()).hexdigest()
      items.append(common.Item(key=r, group=r, label=index[label],
                               data=dict(path=path, split=split, modality=modality,
                                         anatomy=anatomy, md5=md5)))
    self._duplicates = self._conflicting_duplicates(items, names)
    if self.builder_config.drop_problems:
      dup = {row[1] for row in self._duplicates}
      items = [it for it in items if it.key not in dup]
    self._blank = []
    return items

  @staticmethod
  def _conflicting_duplicates(items, names):
    by_md5 = collections.defaultdict(list)
    for it in items:
      by_md5[it.data["md5"]].append(it)
    rows = []
    for md5, group in sorted(by_md5.items()):
      if len({it.label for it in group}) > 1:
        rows += [(md5, it.key, names[it.label]) for it in sorted(group, key=lambda i: i.key)]
    return rows

  def _assign_splits(self, items):
    if not self._official:
      return super()._assign_splits(items)
    out = {name: [] for name in SPLIT_CSVS}
    for it in items:
      out[it.data["split"]].append(it)
    return out

  def _examples(self, item):
    with open(item.data["path"], "rb") as f:
      raw = f.read()
    image = self.read_image_or_error(item.data["path"], 3)
    if image is None:
      return
    if image.min() == image.max():
      self._blank.append((item.key, self.info.features["label"].names[item.label],
                          str(int(image.flat[0]))))
      if self.builder_config.drop_problems:
        return
    yield item.key, {
        "image": common.png_bytes(raw, image),
        "label": item.label,
        "modality": item.data["modality"],
        "anatomy": item.data["anatomy"],
        "file_name": item.key,
    }

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    out = os.fspath(self.data_dir)  # TFDS's temporary directory, renamed into place with the data
    _write_tsv(os.path.join(out, DUPLICATES_FILE), ("md5", "file_name", "label"), self._duplicates)
    blank = sorted(set(self._blank))
    _write_tsv(os.path.join(out, BLANK_FILE), ("file_name", "label", "value"), blank)
    self._append_problems(self._duplicates, blank, self._unused)

  def _append_problems(self, duplicates, blank, unused):
    proto = self.info.as_proto
    if _MARKER in proto.description:
      return
    n_md5 = len({row[0] for row in duplicates})
    action = "left out" if self.builder_config.drop_problems else "kept"
    n_classes = self.info.features["label"].num_classes
    text = (f"{_MARKER} {n_classes} classes (the full release has 165); "
            f"{len(duplicates)} files in {n_md5} groups of identical images under "
            f"different labels (listed in {DUPLICATES_FILE}); {len(blank)} blank images (all "
            f"pixels equal; listed in {BLANK_FILE}); both {action}.")
    if unused:
      text += f" {unused} PNG files on disk are named by no split CSV and were not used."
    proto.description += text


def _release_path(filename: str) -> str:
  """A CSV filename as a path from manual_dir: 'radiology_ai/...' (prefixed when the CSV omits it)."""
  filename = filename.strip().replace("\\", "/").lstrip("/")
  return filename if filename.startswith("radiology_ai/") else "radiology_ai/" + filename


def _write_tsv(path, header, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f, delimiter="\t", lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)


def _read_tsv(path):
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return [tuple(r) for r in list(csv.reader(f, delimiter="\t"))[1:] if r]
