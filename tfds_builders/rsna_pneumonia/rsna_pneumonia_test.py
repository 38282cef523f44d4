"""rsna_pneumonia builder on dummy_data: one example per patient, label, box masks, bad input."""
import csv
import os

import numpy as np
import pytest

from radimagenet_jax.data.build import readers
from radimagenet_jax.data.build import tfds_base
from tfds_builders import testing_utils as tu
from tfds_builders.rsna_pneumonia import rsna_pneumonia as lib

ROOT = tu.dummy_dir("rsna_pneumonia")


def _rows():
  with open(os.path.join(ROOT, lib.LABELS_CSV)) as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
  return tu.read_all(tu.build("rsna_pneumonia", ROOT, tmp_path_factory.mktemp("tfds")))


def test_one_example_per_patient_and_no_patient_in_two_splits(splits):
  tu.check_grouped_splits(splits, "patient_id", len({r["patientId"] for r in _rows()}), folds=5)


def test_label_mask_and_pixels(splits):
  rows = _rows()
  for e in (e for s in tu.GROUP_SPLITS for e in splits[s]):
    pid = tu.text(e["patient_id"])
    mine = [r for r in rows if r["patientId"] == pid]
    assert e["label"] == max(int(r["Target"]) for r in mine)
    boxes = [r for r in mine if r["Target"] == "1"]
    assert e["num_boxes"] == len(boxes)
    expected = np.zeros(e["image"].shape[:2], np.uint8)
    for r in boxes:  # closed form of the documented rounding: floor(start) .. ceil(end) - 1
      x, y, w, h = (float(r[k]) for k in ("x", "y", "width", "height"))
      expected[int(np.floor(y)):int(np.ceil(y + h)), int(np.floor(x)):int(np.ceil(x + w))] = 1
    np.testing.assert_array_equal(e["mask"][..., 0], expected)
    pixels = readers.read_dicom(os.path.join(ROOT, lib.IMAGES, pid + ".dcm"))
    np.testing.assert_array_equal(e["image"][..., 0], pixels.astype(np.uint8))
  two = [e for s in splits.values() for e in s if e["num_boxes"] == 2][0]
  assert two["mask"].sum() == 5 * 4 + 2 * 2  # rows 2..6 x cols 1..4 (x=1.5, w=3) and a 2x2 box


def test_unreadable_dicom_fails_or_is_skipped(tmp_path):
  manual = tu.copy_dummy("rsna_pneumonia", tmp_path)
  pid = _rows()[0]["patientId"]
  bad = os.path.join(manual, lib.IMAGES, pid + ".dcm")
  tu.truncate(bad, keep=300)
  with pytest.raises(tfds_base.SourceFileError, match=pid):
    tu.build("rsna_pneumonia", manual, tmp_path / "fail")
  builder = tu.build("rsna_pneumonia", manual, tmp_path / "skip", on_error="skip")
  assert [r[0] for r in tu.skipped(builder)] == [bad]
  assert sum(builder.info.splits[s].num_examples for s in tu.GROUP_SPLITS) == 9
