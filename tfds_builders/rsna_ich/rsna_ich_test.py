"""rsna_ich builder on dummy_data: 'any' label, subtypes, three windows, DICOM-PatientID groups."""
import csv
import os

import numpy as np
import pydicom
import pytest

from radimagenet_jax.data.build import readers
from radimagenet_jax.data.build import tfds_base
from tfds_builders import testing_utils as tu
from tfds_builders.rsna_ich import rsna_ich as lib

ROOT = tu.dummy_dir("rsna_ich")


def _labels():
  out = {}
  with open(os.path.join(ROOT, lib.LABELS_CSV)) as f:
    for r in csv.DictReader(f):
      image, _, sub = r["ID"].rpartition("_")
      out.setdefault(image, {})[sub] = int(r["Label"])
  return out


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
  return tu.read_all(tu.build("rsna_ich/any_5fold", ROOT, tmp_path_factory.mktemp("tfds")))


def test_patients_from_dicom_headers_never_cross_splits(splits):
  tu.check_grouped_splits(splits, "image_id", len(_labels()), folds=5)
  for e in (e for s in splits.values() for e in s):
    path = os.path.join(ROOT, lib.IMAGES, tu.text(e["image_id"]) + ".dcm")
    assert tu.text(e["patient_id"]) == pydicom.dcmread(path).PatientID


def test_labels_subtypes_and_window_channels(splits):
  labels = _labels()
  for e in (e for s in tu.GROUP_SPLITS for e in splits[s]):
    image_id = tu.text(e["image_id"])
    assert e["label"] == labels[image_id]["any"]
    assert e["subtypes"].tolist() == [labels[image_id][s] for s in lib.SUBTYPES]
    hu = readers.read_dicom(os.path.join(ROOT, lib.IMAGES, image_id + ".dcm"))
    for c, (center, width) in enumerate(((40, 80), (80, 200), (600, 2800))):
      np.testing.assert_array_equal(e["image"][..., c], readers.window(hu, center, width))


def test_missing_any_row_and_missing_file_are_source_errors(tmp_path):
  manual = tu.copy_dummy("rsna_ich", tmp_path)
  image_ids = sorted(_labels())
  os.remove(os.path.join(manual, lib.IMAGES, image_ids[0] + ".dcm"))
  with pytest.raises(tfds_base.SourceFileError, match=f"{image_ids[0]}.dcm: named in"):
    tu.build("rsna_ich", manual, tmp_path / "fail")
  csv_path = os.path.join(manual, lib.LABELS_CSV)
  with open(csv_path) as f:
    lines = [l for l in f if not l.startswith(f"{image_ids[1]}_any")]
  with open(csv_path, "w") as f:
    f.writelines(lines)
  builder = tu.build("rsna_ich", manual, tmp_path / "skip", on_error="skip")
  reasons = {r[0]: r[1] for r in tu.skipped(builder)}
  assert reasons[csv_path] == f"{image_ids[1]}: no '{image_ids[1]}_any' row"
  assert len(reasons) == 2 and builder.info.splits.total_num_examples == len(image_ids) - 2
