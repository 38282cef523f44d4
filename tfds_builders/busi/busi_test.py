"""busi builder on dummy_data: labels per config, merged masks, per-image groups, bad input."""
import os

import numpy as np
import pytest

from radimagenet_jax.data.build import tfds_base
from tfds_builders import testing_utils as tu

N = {"benign": 5, "malignant": 4, "normal": 3}  # images in dummy_data


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  return {cfg: tu.read_all(tu.build(f"busi/{cfg}", tu.dummy_dir("busi"), data_dir))
          for cfg in ("benign_vs_malignant", "lesions_only", "three_class")}


def _by_file(splits):
  return {tu.text(e["file_name"]): e for name in tu.GROUP_SPLITS for e in splits[name]}


def test_split_sizes_and_no_image_in_two_splits(built):
  tu.check_grouped_splits(built["benign_vs_malignant"], "file_name", sum(N.values()), folds=5)
  tu.check_grouped_splits(built["lesions_only"], "file_name", N["benign"] + N["malignant"], 5)
  assert len(built["benign_vs_malignant"]["train"]) == 9  # 75 % of 12


def test_labels_follow_the_config(built):
  for cfg, expected in (("benign_vs_malignant", {"benign": 0, "malignant": 1, "normal": 0}),
                        ("three_class", {"benign": 0, "malignant": 1, "normal": 2}),
                        ("lesions_only", {"benign": 0, "malignant": 1})):
    examples = _by_file(built[cfg])
    assert {f.split("/")[0] for f in examples} == set(expected)
    for f, e in examples.items():
      assert e["label"] == expected[f.split("/")[0]], (cfg, f)


def test_images_and_merged_masks_match_the_files(built):
  root = os.path.join(tu.dummy_dir("busi"), "Dataset_BUSI_with_GT")
  for f, e in _by_file(built["three_class"]).items():
    stem = os.path.join(root, f[:-4])
    np.testing.assert_array_equal(e["image"], tu.pil(stem + ".png", "RGB"))
    expected = tu.pil(stem + "_mask.png", "L") > 0
    if os.path.exists(stem + "_mask_1.png"):
      expected |= tu.pil(stem + "_mask_1.png", "L") > 0
    np.testing.assert_array_equal(e["mask"][..., 0], expected.astype(np.uint8))
    assert tu.text(e["patient_id"]) == os.path.basename(f)[:-4]
  merged = _by_file(built["three_class"])["benign/benign (2).png"]["mask"]
  assert merged[2:5, 3:7].all() and merged[8:10, 10:14].all() and merged.sum() == 12 + 8
  assert all(e["mask"].sum() == 0 for f, e in _by_file(built["three_class"]).items()
             if f.startswith("normal/"))


def test_corrupt_image_fails_by_default_and_is_listed_in_skip_mode(tmp_path):
  manual = tu.copy_dummy("busi", tmp_path)
  bad = os.path.join(manual, "Dataset_BUSI_with_GT", "malignant", "malignant (2).png")
  tu.truncate(bad)
  with pytest.raises(tfds_base.SourceFileError, match=r"malignant \(2\)\.png"):
    tu.build("busi/three_class", manual, tmp_path / "fail")
  builder = tu.build("busi/three_class", manual, tmp_path / "skip", on_error="skip")
  assert [row[0] for row in tu.skipped(builder)] == [bad]
  counts = {s: len(v) for s, v in tu.read_all(builder).items()}
  assert counts["train"] + counts["validation"] + counts["test"] == sum(N.values()) - 1
  assert sum(counts[f"fold{i}"] for i in range(5)) == sum(N.values()) - 1
  assert "Skipped source files: 1" in builder.info.description


def test_missing_mask_is_a_source_error(tmp_path):
  manual = tu.copy_dummy("busi", tmp_path)
  os.remove(os.path.join(manual, "Dataset_BUSI_with_GT", "benign", "benign (3)_mask.png"))
  with pytest.raises(tfds_base.SourceFileError, match=r"no mask file benign \(3\)_mask\.png"):
    tu.build("busi", manual, tmp_path / "d")


def test_empty_or_wrong_manual_dir_shows_the_download_instructions(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(Exception, match="Dataset_BUSI_with_GT"):
    tu.build("busi", empty, tmp_path / "d")
  (tmp_path / "wrong" / "stuff").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="Download \"Dataset_BUSI_with_GT\""):
    tu.build("busi", tmp_path / "wrong", tmp_path / "d")
