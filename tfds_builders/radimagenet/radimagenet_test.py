"""radimagenet builder on dummy_data: official CSV split, class names, data problems, bad input."""
import csv
import os

import numpy as np
import pytest

from radimagenet_jax.data.build import tfds_base
from tfds_builders import testing_utils as tu
from tfds_builders.radimagenet import class_from_path

DUP = ("radiology_ai/CT/abd/normal/abd-normal000001.png",
       "radiology_ai/CT/lung/Nodule/lung000004.png")
BLANK = "radiology_ai/MR/af/hematoma/foot000004.png"
CLASSES = ["abd-normal", "af-hematoma", "lung-Nodule", "us-gb"]


def _csv(split):
  with open(os.path.join(tu.dummy_dir("radimagenet"), f"RadiologyAI_{split}.csv")) as f:
    return {r["filename"]: r["label"] for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  out = {}
  for cfg in ("default", "clean"):
    builder = tu.build(f"radimagenet/{cfg}", tu.dummy_dir("radimagenet"), data_dir)
    out[cfg] = builder, tu.read_all(builder)
  return out


def test_official_split_and_labels_follow_the_csvs(built):
  builder, splits = built["default"]
  names = builder.info.features["label"].names
  assert names == CLASSES
  assert sorted(splits) == ["test", "train", "validation"]  # no folds for radimagenet
  for split, csv_name in (("train", "train"), ("validation", "val"), ("test", "test")):
    expected = _csv(csv_name)
    got = {tu.text(e["file_name"]): names[e["label"]] for e in splits[split]}
    assert got == expected


def test_features_modality_anatomy_and_pixels(built):
  builder, splits = built["default"]
  for e in splits["train"] + splits["test"]:
    f = tu.text(e["file_name"])
    modality, anatomy, _ = class_from_path(f)
    assert builder.info.features["modality"].names[e["modality"]] == modality
    assert tu.text(e["anatomy"]) == anatomy
    np.testing.assert_array_equal(e["image"], tu.pil(os.path.join(tu.dummy_dir("radimagenet"), f)))


def test_class_from_path_follows_the_release_layout():
  assert class_from_path("radiology_ai/CT/abd/normal/abd-normal039513.png") == (
      "CT", "abd", "abd-normal")
  assert class_from_path("radiology_ai/US/gb/usn309850.png") == ("US", "us", "us-gb")
  with pytest.raises(ValueError, match="expected radiology_ai/MR/<anatomy>/<label>/<file>"):
    class_from_path("radiology_ai/MR/af/foot079779.png")


def test_duplicates_and_blank_images_are_reported_and_dropped_by_clean(built):
  builder, splits = built["default"]
  with open(os.path.join(os.fspath(builder.data_path), "duplicates.tsv")) as f:
    rows = [line.rstrip("\n").split("\t") for line in f][1:]
  assert [r[1:] for r in rows] == [[DUP[0], "abd-normal"], [DUP[1], "lung-Nodule"]]
  assert rows[0][0] == rows[1][0]  # same md5
  with open(os.path.join(os.fspath(builder.data_path), "blank.tsv")) as f:
    assert [line.split("\t")[0] for line in f][1:] == [BLANK]
  assert "2 files in 1 groups of identical images" in builder.info.description
  assert "1 blank images" in builder.info.description
  assert "4 classes (the full release has 165)" in builder.info.description
  all_files = {tu.text(e["file_name"]) for s in splits.values() for e in s}
  assert len(all_files) == 16 and set(DUP) | {BLANK} <= all_files
  clean_builder, clean = built["clean"]
  clean_files = {tu.text(e["file_name"]) for s in clean.values() for e in s}
  assert clean_files == all_files - set(DUP) - {BLANK}
  assert "both left out" in clean_builder.info.description


def test_without_csvs_classes_come_from_folders_and_split_is_per_image(tmp_path):
  manual = tu.copy_dummy("radimagenet", tmp_path)
  for split in ("train", "val", "test"):
    os.remove(os.path.join(manual, f"RadiologyAI_{split}.csv"))
  builder = tu.build("radimagenet", manual, tmp_path / "d")
  splits = tu.read_all(builder)
  names = builder.info.features["label"].names
  assert names == CLASSES
  for e in (e for s in splits.values() for e in s):
    e["patient_id"] = e["file_name"]
    assert names[e["label"]] == class_from_path(tu.text(e["file_name"]))[2]
  tu.check_grouped_splits(splits, "file_name", 16, folds=0)
  assert [len(splits[s]) for s in tu.GROUP_SPLITS] == [12, 2, 2]


def test_file_named_in_csv_but_missing_fails_or_is_skipped(tmp_path):
  manual = tu.copy_dummy("radimagenet", tmp_path)
  gone = os.path.join(manual, "radiology_ai/US/gb/usn000003.png")
  os.remove(gone)
  with pytest.raises(tfds_base.SourceFileError, match="usn000003.png: named in the split CSVs"):
    tu.build("radimagenet", manual, tmp_path / "fail")
  builder = tu.build("radimagenet", manual, tmp_path / "skip", on_error="skip")
  assert tu.skipped(builder) == [[gone, "named in the split CSVs but missing"]]
  assert builder.info.splits.total_num_examples == 15


def test_wrong_manual_dir_shows_the_download_instructions(tmp_path):
  (tmp_path / "wrong" / "CT").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="radimagenet.com"):
    tu.build("radimagenet", tmp_path / "wrong", tmp_path / "d")
