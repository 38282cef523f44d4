"""radimagenet_demo and the build machinery: sizes, features, masks, group split, folds,
determinism, caching, atomic failure, on_error='skip' and missing-source errors.

The full dataset is built once per session (`demo_data_dir` in conftest.py); the failure-mode tests
build a shrunken copy of the 'pretrain' config (few sources, few examples) to stay fast.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
import tensorflow_datasets as tfds

from radimagenet_jax.data import build
from radimagenet_jax.data.build import tfds_base
from tfds_builders.radimagenet_demo import baseline
from tfds_builders.radimagenet_demo import radimagenet_demo as demo
from tfds_builders.radimagenet_demo import sources
from tfds_builders.radimagenet_demo import synth

README = open(os.path.join(os.path.dirname(demo.__file__), "README.md")).read()


def _examples(data_dir, config, split):
  ds = tfds.data_source(f"radimagenet_demo/{config}", split=split, data_dir=data_dir)
  return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def lesion(demo_data_dir):
  return {s: _examples(demo_data_dir, "lesion", s) for s in demo.SPLITS}


@pytest.fixture(scope="module")
def pretrain(demo_data_dir):
  return {s: _examples(demo_data_dir, "pretrain", s) for s in demo.SPLITS}


def test_split_sizes_are_the_documented_ones(demo_data_dir):
  for config, sizes in (("pretrain", (924, 198, 198)), ("lesion", (420, 90, 90))):
    builder = build.make_builder(f"radimagenet_demo/{config}", data_dir=demo_data_dir)
    got = tuple(builder.info.splits[s].num_examples for s in demo.SPLITS)
    assert got == sizes, config
    assert f"{sizes[0]} / {sizes[1]} / {sizes[2]}" in README, config


def test_pretrain_features_and_classes(pretrain, demo_data_dir):
  builder = build.make_builder("radimagenet_demo/pretrain", data_dir=demo_data_dir)
  names = builder.info.features["label"].names
  assert len(names) == 16 and names == demo.class_names()
  for name in names:  # RadImageNet style, each name documented.
    assert re.fullmatch(r"(CT|MR|US|CR|NM)/[a-z]+/[a-z_]+", name) and f"`{name}`" in README
  ex = pretrain["train"][0]
  assert ex["image"].shape == (64, 64, 1) and ex["image"].dtype == np.uint8
  counts = np.bincount([int(e["label"]) for e in pretrain["train"]], minlength=16)
  np.testing.assert_array_equal(counts, [84] * 6 + [42] * 10)
  patients = {e["patient_id"].decode() for s in demo.SPLITS for e in pretrain[s]}
  assert {"MNI152-ICBM2009a-sym", "CQ500-CT-310", "9RG1", "204"} <= patients


def test_pretrain_group_split_holds_where_documented(pretrain):
  names = demo.class_names()
  grouped = set(demo.MNI_CLASSES) | set(demo.grouped_dicom_classes())
  assert set(demo.grouped_dicom_classes()) == {"US/heart/echo", "US/other/noncardiac"}
  by_split = {s: {} for s in demo.SPLITS}
  for s in demo.SPLITS:
    for e in pretrain[s]:
      by_split[s].setdefault(names[int(e["label"])], set()).add(e["source_id"].decode())
  for label in names:
    tr, va, te = (by_split[s].get(label, set()) for s in demo.SPLITS)
    assert tr and va and te, label
    if label in grouped:
      assert not (tr & va or tr & te or va & te), label
    else:  # The README says these cross sets: check that it is true.
      assert tr & te, label


def test_lesion_masks(lesion):
  for s in demo.SPLITS:
    labels = np.array([int(e["label"]) for e in lesion[s]])
    assert labels.sum() * 2 == len(labels)  # Balanced.
    for e in lesion[s]:
      mask = e["mask"][..., 0]
      assert e["mask"].shape == e["image"].shape == (128, 128, 1)
      assert set(np.unique(mask)) <= {0, 1}  # 1 = lesion, as in every builder
      area = int((mask > 0).sum())
      assert area == int(e["lesion_area"])
      if e["label"] == 0:
        assert area == 0 and float(e["lesion_contrast"]) == 0.0
        continue
      assert area > 0 and 0.08 <= abs(float(e["lesion_contrast"])) <= 0.5
      # Inside the anatomy: the brain of the stored (jittered) image, dilated by 2 px for the
      # intensity jitter at its border.
      brain = ndimage.binary_dilation(synth.anatomy_mask(e["image"][..., 0], 10.0), iterations=2)
      assert (mask[brain == 0] == 0).all()


def test_lesion_group_split_holds(lesion):
  ids = {s: {e["source_id"].decode() for e in lesion[s]} for s in demo.SPLITS}
  assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"]
              or ids["validation"] & ids["test"])


def test_lesion_folds_partition_all_examples_by_runs_of_four_slabs(lesion, demo_data_dir):
  folds = {f: _examples(demo_data_dir, "lesion", f"fold{f}") for f in range(demo.LESION_FOLDS)}
  key = lambda e: (e["source_id"].decode(), e["image"].tobytes())
  every = sorted(key(e) for s in demo.SPLITS for e in lesion[s])
  assert sorted(key(e) for f in folds for e in folds[f]) == every  # a partition of all 600
  for f, examples in folds.items():
    slabs = {e["source_id"].decode() for e in examples}
    assert {int(s[-2:]) // 4 for s in slabs} == {f}  # slabs 4f..4f+3, every plane
    assert {s.split("/")[1] for s in slabs} == set(demo.LESION_PLANES)
    assert 0.4 < np.mean([int(e["label"]) for e in examples]) < 0.6
  sizes = sorted(len(v) for v in folds.values())
  assert f"sizes {sizes[0]}-{sizes[-1]}" in README and "fold0` ... `fold4`" in README


def test_lesion_is_not_trivially_separable_and_auc_is_the_stated_one(demo_data_dir):
  stated = float(re.search(r"32x32 downsampled pixels reaches AUC (\d\.\d+)", README).group(1))
  measured = baseline.logreg_auc(demo_data_dir)
  assert abs(measured - stated) < 0.006 and measured < 0.8


def test_build_is_deterministic_and_cached(demo_data_dir, tmp_path):
  again = tmp_path / "again"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for config in ("pretrain", "lesion"):
    # Another process, another hash seed: the record bytes must still be the same.
    subprocess.run([sys.executable, "-m", "radimagenet_jax.cli", "build",
                    f"radimagenet_demo/{config}", f"--data_dir={again}"], cwd=root, check=True,
                   env={**os.environ, "PYTHONHASHSEED": "123"}, capture_output=True)
    first = build.make_builder(f"radimagenet_demo/{config}", data_dir=demo_data_dir).data_path
    second = build.make_builder(f"radimagenet_demo/{config}", data_dir=again).data_path
    records = sorted(f for f in os.listdir(first) if ".array_record" in f)
    n_splits = 3 + (demo.LESION_FOLDS if config == "lesion" else 0)
    assert len(records) == n_splits and records == sorted(
        f for f in os.listdir(second) if ".array_record" in f)
    for f in records:
      assert (first / f).read_bytes() == (second / f).read_bytes(), f
    # Second call: a no-op that leaves the files untouched.
    mtimes = {f: os.stat(second / f).st_mtime_ns for f in records}
    build.build(f"radimagenet_demo/{config}", data_dir=again, progress=False)
    assert mtimes == {f: os.stat(second / f).st_mtime_ns for f in records}


# ------------------------------------------------------------------- failure modes (small build)
_GOOD = sources.DicomSource("CT/spine/axial", "pydicom", "CT_small.dcm", "1CT1", "LE", (300, 1500))
_TRUNCATED = sources.DicomSource("MR/other/truncated", "pydicom", "MR_truncated.dcm", "4MR1", "LE")


@pytest.fixture
def small_demo(monkeypatch):
  """'pretrain' with 2 DICOM sources (one truncated) and 10 + 10 examples per class."""
  monkeypatch.setattr(sources, "DICOM_SOURCES", (_GOOD, _TRUNCATED))
  monkeypatch.setattr(demo, "MNI_EXAMPLES_PER_CLASS", 10)
  monkeypatch.setattr(demo, "DICOM_EXAMPLES_PER_CLASS", 10)


def test_on_error_skip_lists_the_bad_file(small_demo, tmp_path):
  builder = build.build("radimagenet_demo/pretrain", data_dir=tmp_path, on_error="skip",
                        progress=False)
  skipped = tfds_base.read_skipped_files(builder.data_path)
  paths = [os.path.basename(p) for p, _ in skipped]
  # The file, then its class, left without any image (recorded under the class name).
  assert paths == ["MR_truncated.dcm", "truncated"] and skipped[1][0] == "MR/other/truncated"
  assert "Explicit VR Little Endian" in skipped[0][1] and "pixel data" in skipped[0][1]
  info = tfds.builder_from_directory(builder.data_path).info
  assert "Skipped source files: 2 (listed in skipped_files.tsv)" in info.description
  # 10 examples per class -> 6 / 2 / 2; the 6 MNI classes + the good file's class.
  assert info.splits["train"].num_examples == 6 * 6 + 6


def test_on_error_fail_names_the_file_and_leaves_nothing(small_demo, tmp_path):
  data_dir = tmp_path / "tfds"
  with pytest.raises(tfds_base.SourceFileError, match=r"MR_truncated\.dcm.*transfer syntax"):
    build.build("radimagenet_demo/pretrain", data_dir=data_dir, progress=False)
  assert not data_dir.exists()


def test_failed_overwrite_keeps_the_previous_dataset(small_demo, tmp_path):
  builder = build.build("radimagenet_demo/pretrain", data_dir=tmp_path, on_error="skip",
                        progress=False)
  before = sorted(os.listdir(builder.data_path))
  with pytest.raises(tfds_base.SourceFileError):
    build.build("radimagenet_demo/pretrain", data_dir=tmp_path, overwrite=True, progress=False)
  assert sorted(os.listdir(builder.data_path)) == before
  assert [d for d in os.listdir(builder.data_path.parent) if d != builder.data_path.name] == []


@pytest.mark.parametrize("module,package,config", [("data_store", "pydicom-data", "pretrain"),
                                                   ("nibabel", "nibabel", "lesion"),
                                                   ("nilearn", "nilearn", "lesion")])
def test_missing_source_package_says_what_to_install(monkeypatch, tmp_path, module, package,
                                                     config):
  monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError.
  with pytest.raises(sources.MissingSourceError) as e:
    build.build(f"radimagenet_demo/{config}", data_dir=tmp_path / "tfds", progress=False)
  assert "pip install 'radimagenet-jax[demo]'" in str(e.value) and f"'{package}'" in str(e.value)
  assert not (tmp_path / "tfds").exists()


def test_unknown_dataset_and_config_list_the_choices(tmp_path):
  with pytest.raises(ValueError, match="radimagenet_demo"):
    build.build("no_such_dataset", data_dir=tmp_path)
  with pytest.raises(ValueError, match=r"\['pretrain', 'lesion'\]"):
    build.build("radimagenet_demo/nope", data_dir=tmp_path)
  with pytest.raises(ValueError, match="on_error"):
    build.build("radimagenet_demo/pretrain", data_dir=tmp_path, on_error="ignore")
