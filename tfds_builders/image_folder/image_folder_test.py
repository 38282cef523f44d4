"""image_folder on dummy_data: folder and CSV labels, DICOM windows, NIfTI slices, bad input."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from radimagenet_jax.data.build import readers
from radimagenet_jax.data.build import tfds_base
from tfds_builders import testing_utils as tu
from tfds_builders.image_folder import image_folder as lib

# dummy_data: 10 patients x (1 PNG + 1 JPEG or DICOM) + a 3-slice NIfTI volume for patient09.
N_EXAMPLES = 10 * 2 + 3


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  builder = tu.build("image_folder", tu.dummy_dir("image_folder"), tmp_path_factory.mktemp("tfds"))
  return builder, tu.read_all(builder)


def _by_key(splits):
  return {(tu.text(e["file_name"]), int(e["slice_index"])): e
          for name in tu.GROUP_SPLITS for e in splits[name]}


def test_split_sizes_and_no_patient_in_two_splits(built):
  builder, splits = built
  for e in (e for s in splits.values() for e in s):
    e["key"] = f"{tu.text(e['file_name'])}#{int(e['slice_index'])}"
  tu.check_grouped_splits(splits, "key", N_EXAMPLES, folds=5)
  assert builder.info.features["label"].names == ["lesion", "normal"]


def test_labels_and_patients_come_from_the_folders(built):
  builder, splits = built
  names = builder.info.features["label"].names
  for (f, _), e in _by_key(splits).items():
    label, patient = f.split("/")[:2]
    assert names[e["label"]] == label and tu.text(e["patient_id"]) == patient
    assert e["image"].shape[-1] == 3


def test_pixels_match_the_readers(built):
  _, splits = built
  ex = _by_key(splits)
  root = tu.dummy_dir("image_folder")
  png = "normal/patient00/slice_000.png"
  np.testing.assert_array_equal(ex[(png, 0)]["image"][..., 0], tu.pil(os.path.join(root, png)))
  dcm = "lesion/patient07/slice_001.dcm"
  hu = readers.read_dicom(os.path.join(root, dcm))
  expected = np.round((hu - hu.min()) * 255.0 / (hu.max() - hu.min())).astype(np.uint8)
  np.testing.assert_array_equal(ex[(dcm, 0)]["image"][..., 1], expected)
  nii = "lesion/patient09/volume.nii"
  vol = readers.read_nifti(os.path.join(root, nii))
  for i in range(vol.shape[2]):
    expected = np.round((vol[:, :, i] - vol.min()) * 255.0 / (vol.max() - vol.min()))
    np.testing.assert_array_equal(ex[(nii, i)]["image"][..., 2], expected.astype(np.uint8))


def test_window_presets_match_readers_window():
  hu = np.linspace(-1200, 3200, 64, dtype=np.float32).reshape(8, 8)
  for name, (center, width) in lib.WINDOWS.items():
    out = lib.apply_window(hu, name)
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[..., 0], readers.window(hu, center, width))
  stack = lib.apply_window(hu, "ich")
  for c, name in enumerate(("brain", "subdural", "bone")):
    np.testing.assert_array_equal(stack[..., c], readers.window(hu, *lib.WINDOWS[name]))


def _write_csv(manual, rows):
  with open(os.path.join(manual, "labels.csv"), "w") as f:
    f.write("path,label,patient_id\n" + "".join(",".join(r) + "\n" for r in rows))


def _patient(p):
  return f"P{p // 2}" if p < 4 else f"P{p}"  # patients P0 and P1 have two images each


def test_csv_labels_patients_and_bad_rows(tmp_path):
  manual = tu.copy_dummy("image_folder", tmp_path)
  rows = [(f"{'normal' if p % 2 == 0 else 'lesion'}/patient{p:02d}/slice_000.png",
           "yes" if p < 4 else "no", _patient(p)) for p in range(10)]
  _write_csv(manual, rows + [("normal/patient00/gone.png", "yes", "P0")])
  with pytest.raises(tfds_base.SourceFileError, match="gone.png.*missing"):
    tu.build("image_folder", manual, tmp_path / "fail")
  builder = tu.build("image_folder", manual, tmp_path / "skip", on_error="skip")
  assert [r[0] for r in tu.skipped(builder)] == [os.path.join(manual, "normal/patient00/gone.png")]
  splits = tu.read_all(builder)
  tu.check_grouped_splits(splits, "file_name", 10, folds=5)
  names = builder.info.features["label"].names
  assert names == ["no", "yes"]
  for e in (e for s in tu.GROUP_SPLITS for e in splits[s]):
    p = int(tu.text(e["file_name"]).split("/")[1][-2:])
    assert names[e["label"]] == ("yes" if p < 4 else "no")
    assert tu.text(e["patient_id"]) == _patient(p)


def test_label_outside_a_fixed_class_list_is_a_source_error(tmp_path):
  manual = tu.copy_dummy("image_folder", tmp_path)
  _write_csv(manual, [("normal/patient00/slice_000.png", "maybe", "P0")])
  config = lib.ImageFolderConfig(name="fixed", class_names=("no", "yes"), folds=0)
  builder = lib.ImageFolder(config=config, data_dir=os.fspath(tmp_path / "d"))
  with pytest.raises(tfds_base.SourceFileError, match="'maybe' is not in the class list"):
    builder.download_and_prepare(
        file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=manual))


def test_corrupt_dicom_and_png_are_listed_in_skip_mode(tmp_path):
  manual = tu.copy_dummy("image_folder", tmp_path)
  bad_dcm = os.path.join(manual, "lesion", "patient07", "slice_001.dcm")
  bad_png = os.path.join(manual, "normal", "patient02", "slice_000.png")
  tu.truncate(bad_dcm, keep=200)
  tu.truncate(bad_png)
  with pytest.raises(tfds_base.SourceFileError, match="slice_00"):
    tu.build("image_folder", manual, tmp_path / "fail")
  builder = tu.build("image_folder", manual, tmp_path / "skip", on_error="skip")
  assert sorted(r[0] for r in tu.skipped(builder)) == sorted([bad_dcm, bad_png])
  assert builder.info.splits.total_num_examples == 2 * (N_EXAMPLES - 2)  # splits + folds
