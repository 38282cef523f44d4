"""cc_ccii builder on dummy_data: class folders, patient groups, configs, corrupt slices."""
import os

import numpy as np
import pytest

from radimagenet_jax.data.build import tfds_base
from tfds_builders import testing_utils as tu

ROOT = tu.dummy_dir("cc_ccii")


def _slices(classes):
  return sorted(f"{c}/{p}/{s}/{f}" for c in classes for p in os.listdir(os.path.join(ROOT, c))
                for s in os.listdir(os.path.join(ROOT, c, p))
                for f in os.listdir(os.path.join(ROOT, c, p, s)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  return {cfg: tu.build(f"cc_ccii/{cfg}", ROOT, data_dir) for cfg in ("ncp_vs_cp", "three_class")}


def test_slices_labels_and_patient_groups(built):
  for cfg, classes in (("ncp_vs_cp", ["CP", "NCP"]), ("three_class", ["CP", "NCP", "Normal"])):
    builder = built[cfg]
    assert builder.info.features["label"].names == classes
    splits = tu.read_all(builder)
    tu.check_grouped_splits(splits, "file_name", len(_slices(classes)), folds=5)
    got = sorted(tu.text(e["file_name"]) for s in tu.GROUP_SPLITS for e in splits[s])
    assert got == _slices(classes)
    for e in (e for s in tu.GROUP_SPLITS for e in splits[s]):
      cls, patient, scan, _ = tu.text(e["file_name"]).split("/")
      assert classes[e["label"]] == cls and tu.text(e["patient_id"]) == patient
      assert tu.text(e["scan_id"]) == scan
      np.testing.assert_array_equal(
          e["image"][..., 0], tu.pil(os.path.join(ROOT, tu.text(e["file_name"])), "L"))


def test_corrupt_slice_fails_or_is_skipped_alone(tmp_path):
  manual = tu.copy_dummy("cc_ccii", tmp_path)
  bad = os.path.join(manual, _slices(["NCP"])[0])
  tu.truncate(bad)
  with pytest.raises(tfds_base.SourceFileError, match=os.path.basename(bad)):
    tu.build("cc_ccii", manual, tmp_path / "fail")
  builder = tu.build("cc_ccii", manual, tmp_path / "skip", on_error="skip")
  assert [r[0] for r in tu.skipped(builder)] == [bad]
  n = sum(builder.info.splits[s].num_examples for s in tu.GROUP_SPLITS)
  assert n == len(_slices(["CP", "NCP"])) - 1
