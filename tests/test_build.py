"""build.build with a stand-in manual-download builder: manual_dir errors carry the builder's
instructions, a wrong release leaves nothing behind, a right one builds TF-free to array_record."""
import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from radimagenet_jax.data import build
from radimagenet_jax.data.build import tfds_base

INSTRUCTIONS = "Download tiny_release.zip from example.org and unzip it into the manual dir."


class ManualStandIn(tfds_base.RadBuilder):
  """Two PNGs listed in labels.csv inside the manual dir."""
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description="stand-in", features=
                                 tfds.features.FeaturesDict({
                                     "image": tfds.features.Image(shape=(4, 4, 1)),
                                     "label": tfds.features.ClassLabel(names=["a", "b"])}))

  def _split_generators(self, dl_manager):
    csv = self.manual_path(dl_manager, "labels.csv")
    return {"train": self._generate_examples(csv)}

  def _generate_examples(self, csv):
    for line in csv.read_text().split():
      name, label = line.split(",")
      buf = io.BytesIO()
      Image.open(csv.parent / name).save(buf, format="PNG")
      yield name, {"image": buf.getvalue(), "label": int(label)}


@pytest.fixture(autouse=True)
def stand_in(monkeypatch):
  monkeypatch.setattr(build.driver, "builder_class", lambda name: ManualStandIn)


def _release(path):
  path.mkdir()
  for i in range(2):
    Image.fromarray(np.full((4, 4), 60 * i, np.uint8)).save(path / f"{i}.png")
  (path / "labels.csv").write_text("0.png,0\n1.png,1\n")
  return path


def test_missing_or_empty_manual_dir_shows_the_instructions(tmp_path):
  with pytest.raises(ValueError, match="tiny_release.zip"):
    build.build("manual_stand_in", data_dir=tmp_path / "d")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="(?s)empty.*tiny_release.zip"):
    build.build("manual_stand_in", data_dir=tmp_path / "d", manual_dir=tmp_path / "empty")
  assert not (tmp_path / "d").exists()


def test_wrong_manual_dir_fails_with_instructions_and_leaves_nothing(tmp_path):
  wrong = tmp_path / "wrong"
  wrong.mkdir()
  (wrong / "something_else.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match="(?s)labels.csv.*tiny_release.zip"):
    build.build("manual_stand_in", data_dir=tmp_path / "d", manual_dir=wrong, progress=False)
  assert not (tmp_path / "d").exists()


def test_right_manual_dir_builds_array_record_once(tmp_path):
  manual = _release(tmp_path / "release")
  builder = build.build("manual_stand_in", data_dir=tmp_path / "d", manual_dir=manual,
                        progress=False)
  files = os.listdir(builder.data_path)
  assert "manual_stand_in-train.array_record-00000-of-00001" in files
  assert "skipped_files.tsv" in files and not (tmp_path / "d" / "downloads").exists()
  ds = tfds.data_source("manual_stand_in", split="train", data_dir=tmp_path / "d")
  assert sorted(int(ds[i]["image"].max()) for i in range(len(ds))) == [0, 60]
  # Cached: a second call does not need the release any more.
  assert build.build("manual_stand_in", data_dir=tmp_path / "d").data_path == builder.data_path
