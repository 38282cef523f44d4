"""image_folder's masks, patients, declared classes and bad rows (issues 32 and 34)."""
import os

import numpy as np
import pytest
from PIL import Image

from radimagenet_jax.data.build import tfds_base
from tfds_builders import testing_utils as tu

PNG = "{label}/patient{p:02d}/slice_000.png"  # dummy_data: 16x12 grey PNGs, patients 00..09
LABEL = lambda p: "normal" if p % 2 == 0 else "lesion"


def _mask(path, shape=(12, 16), values=(0, 255), seed=0):
  rng = np.random.default_rng(seed)
  m = np.where(rng.random(shape) < 0.3, values[1], values[0]).astype(np.uint8)
  m[0, 0], m[-1, -1] = values  # both values present
  Image.fromarray(m).save(path)
  return m


def _csv(manual, header, rows):
  with open(os.path.join(manual, "labels.csv"), "w") as f:
    f.write(header + "\n" + "".join(",".join(r) + "\n" for r in rows))


def _examples(builder):
  splits = tu.read_all(builder)
  return {tu.text(e["file_name"]): e for s in tu.GROUP_SPLITS for e in splits.get(s, [])}, splits


def _rows(masked=(1, 2)):
  """labels.csv rows path,label,patient_id,mask: patients P0..P4 with two images each."""
  rows = []
  for p in range(10):
    path = PNG.format(label=LABEL(p), p=p)
    mask = f"masks/m{p}.png" if p in masked else ""
    rows.append((path, LABEL(p), f"P{p // 2}", mask))
  return rows


@pytest.fixture(scope="module")
def with_masks(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("masks")
  manual = tu.copy_dummy("image_folder", tmp)
  os.makedirs(os.path.join(manual, "masks"))
  written = {p: _mask(os.path.join(manual, f"masks/m{p}.png"), seed=p) for p in (1, 2)}
  _csv(manual, "path,label,patient_id,mask", _rows())
  return tu.build("image_folder", manual, tmp / "d"), written


def test_csv_masks_are_stored_as_0_1_and_patients_group_the_folds(with_masks):
  builder, written = with_masks
  examples, splits = _examples(builder)
  assert len(examples) == 10
  for p in range(10):
    e = examples[PNG.format(label=LABEL(p), p=p)]
    assert e["mask"].shape == (12, 16, 1) and e["mask"].dtype == np.uint8
    expected = (written[p] > 0) if p in written else np.zeros((12, 16), bool)
    np.testing.assert_array_equal(e["mask"][..., 0], expected.astype(np.uint8))
    assert bool(e["has_mask"]) == (p in written)
    assert tu.text(e["patient_id"]) == f"P{p // 2}"
  # Folds: each patient (two images) in one fold only.
  fold_of = {tu.text(e["patient_id"]): name for name in splits if name.startswith("fold")
             for e in splits[name]}
  for name in (n for n in splits if n.startswith("fold")):
    for e in splits[name]:
      assert fold_of[tu.text(e["patient_id"])] == name
  summary = "\n".join(builder.build_summary())
  assert "masks: 2 found, 8 images without a mask" in summary
  assert "lesion 5, normal 5" in summary and "patients: 5 in 10" in summary


def test_folder_mode_reads_the_mask_beside_the_image_and_it_is_no_image(tmp_path):
  manual = tu.copy_dummy("image_folder", tmp_path)
  stem = os.path.join(manual, "lesion", "patient03", "slice_000")
  m = _mask(stem + "_mask.png", values=(0, 1))
  builder = tu.build("image_folder", manual, tmp_path / "d")
  examples, _ = _examples(builder)
  assert not any("_mask" in k for k in examples)
  e = examples["lesion/patient03/slice_000.png"]
  np.testing.assert_array_equal(e["mask"][..., 0], m)
  assert bool(e["has_mask"]) and not bool(examples["lesion/patient03/slice_001.jpg"]["has_mask"])


@pytest.mark.parametrize("case, match", [
    ("size", r"m1.png: mask size 8x6 differs from its image's 16x12"),
    ("values", r"m1.png: mask is not binary: values 0, 7, 255"),
    ("missing", r"m1.png: mask of .* named in labels.csv but missing"),
    ("blank_patient", r"labels.csv: line 3: patient_id blank for 'lesion/patient01/slice_000.png'"),
    ("twice", r"patient01/slice_000.png: listed 2 times in labels.csv \(lines 3, 12\)"),
    ("typo", r"label 'lesoin' is not in the class list \['normal', 'lesion'\] \(classes.txt\)"),
])
def test_bad_masks_and_rows_are_one_line_errors_or_one_skipped_line(tmp_path, case, match):
  manual = tu.copy_dummy("image_folder", tmp_path)
  os.makedirs(os.path.join(manual, "masks"))
  rows = [list(r) for r in _rows(masked=(1,))]
  m1 = os.path.join(manual, "masks", "m1.png")
  _mask(m1, shape=(6, 8) if case == "size" else (12, 16))
  if case == "values":
    _mask(m1, values=(0, 255))
    a = np.asarray(Image.open(m1)).copy()
    a[5, 5] = 7
    Image.fromarray(a).save(m1)
  if case == "missing":
    os.remove(m1)
  if case == "blank_patient":
    rows[1][2] = " "
  if case == "twice":
    rows.append([rows[1][0], "normal", "P9", ""])
  if case == "typo":
    rows[1][1] = "lesoin"
    with open(os.path.join(manual, "classes.txt"), "w") as f:
      f.write("normal\nlesion\n")
  _csv(manual, "path,label,patient_id,mask", [tuple(r) for r in rows])
  with pytest.raises(tfds_base.SourceFileError, match=match) as info:
    tu.build("image_folder", manual, tmp_path / "fail")
  assert "\n" not in str(info.value)
  assert not os.path.exists(tmp_path / "fail" / "image_folder")
  builder = tu.build("image_folder", manual, tmp_path / "skip", on_error="skip")
  assert len(tu.skipped(builder)) == 1, tu.skipped(builder)
  examples, _ = _examples(builder)
  assert "lesion/patient01/slice_000.png" not in examples  # both rows of a duplicate dropped
  assert len(examples) == 9
  lines = [l for l in builder.build_summary() if "masks skipped" in l]
  assert len(lines) == (1 if case in ("size", "values", "missing") else 0)


def test_undeclared_classes_are_printed_with_counts_and_a_rare_one_is_flagged(tmp_path, capsys):
  from radimagenet_jax.data import build
  manual = tu.copy_dummy("image_folder", tmp_path)
  rows = [r[:3] for r in _rows()]
  rows[1] = (rows[1][0], "lesoin", rows[1][2])
  _csv(manual, "path,label,patient_id", rows)
  build.build("image_folder", data_dir=tmp_path / "d", manual_dir=manual, progress=True)
  out = capsys.readouterr().out
  assert "classes (found in the labels; declare them in classes.txt" in out
  assert "lesion 4, lesoin 1, normal 5" in out
  assert "WARNING: class(es) ['lesoin'] have 2 or fewer files" in out


def test_folder_mode_refuses_a_symlink_out_of_the_data_folder(tmp_path):
  manual = tu.copy_dummy("image_folder", tmp_path)
  outside = tmp_path / "outside.png"
  Image.fromarray(np.zeros((12, 16), np.uint8)).save(outside)
  link = os.path.join(manual, "normal", "patient00", "link.png")
  os.symlink(outside, link)
  with pytest.raises(tfds_base.SourceFileError, match=r"link.png: a symlink to .*outside.png, "
                     "outside --manual_dir"):
    tu.build("image_folder", manual, tmp_path / "fail")
  builder = tu.build("image_folder", manual, tmp_path / "skip", on_error="skip")
  assert [r[0] for r in tu.skipped(builder)] == [link]


def test_too_few_patients_for_the_folds_is_our_one_line_error(tmp_path):
  manual = tu.copy_dummy("image_folder", tmp_path)
  _csv(manual, "path,label,patient_id",
       [(PNG.format(label=LABEL(p), p=p), LABEL(p), f"P{p % 3}") for p in range(10)])
  with pytest.raises(ValueError, match=r"^image_folder: 3 patient\(s\) in --manual_dir .* but "
                     r"folds=5; expected at least 5 patients") as info:
    tu.build("image_folder", manual, tmp_path / "d")
  assert "\n" not in str(info.value)
