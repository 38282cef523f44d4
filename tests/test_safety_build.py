"""Hostile or broken input to `radimagenet-jax build`: paths in a release's files that leave
--manual_dir, decompression-bomb images, builds killed by SIGKILL midway, a bad dataset name; and
the command's plain report instead of TFDS's progress output."""
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from radimagenet_jax import cli
from radimagenet_jax.data import build
from radimagenet_jax.data import tfds_source
from radimagenet_jax.data.build import tfds_base
from tfds_builders import testing_utils as tu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTSIDE = "resolves outside --manual_dir"


def bomb_png() -> bytes:
  """A 60-byte PNG whose header says 20000 x 20000 pixels (400 M, above PIL's 179 M limit)."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)  # 8-bit gray
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
          + chunk(b"IEND", b""))


# ------------------------------------------------------------------------ paths out of manual_dir
def test_csv_paths_leaving_manual_dir_are_bad_rows_and_never_read(tmp_path):
  manual = tu.copy_dummy("image_folder", tmp_path)
  (tmp_path / "outside").mkdir()
  secret = tmp_path / "outside" / "secret.png"
  Image.fromarray(np.full((8, 8), 123, np.uint8)).save(secret)
  os.symlink(secret, os.path.join(manual, "normal", "patient00", "link.png"))
  good = [(f"{'normal' if p % 2 == 0 else 'lesion'}/patient{p:02d}/slice_000.png", "yes" if p < 5
           else "no", f"P{p}") for p in range(10)]
  bad = ["../outside/secret.png", os.fspath(secret), "../outside/absent.png",
         "normal/patient00/link.png"]
  with open(os.path.join(manual, "labels.csv"), "w") as f:
    f.write("path,label,patient_id\n" + "".join(f"{p},{l},{g}\n" for p, l, g in good) +
            "".join(f"{p},yes,X{i}\n" for i, p in enumerate(bad)))
  csv_path = os.path.join(manual, "labels.csv")
  with pytest.raises(tfds_base.SourceFileError, match=rf"labels\.csv: line 12: .*{OUTSIDE}"):
    tu.build("image_folder", manual, tmp_path / "fail")
  builder = tu.build("image_folder", manual, tmp_path / "skip", on_error="skip")
  skipped = tu.skipped(builder)
  assert [path for path, _ in skipped] == [csv_path] * 4
  reasons = sorted(reason for _, reason in skipped)
  assert [r.split(":")[0] for r in reasons] == ["line 12", "line 13", "line 14", "line 15"]
  # Same words whether the outside file exists (secret.png) or not (absent.png).
  words = {r.split(": ", 1)[1].replace(repr(v), "V") for r, v in zip(reasons, bad)}
  assert len(words) == 1 and OUTSIDE in words.pop()
  examples = [e for s in tu.GROUP_SPLITS for e in tu.read_all(builder)[s]]
  assert len(examples) == len(good)
  assert not any((e["image"] == 123).all() for e in examples)  # the secret's pixels are not stored


def _escape_radimagenet(manual, outside):
  link = os.path.join(manual, "radiology_ai", "CT", "abd", "normal", "abd-normal999999.png")
  shutil.copy(os.path.join(os.path.dirname(link), "abd-normal000001.png"), outside / "x.png")
  os.symlink(outside / "x.png", link)  # a symlink out of the release: realpath is outside
  with open(os.path.join(manual, "RadiologyAI_train.csv"), "a") as f:
    f.write("radiology_ai/CT/abd/normal/abd-normal999999.png,abd-normal\n")
  return "RadiologyAI_train.csv"


def _escape_rsna_pneumonia(manual, outside):
  images = os.path.join(manual, "stage_2_train_images")
  shutil.copy(os.path.join(images, sorted(os.listdir(images))[0]), outside / "secret.dcm")
  with open(os.path.join(manual, "stage_2_train_labels.csv"), "a") as f:
    f.write("../../outside/secret,,,,,0\n")
  return "stage_2_train_labels.csv"


def _escape_rsna_ich(manual, outside):
  images = os.path.join(manual, "stage_2_train")
  shutil.copy(os.path.join(images, sorted(os.listdir(images))[0]), outside / "secret.dcm")
  os.symlink(outside / "secret.dcm", os.path.join(images, "ID_link.dcm"))
  with open(os.path.join(manual, "stage_2_train.csv"), "a") as f:
    f.write("ID_link_any,0\n")
  return "stage_2_train.csv"


def _escape_mrnet(manual, outside):
  root = os.path.join(manual, "MRNet-v1.0")
  shutil.copy(os.path.join(root, "train", "sagittal", "0000.npy"), outside / "secret.npy")
  with open(os.path.join(root, "train-acl.csv"), "a") as f:
    f.write("../../../../outside/secret,1\n")  # train/sagittal/ + 4 x '..' = manual_dir's parent
  return "train-acl.csv"


def _escape_ddti(manual, outside):
  shutil.copy(os.path.join(manual, "1_1.jpg"), outside / "secret_1.jpg")
  with open(os.path.join(manual, "99.xml"), "w") as f:
    f.write("<case><number>../outside/secret</number><tirads>2</tirads><mark><image>1</image>"
            "<svg></svg></mark></case>")
  return "99.xml"


@pytest.mark.parametrize("name,escape", [
    ("radimagenet", _escape_radimagenet), ("rsna_pneumonia", _escape_rsna_pneumonia),
    ("rsna_ich", _escape_rsna_ich), ("mrnet", _escape_mrnet), ("ddti", _escape_ddti)])
def test_ids_and_names_from_release_files_cannot_leave_manual_dir(tmp_path, name, escape):
  manual = tu.copy_dummy(name, tmp_path)
  (tmp_path / "outside").mkdir()
  source = escape(manual, tmp_path / "outside")
  with pytest.raises(tfds_base.SourceFileError) as e:
    tu.build(name, manual, tmp_path / "d")
  message = str(e.value)
  assert source in message and OUTSIDE in message and "\n" not in message, message
  assert not (tmp_path / "d").exists()


def test_inside_follows_symlinks_and_dotdot(tmp_path):
  (tmp_path / "root" / "a").mkdir(parents=True)
  os.symlink(tmp_path, tmp_path / "root" / "up")
  assert tfds_base.inside(tmp_path / "root", tmp_path / "root" / "a" / ".." / "b.png")
  assert not tfds_base.inside(tmp_path / "root", tmp_path / "root" / ".." / "b.png")
  assert not tfds_base.inside(tmp_path / "root", tmp_path / "root" / "up" / "b.png")
  assert not tfds_base.inside(tmp_path / "root", "/etc/passwd")
  assert not tfds_base.inside(tmp_path / "root", f"{tmp_path}/root/a\0b")


# ------------------------------------------------------------------------ decompression bombs
def test_decompression_bomb_png_is_a_bad_file_in_both_modes(tmp_path):
  manual = tu.copy_dummy("image_folder", tmp_path)
  bomb = os.path.join(manual, "normal", "patient00", "bomb.png")
  with open(bomb, "wb") as f:
    f.write(bomb_png())
  with pytest.raises(tfds_base.SourceFileError, match=r"bomb\.png: image too large.*bomb"):
    tu.build("image_folder", manual, tmp_path / "fail")
  builder = tu.build("image_folder", manual, tmp_path / "skip", on_error="skip")
  assert [path for path, _ in tu.skipped(builder)] == [bomb]


# ------------------------------------------------------------------------ the command line
def test_build_of_a_path_like_name_is_a_one_line_error(capsys):
  for bad in ("../x", "/tmp/x", "radimagenet_demo.x"):
    assert cli.main(["build", bad]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a dataset name" in err and "busi" in err, err


class KillableStandIn(tfds_base.RadBuilder):
  """6 constant 4x4 images (value $RIJ_TEST_VALUE); with $RIJ_TEST_BLOCK set, writes that file
  after 3 examples and sleeps, so that a test can kill the build midway."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description="stand-in", features=
                                 tfds.features.FeaturesDict({
                                     "image": tfds.features.Image(shape=(4, 4, 1))}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    value = int(os.environ.get("RIJ_TEST_VALUE", "10"))
    for i in range(6):
      if i == 3 and os.environ.get("RIJ_TEST_BLOCK"):
        open(os.environ["RIJ_TEST_BLOCK"], "w").close()
        time.sleep(300)
      buf = io.BytesIO()
      Image.fromarray(np.full((4, 4), value, np.uint8)).save(buf, format="PNG")
      yield i, {"image": buf.getvalue()}


def child_build(data_dir, overwrite):
  """Run in a child process by `_killed_build`."""
  build.driver.builder_class = lambda name: KillableStandIn
  build.build("killable_stand_in", data_dir=data_dir, overwrite=overwrite, progress=False)


@pytest.fixture
def stand_in(monkeypatch):
  monkeypatch.setattr(build.driver, "builder_class", lambda name: KillableStandIn)


def _killed_build(data_dir, overwrite, while_blocked=lambda: None):
  """Starts a build of the stand-in in a child process, waits until it has written half of its
  examples, calls `while_blocked()`, then kills it with SIGKILL."""
  marker = os.path.join(os.fspath(data_dir), "..", "blocked")
  code = (f"import sys; sys.path.insert(0, {ROOT!r}); from tests import test_safety_build as t; "
          f"t.child_build({os.fspath(data_dir)!r}, {overwrite})")
  env = dict(os.environ, RIJ_TEST_BLOCK=marker, RIJ_TEST_VALUE="20")
  child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 180
  while not os.path.exists(marker):
    assert child.poll() is None, child.stdout.read().decode()[-3000:]
    assert time.monotonic() < deadline, "the child build never reached its examples"
    time.sleep(0.1)
  try:
    while_blocked()
  finally:
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    os.remove(marker)


def _values(data_dir):
  ds = tfds.data_source("killable_stand_in", split="train", data_dir=os.fspath(data_dir))
  return sorted({int(ds[i]["image"].max()) for i in range(len(ds))}), len(ds)


def test_killed_overwrite_is_restored_by_the_next_build(stand_in, tmp_path, capsys):
  data_dir = tmp_path / "tfds"
  version = build.build("killable_stand_in", data_dir=data_dir, progress=False).data_path
  _killed_build(data_dir, overwrite=True)
  left = sorted(os.listdir(version.parent))  # the dataset is not built any more:
  assert left[0] == "1.0.0.previous" and left[1].startswith("incomplete.") and len(left) == 2
  # The same command again: puts the old copy back, clears TFDS's leftovers, says so.
  capsys.readouterr()
  build.build("killable_stand_in", data_dir=data_dir)
  out = capsys.readouterr().out
  assert "restored" in out and "interrupted" in out and left[1] in out, out
  assert os.listdir(version.parent) == ["1.0.0"] and _values(data_dir) == ([10], 6)
  build.build("killable_stand_in", data_dir=data_dir, overwrite=True, progress=False)
  assert os.listdir(version.parent) == ["1.0.0"] and _values(data_dir) == ([10], 6)


def test_killed_first_build_is_cleaned_by_open_with_build(stand_in, tmp_path, caplog):
  data_dir = tmp_path / "tfds"
  folder = data_dir / "killable_stand_in"
  seen = {}

  def while_blocked():  # a build that is running is never "repaired" by someone else
    seen["recover"] = build.recover("killable_stand_in", data_dir=data_dir)
    seen["left"] = sorted(os.listdir(folder))

  _killed_build(data_dir, overwrite=False, while_blocked=while_blocked)
  assert seen["recover"] == [] and len(seen["left"]) == 1
  assert sorted(os.listdir(folder)) == seen["left"] and seen["left"][0].startswith("incomplete.")
  with caplog.at_level("WARNING", logger="radimagenet_jax.data.build"):
    source = tfds_source.open_source("killable_stand_in", "train", data_dir, build=True)
  assert len(source) == 6 and os.listdir(folder) == ["1.0.0"]
  assert seen["left"][0] in caplog.text and "interrupted build" in caplog.text


def test_build_prints_a_plain_report_and_no_tfds_progress(stand_in, tmp_path, capsys):
  data_dir = tmp_path / "tfds"
  assert cli.main(["build", "killable_stand_in", f"--data_dir={data_dir}"]) == 0
  out, err = capsys.readouterr()
  path = data_dir / "killable_stand_in" / "1.0.0"
  lines = out.splitlines()
  assert lines[0] == f"building killable_stand_in 1.0.0 into {path} ..."
  assert lines[1].startswith("built killable_stand_in 1.0.0 in ")
  assert lines[1].endswith(f"s: {path}")
  assert lines[2:] == ["  examples per split: train 6",
                       f"  skipped source files: 0 (listed in {path / 'skipped_files.tsv'})"]
  assert err == "" and "Downloading and preparing" not in out
