"""What every dataset builder in tfds_builders/ shares: registration, instructions, features,
PNG encoding, the split assignment, one mask convention (uint8, 1 = lesion), and dummy_data that
the checked-in script reproduces."""
import filecmp
import io
import os

import numpy as np
from PIL import Image
import pytest

from radimagenet_jax.data import build as build_lib
from tfds_builders import common
from tfds_builders import make_dummy_data

DATASETS = ("radimagenet", "busi", "ddti", "mrnet", "rsna_pneumonia", "rsna_ich", "cc_ccii",
            "image_folder")


@pytest.mark.parametrize("name", DATASETS)
def test_builder_is_found_by_build_and_has_instructions_and_standard_features(name, tmp_path):
  cls = build_lib.builder_class(name)
  assert cls.name == name
  assert len(cls.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()) > 80
  builder = cls(data_dir=os.fspath(tmp_path))  # default config
  features = builder.info.features
  assert {"image", "label"} <= set(features)
  if name != "radimagenet":  # the RadImageNet release has no patient ids
    assert "patient_id" in features
  assert features["image"].shape[-1] in (1, 3)


def test_default_configs():
  assert build_lib.make_builder("busi").builder_config.name == "benign_vs_malignant"
  assert build_lib.make_builder("mrnet").builder_config.name == "acl_sagittal"
  assert build_lib.make_builder("radimagenet").builder_config.folds == 0


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 3)])
def test_encode_png_round_trips(shape):
  a = np.random.default_rng(0).integers(0, 256, size=shape).astype(np.uint8)
  back = np.asarray(Image.open(io.BytesIO(common.encode_png(a))))
  np.testing.assert_array_equal(back, a.reshape(back.shape))


def test_png_bytes_passes_matching_pngs_through_and_reencodes_others():
  rgb = np.random.default_rng(1).integers(0, 256, size=(4, 6, 3)).astype(np.uint8)
  raw = common.encode_png(rgb)
  assert common.png_bytes(raw, rgb) is raw
  gray = rgb[..., 0]
  again = common.png_bytes(raw, gray)  # an RGB PNG whose decoded image is meant to be gray
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(again))), gray)
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="JPEG")
  assert common.png_bytes(buf.getvalue(), rgb)[:8] == b"\x89PNG\r\n\x1a\n"


def test_to_channels():
  gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
  np.testing.assert_array_equal(common.to_channels(gray, 3), np.stack([gray] * 3, -1))
  rgba = np.zeros((3, 4, 4), np.uint8)
  assert common.to_channels(rgba, 3).shape == (3, 4, 3)
  rgb = np.stack([gray] * 3, -1)
  np.testing.assert_array_equal(common.to_channels(rgb, 1)[..., 0], gray)


def test_assign_splits_partitions_items_without_splitting_groups():
  items = [common.Item(key=f"k{i}", group=f"g{i // 3}", label=(i // 3) % 2) for i in range(60)]
  splits = common.assign_splits(items, folds=5)
  group_splits = ("train", "validation", "test")
  assert sorted(k.key for s in group_splits for k in splits[s]) == sorted(i.key for i in items)
  assert sorted(k.key for f in range(5) for k in splits[f"fold{f}"]) == sorted(i.key for i in items)
  assert [len(splits[s]) for s in group_splits] == [45, 6, 9]
  for family in (group_splits, [f"fold{f}" for f in range(5)]):
    where = {}
    for s in family:
      for it in splits[s]:
        assert where.setdefault(it.group, s) == s
  assert "fold0" not in common.assign_splits(items, folds=0)


def test_make_dummy_data_reproduces_the_checked_in_files(tmp_path, monkeypatch):
  monkeypatch.setattr(make_dummy_data, "ROOT", os.fspath(tmp_path))
  for name, write in make_dummy_data.DATASETS.items():
    write()
    ours, theirs = os.path.join(tmp_path, name, "dummy_data"), os.path.join(
        os.path.dirname(make_dummy_data.__file__), name, "dummy_data")
    for dirpath, _, filenames in os.walk(theirs):
      for fn in filenames:
        rel = os.path.relpath(os.path.join(dirpath, fn), theirs)
        assert filecmp.cmp(os.path.join(ours, rel), os.path.join(theirs, rel), shallow=False), rel
    n_ours = sum(len(f) for _, _, f in os.walk(ours))
    assert n_ours == sum(len(f) for _, _, f in os.walk(theirs)), name


@pytest.mark.parametrize("name", DATASETS)
def test_wrong_manual_dir_fails_with_the_download_instructions(name, tmp_path):
  wrong = tmp_path / "downloads"
  wrong.mkdir()
  (wrong / "junk.txt").write_text("not the release\n")
  instructions = build_lib.builder_class(name).MANUAL_DOWNLOAD_INSTRUCTIONS.strip().splitlines()[0]
  with pytest.raises(FileNotFoundError) as e:
    build_lib.build(name, data_dir=os.fspath(tmp_path / "d"), manual_dir=os.fspath(wrong),
                    progress=False)
  assert instructions.strip() in str(e.value)
  assert not os.path.exists(tmp_path / "d" / name)  # nothing half-built left behind


MASK_DATASETS = ("busi", "ddti", "rsna_pneumonia", "radimagenet_demo/lesion", "image_folder")


def test_the_mask_datasets_are_all_the_builders_with_a_mask(tmp_path):
  with_mask = set()
  for name in DATASETS + ("radimagenet_demo",):
    cls = build_lib.builder_class(name)
    for config in cls.BUILDER_CONFIGS or [None]:
      builder = cls(data_dir=os.fspath(tmp_path), config=config)
      if "mask" in builder.info.features:
        with_mask.add(name if name != "radimagenet_demo" else f"{name}/{config.name}")
  assert with_mask == set(MASK_DATASETS)


@pytest.mark.parametrize("name", MASK_DATASETS)
def test_every_mask_is_uint8_with_1_for_lesion_and_0_elsewhere(name, tmp_path, demo_data_dir):
  from tfds_builders import testing_utils as tu
  if name.startswith("radimagenet_demo"):
    builder = build_lib.make_builder(name, data_dir=demo_data_dir)
  else:
    builder = tu.build(name, tu.dummy_dir(name), tmp_path)
  values, splits = set(), tu.read_all(builder)
  for split in ("train", "validation", "test"):
    for e in splits[split]:
      assert e["mask"].dtype == np.uint8 and e["mask"].shape == e["image"].shape[:2] + (1,)
      values |= set(np.unique(e["mask"]).tolist())
  assert values == {0, 1}, name
