"""`official`: the images and exact five folds the official RadImageNet repository ships.

The repository (github.com/BMEII-AI/RadImageNet) holds, for the four small applications, the
images and the train / validation / test CSVs of every fold (docs/fidelity.md "Downstream
fine-tuning"); `--manual_dir` is the clone (or one application's folder):

    <task>/images/...                                  the images
    <task>/dataframe/[<task>_]{train,val,test}_fold{1..5}.csv

    config     CSV prefix   path column  label column  label spellings -> class index
    thyroid    thyroid_     img_dir      label         benign 0, malignant 1   patient: '<n>_k.jpg'
    breast     breast_      filename     label         benign 0, malignant 1   no patient ids
    acl        (none)       filename     acl_label     no 0, yes 1             patient: '<exam>_...'
    meniscus   meniscus_    img_dir      label         n 0, p 1                patient: '<exam>_...'

Class indices are Keras's (`flow_from_dataframe` sorts the spellings), so index 1 is the paper's
positive class. Paths in the CSVs are relative to `<task>/`.

Exactly the images the CSVs list are stored, each ONCE, in the split `fold<t-1>` of the official
fold t whose test CSV lists it (fold0..fold4), with its set and CSV row in every fold
(`official_sets` "train,val,test,..." / `official_rows`), so `finetune.folds` rebuilds each fold's
train / validation / test row for row. Patients with images on two sides of a fold are counted
and reported (dataset description, build summary), never moved. Images under `<task>/images` that
no CSV lists are ignored and counted.

Bad input (a missing CSV, a missing column, an unknown label spelling, a row listed twice, an image
in two sets of one fold or in two test folds, or in none, a path outside the release) is a one-line
ValueError naming the CSV and its line, raised before anything is written; a missing or undecodable
image is a source error (`--on_error=skip` skips it).
"""
from __future__ import annotations

import collections
import csv
import json
import os
import re

import tensorflow_datasets as tfds

from tfds_builders import common

NUM_FOLDS = 5
SETS = ("train", "val", "test")
SET_NAMES = {"train": "train", "val": "validation", "test": "test"}  # finetune.folds' names
SIDE_FILE = "official_folds.json"
_MARKER = "\n\nOfficial folds:"
_EXAM = re.compile(r"^(\d+)_")


def _thyroid_patient(path: str) -> str:
  return os.path.basename(path).split("_")[0]


def _exam(path: str) -> str:
  m = _EXAM.match(os.path.basename(path))
  return m.group(1) if m else os.path.basename(path)


def _image(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


# config -> (CSV prefix, path column, label column, spellings in class order, patient rule, what)
APPS = {
    "thyroid": ("thyroid_", "img_dir", "label", ("benign", "malignant"), _thyroid_patient,
                "thyroid nodules, ultrasound (DDTI): patient = the number before '_'"),
    "breast": ("breast_", "filename", "label", ("benign", "malignant"), _image,
               "breast lesions, ultrasound (BUSI; normal images labelled benign): no patient ids, "
               "each image its own group"),
    "acl": ("", "filename", "acl_label", ("no", "yes"), _exam,
            "ACL tears, curated sagittal MRNet slices: patient = the exam number"),
    "meniscus": ("meniscus_", "img_dir", "label", ("n", "p"), _exam,
                 "meniscus tears, curated sagittal MRNet slices: patient = the exam number"),
}


def csv_name(task: str, split: str, fold: int) -> str:
  """The official CSV file name of ``split`` ('train' | 'val' | 'test') of fold 1..5."""
  return f"{APPS[task][0]}{split}_fold{fold}.csv"


class Official(common.SplitBuilder):
  """The official repository's thyroid / breast / ACL / meniscus images and folds."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [common.RadConfig(name=name, description=APPS[name][5], folds=NUM_FOLDS)
                     for name in APPS]
  DEFAULT_BUILDER_CONFIG_NAME = "acl"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Clone the official RadImageNet repository (git clone https://github.com/BMEII-AI/RadImageNet)
  and pass the clone as --manual_dir (or one application's folder): it must contain
  <task>/images/ and <task>/dataframe/[<task>_]{train,val,test}_fold{1..5}.csv for the task built
  (thyroid, breast, acl, meniscus).
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    side = os.path.join(os.fspath(self.data_path), SIDE_FILE)
    if os.path.exists(side):  # a builder re-created over a built directory reports it too
      with open(side) as f:
        self._append_folds_summary(json.load(f))

  def _info(self):
    task = self.builder_config.name
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"The official RadImageNet repository's {task} set: "
                     f"{self.builder_config.description}. Exactly the images its CSVs list, "
                     f"each stored once in fold<t-1> of the official fold t that tests it, with "
                     f"its set and CSV row in every fold (official_sets / official_rows)."),
        features=tfds.features.FeaturesDict({
            "image": common.image_feature(3),
            "label": common.class_label(APPS[task][3]),
            "patient_id": tfds.features.Text(),
            "file_name": tfds.features.Text(),
            "official_sets": tfds.features.Text(),
            "official_rows": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/BMEII-AI/RadImageNet",
        citation="Mei X, Liu Z, Robson PM, et al. RadImageNet: An Open Radiologic Deep Learning "
                 "Research Dataset for Effective Transfer Learning. Radiol Artif Intell. 2022.",
    )

  # ---- Reading the CSVs: every check before anything is written ----
  def _task_root(self, manual_dir) -> str:
    task = self.builder_config.name
    for root in (os.path.join(os.fspath(manual_dir), task), os.fspath(manual_dir)):
      if os.path.isdir(os.path.join(root, "dataframe")):
        return root
    raise FileNotFoundError(f"{os.path.join(os.fspath(manual_dir), task, 'dataframe')} not "
                            f"found: --manual_dir={manual_dir} does not hold the official "
                            f"{task} folder.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")

  def _read_csv(self, manual_dir, root: str, split: str, fold: int) -> list[tuple[str, int, int]]:
    """[(path relative to root, class index, line number)] of one official CSV, checked."""
    task = self.builder_config.name
    _, path_col, label_col, spellings, _, _ = APPS[task]
    name = os.path.join(root, "dataframe", csv_name(task, split, fold))
    if not os.path.isfile(name):
      raise FileNotFoundError(f"{name}: official fold file missing; expected the five folds' "
                              f"{', '.join(csv_name(task, s, fold) for s in SETS)}.")
    with open(name, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      if not {path_col, label_col} <= set(reader.fieldnames or ()):
        raise ValueError(f"{name} line 1: columns {reader.fieldnames}; expected "
                         f"{path_col},{label_col} (the official {task} CSVs).")
      rows, seen = [], {}
      for line, row in enumerate(reader, start=2):
        rel, label = (row[path_col] or "").strip(), (row[label_col] or "").strip()
        if label not in spellings:
          raise ValueError(f"{name} line {line}: label {label!r}; expected one of "
                           f"{', '.join(spellings)}.")
        if not rel:
          raise ValueError(f"{name} line {line}: empty {path_col}; expected an image path.")
        if rel in seen:
          raise ValueError(f"{name} line {line}: {rel} is listed twice (also line {seen[rel]}); "
                           "expected each image once per CSV.")
        seen[rel] = line
        if self.source_path(manual_dir, root, rel, source=name, where=f"line {line}") is None:
          continue
        rows.append((rel, spellings.index(label), line))
    return rows

  def _list_items(self, manual_dir):
    task = self.builder_config.name
    root = self._task_root(manual_dir)
    roles: dict[str, list[str]] = collections.defaultdict(lambda: ["none"] * NUM_FOLDS)
    rows: dict[str, list[int]] = collections.defaultdict(lambda: [-1] * NUM_FOLDS)
    labels, where = {}, {}
    for fold in range(1, NUM_FOLDS + 1):
      for split in SETS:
        csv_path = os.path.join(root, "dataframe", csv_name(task, split, fold))
        for i, (rel, label, line) in enumerate(self._read_csv(manual_dir, root, split, fold)):
          here = f"{csv_path} line {line}"
          if roles[rel][fold - 1] != "none":
            raise ValueError(f"{here}: {rel} is also in the {roles[rel][fold - 1]} set of fold "
                             f"{fold} ({where[rel, fold]}); expected one set per fold.")
          if split == "test" and "test" in roles[rel]:
            raise ValueError(f"{here}: {rel} is also in the test set of fold "
                             f"{roles[rel].index('test') + 1}; expected every image in exactly "
                             "one test fold.")
          if labels.setdefault(rel, (label, here))[0] != label:
            raise ValueError(f"{here}: {rel} labelled {APPS[task][3][label]!r}, but "
                             f"{APPS[task][3][labels[rel][0]]!r} in {labels[rel][1]}; expected "
                             "one label per image.")
          roles[rel][fold - 1], rows[rel][fold - 1] = SET_NAMES[split], i
          where[rel, fold] = here
    untested = [rel for rel in roles if "test" not in roles[rel]]
    if untested:
      raise ValueError(f"{labels[untested[0]][1]}: {untested[0]} is in no test fold "
                       f"({len(untested)} such images); expected every image in exactly one.")
    items = []
    for rel in roles:
      path = os.path.join(root, rel)
      if not os.path.isfile(path):
        self.source_error(path, f"listed in {labels[rel][1]} but not found")
        continue
      items.append(common.Item(key=rel, group=APPS[task][4](rel), label=labels[rel][0],
                               data=(path, roles[rel], rows[rel])))
    self._folds_summary = self._summary(root, items)
    return items

  def _summary(self, root: str, items) -> dict:
    """Per fold, set sizes and patients on two sides; images not listed by any CSV."""
    listed = {os.path.normpath(os.path.join(root, it.key)) for it in items}
    images = os.path.join(root, "images")
    unlisted = sum(1 for d, _, files in os.walk(images) for f in files
                   if os.path.normpath(os.path.join(d, f)) not in listed) if os.path.isdir(
                       images) else 0
    folds = []
    for k in range(NUM_FOLDS):
      groups = {s: {it.group for it in items if it.data[1][k] == s} for s in SET_NAMES.values()}
      folds.append({"fold": k + 1,
                    **{s: sum(it.data[1][k] == s for it in items) for s in SET_NAMES.values()},
                    "patients_train_test": len(groups["train"] & groups["test"]),
                    "patients_validation_test": len(groups["validation"] & groups["test"]),
                    "patients_train_validation": len(groups["train"] & groups["validation"])})
    return {"images": len(items), "unlisted_images_ignored": unlisted, "folds": folds}

  def _assign_splits(self, items):
    return {f"fold{k}": [it for it in items if it.data[1][k] == "test"] for k in range(NUM_FOLDS)}

  def _examples(self, item):
    path, roles, rows = item.data
    image = self.read_image_or_error(path, 3)
    if image is None:
      return
    yield item.key, {
        "image": common.encode_png(image),
        "label": item.label,
        "patient_id": item.group,
        "file_name": item.key,
        "official_sets": ",".join(roles),
        "official_rows": ",".join(str(r) for r in rows),
    }

  # ---- The summary: dataset description, side file, build summary lines ----
  def summary_lines(self) -> list[str]:
    """What `radimagenet-jax build` prints after the split counts."""
    return format_summary(getattr(self, "_folds_summary", None) or {}).strip().splitlines()

  def _append_folds_summary(self, summary: dict) -> None:
    proto = self.info.as_proto
    if _MARKER not in proto.description:
      proto.description = proto.description + format_summary(summary)

  def _download_and_prepare(self, dl_manager, download_config):  # pytype: disable=signature-mismatch
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    summary = getattr(self, "_folds_summary", {})
    with open(os.path.join(os.fspath(self.data_dir), SIDE_FILE), "w") as f:
      json.dump(summary, f, indent=1)
    self._append_folds_summary(summary)


def format_summary(summary: dict) -> str:
  """The description paragraph: images, ignored unlisted images, per fold sizes and overlap."""
  if not summary:
    return ""
  text = (f"{_MARKER} {summary['images']} images listed by the CSVs; "
          f"{summary['unlisted_images_ignored']} images in images/ not listed, ignored.")
  for f in summary["folds"]:
    text += (f"\n- fold {f['fold']}: train {f['train']}, validation {f['validation']}, test "
             f"{f['test']}; patients on two sides (reported, not fixed): train/test "
             f"{f['patients_train_test']}, validation/test {f['patients_validation_test']}, "
             f"train/validation {f['patients_train_validation']}")
  return text
