"""mrnet builder on dummy_data: slices per exam, labels from the task CSVs, exam-grouped splits."""
import csv
import os

import numpy as np
import pytest

from radimagenet_jax.data.build import tfds_base
from tfds_builders import testing_utils as tu

ROOT = os.path.join(tu.dummy_dir("mrnet"), "MRNet-v1.0")


def _volumes(plane):
  out = {}
  for split in ("train", "valid"):
    for fn in os.listdir(os.path.join(ROOT, split, plane)):
      out[fn[:-4]] = (split, np.load(os.path.join(ROOT, split, plane, fn)))
  return out


def _labels(task):
  out = {}
  for split in ("train", "valid"):
    with open(os.path.join(ROOT, f"{split}-{task}.csv")) as f:
      out.update({r[0]: int(r[1]) for r in csv.reader(f)})
  return out


@pytest.fixture(scope="module", params=["acl_sagittal", "meniscus_coronal"])
def built(request, tmp_path_factory):
  builder = tu.build(f"mrnet/{request.param}", tu.dummy_dir("mrnet"), tmp_path_factory.mktemp("t"))
  return request.param, tu.read_all(builder)


def test_every_slice_once_with_its_exam_label_and_no_exam_in_two_splits(built):
  config, splits = built
  task, plane = config.split("_")
  volumes, labels = _volumes(plane), _labels(task)
  for e in (e for s in splits.values() for e in s):
    e["key"] = f"{tu.text(e['patient_id'])}#{e['slice_index']}"
  tu.check_grouped_splits(splits, "key", sum(len(v) for _, v in volumes.values()), folds=5)
  for e in (e for s in tu.GROUP_SPLITS for e in splits[s]):
    exam = tu.text(e["patient_id"])
    split, volume = volumes[exam]
    assert e["label"] == labels[exam]
    assert ("train", "valid")[e["official_split"]] == split
    np.testing.assert_array_equal(e["image"][..., 0], volume[e["slice_index"]])


def test_missing_volume_and_bad_label_are_source_errors(tmp_path):
  manual = tu.copy_dummy("mrnet", tmp_path)
  root = os.path.join(manual, "MRNet-v1.0")
  gone = os.path.join(root, "valid", "sagittal", "1131.npy")
  os.remove(gone)
  with pytest.raises(tfds_base.SourceFileError, match="1131.npy: named in valid-acl.csv"):
    tu.build("mrnet/acl_sagittal", manual, tmp_path / "fail")
  with open(os.path.join(root, "train-acl.csv"), "a") as f:
    f.write("0042,2\n")
  bad_npy = os.path.join(root, "train", "sagittal", "0003.npy")
  tu.truncate(bad_npy, keep=60)
  builder = tu.build("mrnet/acl_sagittal", manual, tmp_path / "skip", on_error="skip")
  assert sorted(r[0] for r in tu.skipped(builder)) == sorted(
      [gone, os.path.join(root, "train-acl.csv"), bad_npy])
  exams = {tu.text(e["patient_id"]) for s in tu.read_all(builder).values() for e in s}
  assert exams == {f"{i:04d}" for i in range(8)} - {"0003"} | {"1130", "1132"}
