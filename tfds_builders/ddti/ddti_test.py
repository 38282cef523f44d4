"""ddti builder on dummy_data: XML parsing, TI-RADS rule, polygon masks, case-grouped splits."""
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from radimagenet_jax.data.build import tfds_base
from tfds_builders import testing_utils as tu
from tfds_builders.ddti import ddti as lib

ROOT = tu.dummy_dir("ddti")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
  return tu.read_all(tu.build("ddti", ROOT, tmp_path_factory.mktemp("tfds")))


def _cases():
  out = {}
  for fn in os.listdir(ROOT):
    if fn.endswith(".xml"):
      root = ET.parse(os.path.join(ROOT, fn)).getroot()
      out[root.findtext("number")] = (root.findtext("tirads"), len(root.findall("mark")))
  return out


def test_one_example_per_mark_and_no_case_in_two_splits(splits):
  tu.check_grouped_splits(splits, "file_name", sum(n for _, n in _cases().values()), folds=5)


def test_tirads_rule():
  scores = ("2", "3", "4a", "4b", "4c", "5", " 4A ")
  assert [lib.tirads_label(s) for s in scores] == [0, 0, 1, 1, 1, 1, 1]
  with pytest.raises(ValueError, match="TI-RADS score ''"):
    lib.tirads_label("")


def test_labels_and_masks(splits):
  cases = _cases()
  for e in (e for s in tu.GROUP_SPLITS for e in splits[s]):
    case = tu.text(e["patient_id"])
    assert tu.text(e["tirads"]) == cases[case][0]
    assert e["label"] == (0 if cases[case][0] in ("2", "3") else 1)
    path = os.path.join(ROOT, tu.text(e["file_name"]))
    np.testing.assert_array_equal(e["image"], tu.pil(path, "RGB"))
  e = [e for s in splits.values() for e in s if tu.text(e["file_name"]) == "1_1.jpg"][0]
  # Polygon (3,2) (10,3) (9,9) (4,8): its interior points are in, the far corners are out.
  m = e["mask"][..., 0]
  assert m[5, 6] == 1 and m[4, 8] == 1 and m[0, 0] == 0 and m[11, 15] == 0 and m[10, 2] == 0
  assert set(np.unique(m)) == {0, 1}
  two = [e for s in splits.values() for e in s if tu.text(e["file_name"]) == "3_1.jpg"][0]
  assert two["mask"][2, 13] == 1  # the second nodule of case 3


def test_missing_tirads_and_missing_image_are_source_errors(tmp_path):
  manual = tu.copy_dummy("ddti", tmp_path)
  os.remove(os.path.join(manual, "4_1.jpg"))
  with pytest.raises(tfds_base.SourceFileError, match="4_1.jpg: named in 4.xml but missing"):
    tu.build("ddti", manual, tmp_path / "fail")
  xml = os.path.join(manual, "6.xml")
  with open(xml) as f:
    text = f.read().replace("<tirads>5</tirads>", "<tirads></tirads>")
  with open(xml, "w") as f:
    f.write(text)
  builder = tu.build("ddti", manual, tmp_path / "skip", on_error="skip")
  assert sorted(r[0] for r in tu.skipped(builder)) == [os.path.join(manual, "4_1.jpg"), xml]
