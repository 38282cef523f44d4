"""official builder on trees written in the official layout: folds equal the CSVs row for row,
labels, reported patient overlap, ignored unlisted images, bad input named by file and line."""
import csv
import os

import numpy as np
import pytest

from radimagenet_jax.data.build import tfds_base
from radimagenet_jax.finetune import folds
from tfds_builders import testing_utils as tu
from tfds_builders.official import layout, official

SETS = {"train": "train", "validation": "val", "test": "test"}


@pytest.fixture(scope="module")
def acl(tmp_path_factory):
  """An ACL tree (10 exams x 2 slices) where one slice of exam 0 is tested in fold 2 instead of
  fold 1 and trains in fold 1 (exam 0 then has images on both sides of folds 1 and 2), plus one
  unlisted image."""
  root = tmp_path_factory.mktemp("official")
  written = layout.write_tree(root, "acl", exams=10, slices=2)
  moved = next(r for r in written["test", 1] if r[0].startswith("images/0000_"))
  written["test", 1].remove(moved)
  written["train", 1].append(moved)
  written["train", 2].remove(moved)
  written["test", 2].append(moved)
  for split, fold in (("test", 1), ("train", 1), ("train", 2), ("test", 2)):
    layout.write_csv(os.path.join(root, "acl", "dataframe", official.csv_name("acl", split, fold)),
                     ("filename", "acl_label"), written[split, fold])
  np.save(os.path.join(root, "acl", "images", "unlisted.npy"), np.zeros(2))
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = tu.build("official/acl", root, data_dir)
  return root, written, data_dir, builder


def test_each_official_fold_equals_its_csvs_row_for_row(acl):
  _, written, data_dir, _ = acl
  for k in range(5):
    sets = folds.fold_splits("official/acl", data_dir, fold=k, num_folds=5, official=True)
    for name, split in SETS.items():
      assert [e.id for e in sets[name]] == [p for p, _ in written[split, k + 1]], (k, name)
      assert [e.label for e in sets[name]] == [int(lab == "yes")
                                               for _, lab in written[split, k + 1]]


def test_images_stored_once_in_their_test_fold_with_pixels_and_patients(acl):
  root, written, _, builder = acl
  splits = tu.read_all(builder)
  assert sorted(splits) == [f"fold{k}" for k in range(5)]
  stored = [tu.text(e["file_name"]) for s in splits.values() for e in s]
  assert len(stored) == len(set(stored)) == 20
  for k in range(5):
    assert {tu.text(e["file_name"]) for e in splits[f"fold{k}"]} == {
        p for p, _ in written["test", k + 1]}
  e = splits["fold0"][0]
  path = os.path.join(root, "acl", tu.text(e["file_name"]))
  np.testing.assert_array_equal(e["image"], tu.pil(path, "RGB"))
  assert tu.text(e["patient_id"]) == os.path.basename(path)[:4]


def test_patient_overlap_and_unlisted_images_are_reported_not_fixed(acl):
  _, _, data_dir, builder = acl
  assert "train/test 1," in builder.info.description          # fold 1: exam 0 on both sides
  assert "1 images in images/ not listed, ignored" in builder.info.description
  assert any("fold 1:" in line and "train/test 1," in line for line in builder.summary_lines())
  sets = folds.fold_splits("official/acl", data_dir, fold=0, num_folds=5, official=True)
  assert folds.overlap(sets)["train/test"] == 1
  again = tu.build("official/acl", "/nonexistent", data_dir)  # cached: re-created over the build
  assert "train/test 1," in again.info.description


def test_corrected_folds_are_patient_disjoint_over_the_same_images(acl):
  _, written, data_dir, _ = acl
  sets = folds.fold_splits("official/acl", data_dir, fold=0, num_folds=5, official=False)
  assert set(folds.overlap(sets).values()) == {0}
  assert sorted(e.id for s in sets.values() for e in s) == sorted(
      p for split in SETS.values() for p, _ in written[split, 1])


@pytest.mark.parametrize("task", ["thyroid", "breast", "meniscus"])
def test_the_other_tasks_labels_and_patients(tmp_path, task):
  written = layout.write_tree(tmp_path, task, exams=10, slices=2)
  splits = tu.read_all(tu.build(f"official/{task}", tmp_path, tmp_path / "d"))
  labels = dict(p for rows in written.values() for p in rows)
  spellings = official.APPS[task][3]
  for e in (e for s in splits.values() for e in s):
    name = tu.text(e["file_name"])
    assert e["label"] == spellings.index(labels[name])
    patient = tu.text(e["patient_id"])
    base = os.path.basename(name)
    assert patient == {"thyroid": base.split("_")[0], "breast": base[:-4],
                       "meniscus": base[:4]}[task]


def _corrupt(tmp_path, edit):
  layout.write_tree(tmp_path, "acl", exams=10, slices=2)
  edit(os.path.join(tmp_path, "acl"))
  return tmp_path


def _rewrite(path, change):
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  change(rows)
  layout.write_csv(path, rows[0], rows[1:])


@pytest.mark.parametrize("edit, message", [
    (lambda d: _rewrite(os.path.join(d, "dataframe", "train_fold2.csv"),
                        lambda rows: rows[3].__setitem__(1, "Yes")),
     r"train_fold2\.csv line 4: label 'Yes'; expected one of no, yes"),
    (lambda d: _rewrite(os.path.join(d, "dataframe", "val_fold3.csv"),
                        lambda rows: rows.append(rows[1])),
     r"val_fold3\.csv line \d+: images/\S+ is listed twice \(also line 2\)"),
    (lambda d: os.remove(os.path.join(d, "dataframe", "test_fold4.csv")),
     r"test_fold4\.csv: official fold file missing"),
])
def test_bad_csvs_are_one_line_errors_naming_file_and_line(tmp_path, edit, message):
  manual = _corrupt(tmp_path, edit)
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    tu.build("official/acl", manual, tmp_path / "d")
  assert not os.path.exists(tmp_path / "d" / "official")


def test_an_image_in_two_test_folds_is_named(tmp_path):
  def edit(d):
    with open(os.path.join(d, "dataframe", "test_fold1.csv"), newline="") as f:
      row = list(csv.reader(f))[1]
    _rewrite(os.path.join(d, "dataframe", "test_fold2.csv"), lambda rows: rows.append(row))
    _rewrite(os.path.join(d, "dataframe", "train_fold2.csv"),
             lambda rows: rows.remove(row) if row in rows else None)
  manual = _corrupt(tmp_path, edit)
  with pytest.raises(ValueError, match=r"test_fold2\.csv line \d+: .* also in the test set of "
                                       r"fold 1"):
    tu.build("official/acl", manual, tmp_path / "d")


def test_missing_and_undecodable_images_are_source_errors(tmp_path):
  written = layout.write_tree(tmp_path, "acl", exams=10, slices=2)
  gone, bad = written["test", 1][0][0], written["test", 2][0][0]
  os.remove(os.path.join(tmp_path, "acl", gone))
  with pytest.raises(tfds_base.SourceFileError, match=r"listed in .*test_fold1\.csv line"):
    tu.build("official/acl", tmp_path, tmp_path / "d")
  tu.truncate(os.path.join(tmp_path, "acl", bad))
  builder = tu.build("official/acl", tmp_path, tmp_path / "skip", on_error="skip")
  assert sorted(os.path.basename(r[0]) for r in tu.skipped(builder)) == sorted(
      os.path.basename(p) for p in (gone, bad))


def test_a_runs_sets_follow_its_protocol(acl):
  """configs/finetune.py:official_acl wires the protocol's `official_folds` into the run's sets."""
  import importlib.util
  from radimagenet_jax.finetune import run as run_lib
  _, written, data_dir, _ = acl
  path = os.path.join(os.path.dirname(tu.ROOT), "configs", "finetune.py")
  spec = importlib.util.spec_from_file_location("finetune_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for protocol in ("paper", "corrected"):
    config = module.get_config(f"official_acl,fold=1,protocol={protocol}")
    config.data_dir = str(data_dir)
    sets, sources = run_lib.load_sets(config)
    if protocol == "paper":
      for name, split in SETS.items():
        assert [e.id for e in sets[name]] == [p for p, _ in written[split, 2]]
      assert folds.overlap(sets)["train/test"] == 1
    else:
      assert set(folds.overlap(sets).values()) == {0}
    assert len(sources["test"]) == len(sets["test"])
