"""Where a command may write: never the filesystem root nor the home directory itself (issue 34),
refused in one line before anything is read or written; a class count that does not fit the data,
refused before training."""
import os

import pytest

from radimagenet_jax import cli
from radimagenet_jax.train import config as config_lib


@pytest.fixture
def home(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", os.fspath(tmp_path / "home"))
  (tmp_path / "home").mkdir()
  return tmp_path / "home"


@pytest.mark.parametrize("workdir", ["/", "/./", "//", "~", "~/", "HOME/../home"])
def test_root_and_home_itself_are_refused(home, workdir):
  workdir = workdir.replace("HOME", os.fspath(home))
  with pytest.raises(ValueError, match=r"^--workdir=.* is (the filesystem root|your home "
                     r"directory itself); .* e\.g\. --workdir=.*/home/runs/NAME\.$"):
    config_lib.resolve_workdir(workdir)


def test_folders_inside_home_and_a_link_to_home(home, tmp_path):
  assert config_lib.resolve_workdir("~/runs/x") == os.fspath(home / "runs" / "x")
  os.symlink(home, tmp_path / "link")
  with pytest.raises(ValueError, match="your home directory itself"):
    config_lib.resolve_workdir(tmp_path / "link")


@pytest.mark.parametrize("command,config", [("finetune", "finetune.py:tiny"),
                                            ("sweep", "finetune.py:tiny"),
                                            ("gradcam", "gradcam.py:demo")])
def test_commands_refuse_the_home_directory_in_one_line(command, config, home, capsys):
  # The home is a temporary folder here: a command that wrote anyway harms nothing (the same
  # check refuses "/", test above; a test that gave "/" would write there if the check broke).
  assert cli.main([command, f"--config=configs/{config}", f"--workdir={home}"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"radimagenet-jax {command}: error: --workdir={home} is your home "
                        f"directory itself;") and "\n" not in err
  assert [n for n in os.listdir(home) if not n.startswith(".")] == []  # not caches


def test_a_tilde_workdir_is_the_home_directory(home, capsys):
  assert cli.main(["finetune", "--config=configs/finetune.py:tiny", "--workdir=~"]) == 1
  assert f"--workdir={home} is your home directory itself" in capsys.readouterr().err


def test_a_class_count_other_than_the_datas_is_refused_before_training(demo_data_dir, tmp_path,
                                                                       capsys):
  work = tmp_path / "run"
  assert cli.main(["finetune", "--config=configs/finetune.py:tiny,init=random",
                   f"--workdir={work}", f"--config.data_dir={demo_data_dir}",
                   "--config.num_classes=5"]) == 1
  import tensorflow_datasets as tfds
  names = tfds.builder("radimagenet_demo/lesion", data_dir=demo_data_dir).info.features[
      "label"].names
  err = capsys.readouterr().err.strip()
  assert err == (f"radimagenet-jax finetune: error: config.num_classes=5, but "
                 f"radimagenet_demo/lesion has 2 classes ({', '.join(names)}); expected 0 (from "
                 f"the data) or 2. Nothing was trained.")
  assert not work.exists() or not os.listdir(work)


def test_gradcam_expands_a_tilde_workdir(home, capsys):
  # It wrote into a folder literally named '~' in the current directory.
  assert cli.main(["gradcam", "--config=configs/gradcam.py:demo", "--workdir=~"]) == 1
  assert f"--workdir={home} is your home directory itself" in capsys.readouterr().err
  assert not os.path.exists("~")


@pytest.mark.parametrize("out", ["/", "~"])
def test_report_refuses_the_root_or_home_as_its_output(out, home, tmp_path, capsys):
  assert cli.main(["report", os.fspath(tmp_path), f"--out={out}"]) == 1
  err = capsys.readouterr().err.strip()
  assert "--out=" in err and ("filesystem root" in err or "home directory itself" in err)
  assert "\n" not in err
