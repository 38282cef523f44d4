"""Hostile or broken Keras weight files, and a convert killed midway: one-line errors naming the
file, a size cap on `.keras` archives read without loading them into memory, a warning for NaN/Inf
weights, and the temporary folder of a killed convert removed by the next one.

Tiny files written with h5py in the Keras 3 `.weights.h5` layout; no Keras, no model traced (the
model table is replaced by a two-layer stand-in where a load needs one)."""
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest

from radimagenet_jax import cli, keras_io
from radimagenet_jax.keras_io import h5file
from radimagenet_jax.keras_io import load as keras_load

# The module, not the `keras_io.convert` function its package exports under the same name.
convert_lib = importlib.import_module("radimagenet_jax.keras_io.convert")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = [("c1", "Conv2D", [(("params", "c1", "kernel"), (3, 3, 3, 4)),
                           (("params", "c1", "bias"), (4,))]),
         ("b1", "BatchNormalization", [(("params", "b1", "bias"), (4,)),
                                       (("batch_stats", "b1", "mean"), (4,)),
                                       (("batch_stats", "b1", "var"), (4,))])]


def weights_h5(path, nan_in=()):
  """A Keras 3 .weights.h5 for TABLE; the layers named in `nan_in` hold a NaN / an Inf."""
  rng = np.random.default_rng(0)
  with h5py.File(path, "w") as f:
    for key, (name, _, params) in zip(("conv2d", "batch_normalization"), TABLE):
      group = f.create_group(f"layers/{key}/vars")
      group.attrs["name"] = name
      for i, (_, shape) in enumerate(params):
        value = rng.normal(size=shape).astype(np.float32)
        if name in nan_in:
          value.flat[0] = np.nan if i == 0 else np.inf
        group.create_dataset(str(i), data=value)
  return path


def keras_archive(path, member: bytes, compression=zipfile.ZIP_STORED):
  with zipfile.ZipFile(path, "w", compression=compression) as z:
    z.writestr("config.json", "{}")
    z.writestr("model.weights.h5", member)
  return path


@pytest.fixture
def table(monkeypatch):
  monkeypatch.setattr(keras_load, "_expected", lambda name: TABLE)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_keras_archive_is_read_without_loading_it_into_memory(table, tmp_path, monkeypatch,
                                                               compression):
  plain = weights_h5(tmp_path / "w.weights.h5")
  archive = keras_archive(tmp_path / "m.keras", plain.read_bytes(), compression)
  monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a: pytest.fail("member read whole"))
  got, want = keras_io.load_h5(archive, "resnet50"), keras_io.load_h5(plain, "resnet50")
  for layer in ("c1", "b1"):
    for key, value in want["params"][layer].items():
      np.testing.assert_array_equal(got["params"][layer][key], value)


def test_archive_member_above_the_size_cap_or_expanding_100x_is_refused_unread(tmp_path, monkeypatch):
  archive = keras_archive(tmp_path / "m.keras", weights_h5(tmp_path / "w.h5").read_bytes())
  monkeypatch.setattr(h5file, "MAX_ARCHIVE_MEMBER_BYTES", 1000)
  with pytest.raises(ValueError, match=r"m\.keras: the model\.weights\.h5 .* declares [\d,]+ "
                     r"bytes, above the limit of 1,000"):
    keras_io.load_h5(archive, "resnet50")
  # Below the cap, a compressed member that expands > 100x is refused too (zeros: ~1000x).
  monkeypatch.setattr(h5file, "MAX_ARCHIVE_MEMBER_BYTES", 1 << 30)
  monkeypatch.setattr(h5file, "_BOMB_FLOOR_BYTES", 1000)
  bomb = keras_archive(tmp_path / "b.keras", b"\0" * 200_000, zipfile.ZIP_DEFLATED)
  with pytest.raises(ValueError, match=r"b\.keras: .* declares 200,000 bytes from \d+ compressed "
                     r"\(over 100x\); refused unread"):
    keras_io.describe(bomb)


def test_corrupt_weights_inside_an_archive_is_a_one_line_error_naming_it(tmp_path, capsys):
  archive = keras_archive(tmp_path / "m.keras", b"not HDF5 at all" * 20)
  with pytest.raises(ValueError, match=r"m\.keras: the model\.weights\.h5 inside this \.keras "
                     r"archive is not a readable HDF5 file"):
    keras_io.load_h5(archive, "resnet50")
  truncated = tmp_path / "t.keras"
  truncated.write_bytes(keras_archive(tmp_path / "ok.keras", weights_h5(
      tmp_path / "w.h5").read_bytes()).read_bytes()[:-200])
  for path in (archive, truncated):
    assert cli.main(["inspect", os.fspath(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and os.fspath(path) in err and "error:" in err, err


def test_convert_of_a_folder_says_it_is_a_folder(tmp_path, capsys):
  assert cli.main(["convert", "--model", "resnet50", "--h5", os.fspath(tmp_path),
                   "--workdir", os.fspath(tmp_path / "out")]) == 1
  err = capsys.readouterr().err.strip()
  assert err.endswith(f"{tmp_path}: a folder; expected a Keras .h5, .weights.h5 or .keras file.")
  assert len(err.splitlines()) == 1 and "no such file" not in err


def test_nan_or_inf_weights_load_with_a_warning_naming_the_layers(table, tmp_path, caplog):
  path = weights_h5(tmp_path / "nan.weights.h5", nan_in=("b1",))
  with caplog.at_level(logging.WARNING, logger="radimagenet_jax.keras_io"):
    variables = keras_io.load_h5(path, "resnet50")
  assert np.isnan(variables["params"]["b1"]["bias"]).any()
  (record,) = [r for r in caplog.records if "NaN" in r.getMessage()]
  assert record.getMessage() == (f"{path}: 1 layers hold NaN or Inf weights: b1; outputs "
                                 "computed with them will not be finite.")
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="radimagenet_jax.keras_io"):
    keras_io.load_h5(weights_h5(tmp_path / "ok.weights.h5"), "resnet50")
  assert "NaN" not in caplog.text
  flat = {("params", f"l{i}", "kernel"): np.array([np.inf if i % 2 else 0.0]) for i in range(16)}
  with caplog.at_level(logging.WARNING, logger="radimagenet_jax.keras_io"):
    keras_load._warn_non_finite("x.h5", flat)
  assert "8 layers hold NaN or Inf weights: l1, l3, l5, l7, l9 and 3 more;" in caplog.text


def with_head(path, shape, dtype="float32"):
  """Adds a Dense top (kernel `shape`, bias) declared but never written: HDF5 allocates a
  dataset's storage at its first write, so a file declaring 2**31 classes stays a few KB."""
  with h5py.File(path, "a") as f:
    group = f.create_group("layers/dense/vars")
    group.attrs["name"] = "predictions"
    group.create_dataset("0", shape=shape, dtype=dtype)
    group.create_dataset("1", shape=shape[1:], dtype=dtype)
  return path


@pytest.mark.parametrize("classes", [2**31, 131072])
def test_head_declaring_too_many_classes_is_refused_before_any_read(table, tmp_path, monkeypatch,
                                                                     classes):
  monkeypatch.setattr(keras_load, "feature_channels", lambda name: 4)
  path = with_head(weights_h5(tmp_path / "w.weights.h5"), (4, classes))
  assert path.stat().st_size < 1 << 20
  monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda *a: pytest.fail("a dataset was read"))
  with pytest.raises(ValueError) as e:
    keras_io.load_h5(path, "resnet50", load_head="auto")
  assert str(e.value) == (
      f"{path}: dataset /layers/dense/vars/0 of the classifier 'predictions' declares shape "
      f"(4, {classes}), {classes:,} classes; expected at most 32,768 (load.MAX_HEAD_CLASSES) on "
      f"the 4 resnet50 features. Refused unread: a damaged or crafted file.")
  out = tmp_path / "ckpt"
  with pytest.raises(ValueError, match="declares shape"):
    convert_lib.convert(path, "resnet50", out)
  assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_head_of_a_plausible_size_loads(table, tmp_path, monkeypatch):
  monkeypatch.setattr(keras_load, "feature_channels", lambda name: 4)
  path = with_head(weights_h5(tmp_path / "w.weights.h5"), (4, 3))
  assert keras_io.load_h5(path, "resnet50", load_head=True)["params"]["predictions"]["kernel"] \
      .shape == (4, 3)


def test_weights_of_a_non_numeric_type_are_refused_naming_the_dataset(table, tmp_path):
  path = weights_h5(tmp_path / "w.weights.h5")
  with h5py.File(path, "a") as f:
    del f["layers/conv2d/vars/1"]
    f["layers/conv2d/vars"].create_dataset("1", shape=(4,), dtype=h5py.string_dtype())
  with pytest.raises(ValueError, match=r"w\.weights\.h5: dataset /layers/conv2d/vars/1 \(for "
                     r"c1/bias\) holds object values of shape \(4,\); expected float32"):
    keras_io.load_h5(path, "resnet50")


# ------------------------------------------------------------------------ a convert killed midway
def child_convert(workdir, marker):
  """Run in a child process: a convert that blocks while writing its checkpoint."""
  def save_variables(target, *args, **kwargs):
    os.makedirs(target)
    open(marker, "w").close()
    time.sleep(300)
  convert_lib.load_h5 = lambda path, name, **kwargs: {}
  convert_lib.checkpoints.save_variables = save_variables
  convert_lib.convert("unused.h5", "resnet50", workdir)


def test_next_convert_removes_the_temporary_folder_of_a_killed_one(tmp_path, monkeypatch, caplog):
  out, marker = tmp_path / "out", tmp_path / "blocked"
  code = (f"import sys; sys.path.insert(0, {ROOT!r}); from tests import test_safety_keras_io as t; "
          f"t.child_convert({os.fspath(out)!r}, {os.fspath(marker)!r})")
  child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 180
  while not marker.exists():
    assert child.poll() is None, child.stdout.read().decode()[-3000:]
    assert time.monotonic() < deadline, "the child convert never started writing"
    time.sleep(0.1)
  try:
    (running,) = [p for p in os.listdir(tmp_path) if p.startswith(".out.tmp")]
    convert_lib._remove_stale(os.fspath(tmp_path), ".out.tmp")  # in use: left alone
    assert (tmp_path / running).is_dir()
  finally:
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
  assert (tmp_path / running / "ckpt").is_dir() and not out.exists()
  monkeypatch.setattr(convert_lib, "load_h5", lambda path, name, **kwargs: {})
  monkeypatch.setattr(convert_lib.checkpoints, "save_variables",
                      lambda target, *a, **k: os.makedirs(os.path.join(target, "variables")))
  with caplog.at_level(logging.WARNING, logger="radimagenet_jax.keras_io"):
    convert_lib.convert("unused.h5", "resnet50", out)
  assert sorted(os.listdir(tmp_path)) == ["blocked", "out"] and os.listdir(out) == ["variables"]
  said = f"removed {tmp_path / running}: the temporary folder of an interrupted convert"
  assert said in caplog.text
