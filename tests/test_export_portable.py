"""Exported files name their weights without the writing machine's absolute paths."""
import os

from radimagenet_jax.export import command


def test_portable_name_is_relative_inside_the_working_directory_else_the_last_two_parts(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert command.portable_name(str(tmp_path / "runs" / "x" / "best")) == "runs/x/best"
  outside = os.path.join(os.path.dirname(str(tmp_path)), "elsewhere", "weights", "w.h5")
  assert command.portable_name(outside) == "weights/w.h5"
  assert command.portable_name("random init") == "random init"
