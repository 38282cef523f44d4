"""The own-data demo folder (tfds_builders/image_folder/make_demo.py) and image_folder built from it:
PNGs, labels.csv with patient ids and masks, classes.txt; the built masks equal the demo's."""
import csv
import os

import numpy as np
import pytest
from PIL import Image

from radimagenet_jax.data import build, tfds_source, transforms
from tfds_builders.image_folder import make_demo


@pytest.fixture(scope="module")
def folder(tmp_path_factory, demo_data_dir):
  out = tmp_path_factory.mktemp("own") / "my_images"
  done = make_demo.write(out, count=40, data_dir=demo_data_dir)
  return out, done


def _rows(out):
  with open(out / "labels.csv", newline="") as f:
    return list(csv.DictReader(f))


def test_the_folder_holds_pngs_labels_patients_and_masks_of_the_demo(folder, demo_data_dir):
  out, done = folder
  rows = _rows(out)
  assert len(rows) == done["images"] == 40 and done["masks"] == 20
  assert [r["label"] for r in rows].count("present") == 20
  assert open(out / "classes.txt").read().splitlines()[1:] == ["absent", "present"]
  train = tfds_source.open_source("radimagenet_demo/lesion", "train", demo_data_dir)
  presents = [i for i in range(len(train)) if int(train[i]["label"]) == 1][:20]
  for r, i in zip([r for r in rows if r["label"] == "present"], presents):  # same order
    np.testing.assert_array_equal(np.asarray(Image.open(out / r["path"])), train[i]["image"][..., 0])
    mask = np.asarray(Image.open(out / r["mask"]))
    np.testing.assert_array_equal(mask, train[i]["mask"][..., 0].astype(np.uint8) * 255)
  assert all(r["mask"] == "" for r in rows if r["label"] == "absent")
  with pytest.raises(FileExistsError, match="exists and is not empty"):
    make_demo.write(out, count=40, data_dir=demo_data_dir)


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("own_tfds")
  return build.build("image_folder", data_dir=data_dir, manual_dir=folder[0], progress=False), data_dir


def test_image_folder_builds_it_with_masks_patients_and_patient_folds(folder, built):
  out, done = folder
  builder, tmp_path = built
  assert builder.info.features["label"].names == ["absent", "present"]
  rows = {r["path"]: r for r in _rows(out)}
  fold_of = {}
  for f in range(5):
    source = tfds_source.open_source("image_folder", f"fold{f}", tmp_path)
    for i in range(len(source)):
      e = source[i]
      row = rows[e["file_name"].decode()]
      assert e["patient_id"].decode() == row["patient_id"]
      assert fold_of.setdefault(row["patient_id"], f) == f  # a patient in one fold only
      expected = (np.asarray(Image.open(out / row["mask"])) > 0) if row["mask"] else 0
      np.testing.assert_array_equal(e["mask"][..., 0], np.broadcast_to(expected, (128, 128)))
      assert bool(e["has_mask"]) == bool(row["mask"])
  assert sum(1 for _ in fold_of) == done["patients"]


def test_gradcam_runs_on_the_own_data_and_reads_its_masks(folder, built, tmp_path):
  from radimagenet_jax import cli
  out, _ = folder
  _, data_dir = built
  work = tmp_path / "cam"
  assert cli.main(["gradcam", "--config=configs/gradcam.py:own,model_b=none",
                   f"--workdir={work}", f"--config.data_dir={data_dir}", "--config.image_size=32",
                   "--config.max_images=6", "--config.batch_size=6", "--config.num_overlays=0"]) == 0
  with open(work / "per_image.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  fold0 = tfds_source.open_source("image_folder", "fold0", data_dir, decode=False)
  assert [r["id"] for r in rows] == [fold0[i]["file_name"].decode() for i in range(6)]
  labels = {r["path"]: r for r in _rows(out)}
  for r in rows:  # the mask Grad-CAM compared with: labels.csv's PNG (or none) at the input size
    mask = labels[r["id"]]["mask"]
    pixels = int((transforms.resize(np.asarray(Image.open(out / mask)), (32, 32)) > 0).sum()
                 ) if mask else 0
    assert int(r["mask_pixels"]) == pixels and (r["mask_empty"] == "True") == (pixels == 0)
