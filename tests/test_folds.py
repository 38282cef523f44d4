"""Cross-validation sets on small image_folder datasets built in a temporary directory."""
from __future__ import annotations

import collections
import os

import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from radimagenet_jax.data import build as build_lib
from radimagenet_jax.data import tfds_source
from radimagenet_jax.finetune import folds
from tfds_builders.image_folder import image_folder


class ImageFolderNoFolds(image_folder.ImageFolder):
  """image_folder without fold splits."""
  name = "image_folder_no_folds"
  BUILDER_CONFIGS = [image_folder.ImageFolderConfig(name="default", folds=0)]


def _write_images(root, patients: dict[str, list[str]]):
  """patients: {patient: [label of each image]} -> <label>/<patient>/img<i>.png (8x8 gray)."""
  for p, labels in patients.items():
    for i, label in enumerate(labels):
      os.makedirs(os.path.join(root, label, p), exist_ok=True)
      pixels = np.full((8, 8), (sum(map(ord, p)) + 17 * i) % 256, np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, label, p, f"img{i}.png"))
  return os.fspath(root)


# 30 patients with 1-3 images each, about one in three malignant; P99 has images of both labels.
PATIENTS = {f"P{p:02d}": ["malignant" if p % 3 == 0 else "benign"] * (1 + p % 3) for p in range(30)}
PATIENTS["P99"] = ["benign", "malignant"]
N_EXAMPLES = sum(len(v) for v in PATIENTS.values())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  manual = _write_images(tmp_path_factory.mktemp("manual"), PATIENTS)
  data_dir = os.fspath(tmp_path_factory.mktemp("tfds"))
  build_lib.build("image_folder", data_dir=data_dir, manual_dir=manual, progress=False)
  nofold = ImageFolderNoFolds(data_dir=data_dir)
  nofold.download_and_prepare(file_format="array_record",
                              download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return data_dir


def _all_fold_ids(data_dir):
  return collections.Counter(e.id for i in range(5)
                             for e in folds.read_examples("image_folder", f"fold{i}", data_dir))


def test_folds_are_patient_disjoint_and_cover_the_dataset(data):
  all_ids = _all_fold_ids(data)
  assert sum(all_ids.values()) == len(all_ids) == N_EXAMPLES
  for k in range(5):
    sets = folds.fold_splits("image_folder", data, fold=k, num_folds=5, val_fraction=0.2, seed=1)
    ids = folds.audit(sets)
    assert collections.Counter(i for v in ids.values() for i in v) == all_ids
    test_fold = [e.id for e in folds.read_examples("image_folder", f"fold{k}", data)]
    assert ids["test"] == test_fold
    assert {e.split for e in sets["test"]} == {f"fold{k}"}
    assert {e.split for s in ("train", "validation") for e in sets[s]} == {
        f"fold{i}" for i in range(5) if i != k}
    groups = {name: {e.group for e in ex} for name, ex in sets.items()}
    assert not groups["train"] & groups["validation"]
    assert not (groups["train"] | groups["validation"]) & groups["test"]
    assert sets["validation"] and len({e.label for e in sets["validation"]}) == 2


def test_validation_is_stratified_and_deterministic(data):
  sets = folds.fold_splits("image_folder", data, fold=2, val_fraction=0.25, seed=3)
  assert sets == folds.fold_splits("image_folder", data, fold=2, val_fraction=0.25, seed=3)
  pool = sets["train"] + sets["validation"]
  biggest = max(collections.Counter(e.group for e in pool).values())
  for label in (0, 1):
    n = sum(e.label == label for e in pool)
    n_val = sum(e.label == label for e in sets["validation"])
    assert abs(n_val - 0.25 * n) <= biggest, (label, n_val, n)
  others = [folds.fold_splits("image_folder", data, fold=2, val_fraction=0.25, seed=s)
            for s in range(4, 8)]
  assert any(o["validation"] != sets["validation"] for o in others)
  none = folds.fold_splits("image_folder", data, fold=2, val_fraction=0.0)
  assert none["validation"] == [] and len(none["train"]) == len(pool)


def test_carve_validation_on_many_groups():
  rng = np.random.default_rng(0)
  sizes = rng.integers(1, 6, 400)
  groups = np.repeat(np.arange(400), sizes)
  labels = np.repeat(rng.random(400) < 0.2, sizes).astype(int)
  for fraction in (0.1, 0.15, 0.3):
    val = folds.carve_validation(groups, labels, fraction, seed=5)
    np.testing.assert_array_equal(val, folds.carve_validation(groups, labels, fraction, seed=5))
    for g in np.unique(groups):  # whole groups
      assert len(set(val[groups == g])) == 1
    for label in (0, 1):
      n = np.sum(labels == label)
      assert abs(np.sum(val & (labels == label)) - fraction * n) <= 5
  # A label with two groups gets one in validation even when its share rounds to nothing; a label
  # with one group stays in training.
  labels = np.asarray([0, 0, 0, 0, 1, 1, 2])
  val = folds.carve_validation(["a", "b", "c", "d", "e", "f", "g"], labels, 0.1)
  assert sorted(labels[val]) == [0, 1]
  with pytest.raises(ValueError, match="val_fraction=1.0"):
    folds.carve_validation(["a"], [0], 1.0)


def test_sources_return_the_referenced_records(data):
  sets = folds.fold_splits("image_folder", data, fold=0, val_fraction=0.2)
  sources = folds.make_sources(sets, "image_folder", data, decode=False)
  for name, examples in sets.items():
    source = sources[name]
    assert len(source) == len(examples)
    for i in (0, len(source) - 1):
      record = source[i]
      assert folds._text(record["file_name"]) + "#0" == examples[i].id
      assert folds._text(record["patient_id"]) == examples[i].group
      assert int(record["label"]) == examples[i].label
  assert tfds_source.class_names(sources["train"]) == ["benign", "malignant"]
  decoded = folds.make_sources(sets, "image_folder", data)["test"][0]["image"]
  assert decoded.shape == (8, 8, 3) and decoded.dtype == np.uint8


def test_without_fold_the_dataset_splits_are_used(data):
  sets = folds.fold_splits("image_folder", data)
  for name in folds.SETS:
    assert [e.id for e in sets[name]] == [
        e.id for e in folds.read_examples("image_folder", name, data)]
  assert sum(len(v) for v in sets.values()) == N_EXAMPLES
  assert folds.summary(sets)["train"]["examples"] == len(sets["train"])


def test_errors(data, tmp_path):
  with pytest.raises(ValueError, match=r"'image_folder_no_folds' has no fold splits \(its splits: "
                                       r"\['.*'\]\)"):
    folds.fold_splits("image_folder_no_folds", data, fold=0)
  assert folds.fold_splits("image_folder_no_folds", data)["test"]
  with pytest.raises(ValueError, match=r"fold=5: expected an integer in \[0, 5\)"):
    folds.fold_splits("image_folder", data, fold=5)
  with pytest.raises(ValueError, match=r"num_folds=3"):
    folds.fold_splits("image_folder", data, fold=0, num_folds=3)
  with pytest.raises(FileNotFoundError, match="not built"):
    folds.fold_splits("image_folder", tmp_path / "empty", fold=0)
  # One malignant patient: the folds without it hold a single class.
  rare = {f"R{p:02d}": ["benign"] * 2 for p in range(12)} | {"M00": ["malignant"]}
  rare_dir = os.fspath(tmp_path / "tfds")
  build_lib.build("image_folder", data_dir=rare_dir, progress=False,
                  manual_dir=_write_images(tmp_path / "manual", rare))
  malignant_fold = next(k for k in range(5) if any(
      e.label == 1 for e in folds.read_examples("image_folder", f"fold{k}", rare_dir)))
  single = (malignant_fold + 1) % 5
  with pytest.raises(ValueError, match=f"test fold fold{single}: the test set holds .* 1 class"):
    folds.fold_splits("image_folder", rare_dir, fold=single)
  with pytest.raises(ValueError, match=f"test fold fold{malignant_fold}: the train set"):
    folds.fold_splits("image_folder", rare_dir, fold=malignant_fold)


def test_check_disjoint_and_concat_source():
  a = folds.Example("fold0", 0, "x", "P1", 0)
  b = folds.Example("fold1", 0, "y", "P1", 1)
  with pytest.raises(ValueError, match="patient 'P1' is in both the train and the test set"):
    folds.check_disjoint({"train": [a], "validation": [], "test": [b]})
  source = folds.concat_sources([[0, 1, 2], [], [3, 4]])
  assert len(source) == 5 and [source[i] for i in range(5)] == [0, 1, 2, 3, 4]
  with pytest.raises(IndexError):
    source[5]
  sub = folds.Subset(source, [4, 0])
  assert len(sub) == 2 and [sub[0], sub[1]] == [4, 0] and sub.dataset_info is None
