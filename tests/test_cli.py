"""`radimagenet-jax pretrain|evaluate` end to end: ResNet50 on the demo data with the tiny config."""
import json
import os
import re

import pytest

from radimagenet_jax import cli
from radimagenet_jax import checkpoints as ckpt_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "pretrain.py")


@pytest.fixture(scope="module")
def pretrained_workdir(demo_data_dir, tmp_path_factory):
  """One tiny pretraining run shared by the tests below (ResNet50 compiles once)."""
  workdir = tmp_path_factory.mktemp("cli_run")
  assert cli.main(["pretrain", f"--config={CONFIG}:tiny", "--workdir", str(workdir),
                   f"--config.data_dir={demo_data_dir}"]) == 0
  return workdir


def test_pretrain_tiny_leaves_checkpoint_metrics_events_config_and_summary(pretrained_workdir):
  workdir = pretrained_workdir
  assert ckpt_lib.latest_step(workdir) == 4
  assert ckpt_lib.read_metadata(workdir)["model_name"] == "resnet50"
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  train_steps = [l["step"] for l in lines if l["split"] == "train"]
  assert train_steps == [2, 4] and all(l["loss"] > 0 for l in lines)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tb"))
  config = json.load(open(workdir / "config.json"))
  assert (config["model"], config["image_size"], config["num_train_steps"]) == ("resnet50", 32, 4)
  summary = json.load(open(workdir / "summary.json"))
  assert summary["step"] == 4 and 0.0 <= summary["eval"]["top1"] <= summary["eval"]["top5"] <= 1.0
  support = sum(r["support"] for r in summary["per_class"])
  assert support == summary["eval"]["count"] == 16   # eval_steps=2 batches of 8


def test_evaluate_reads_the_latest_checkpoint_and_writes_json(pretrained_workdir, demo_data_dir):
  before = json.load(open(pretrained_workdir / "summary.json"))["eval"]
  assert cli.main(["evaluate", f"--config={CONFIG}:tiny", f"--workdir={pretrained_workdir}",
                   f"--config.data_dir={demo_data_dir}"]) == 0
  result = json.load(open(pretrained_workdir / "eval_validation_step4.json"))
  assert result["eval"]["loss"] == pytest.approx(before["loss"], rel=1e-5)
  assert result["eval"]["top1"] == before["top1"]


def test_help_lists_the_config_usage(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["pretrain", "--help"])
  assert e.value.code == 0
  assert "--config=configs/FILE.py[:ARG]" in capsys.readouterr().out


def test_unknown_config_key_on_the_command_line_is_an_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["pretrain", f"--config={CONFIG}:tiny", f"--workdir={tmp_path}",
              "--config.learning_rat=0.1"])
  assert "learning_rat" in str(e.value)
  assert not os.listdir(tmp_path)


def test_unknown_model_variant_lists_valid_models(tmp_path, capsys):
  assert cli.main(["pretrain", f"--config={CONFIG}:tiny,model=resnet5",
                   f"--workdir={tmp_path}"]) == 1
  assert re.search(r"pretrain: error: Unknown model 'resnet5'; valid choices: .*resnet50",
                   capsys.readouterr().err)


def test_mistyped_variant_is_one_line_listing_the_variants(tmp_path):
  with pytest.raises(SystemExit) as e:
    cli.main(["pretrain", f"--config={CONFIG}:tiyn", f"--workdir={tmp_path / 'w'}"])
  message = str(e.value)
  assert "unknown variant 'tiyn'" in message and "valid variants: demo, radimagenet, tiny" in message
  assert "Traceback" not in message and "\n" not in message.strip()
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("step", ["abc", "-1", "4.0"])
def test_evaluate_with_a_step_that_is_not_a_number_says_so_in_one_line(step, tmp_path, capsys):
  assert cli.main(["evaluate", f"--workdir={tmp_path}", "--step", step]) == 1
  err = capsys.readouterr().err.strip()
  assert err == (f"radimagenet-jax evaluate: error: --step={step!r}: expected a checkpoint step, a "
                 f"whole number (the step folders under {tmp_path}/checkpoints); omit it for the "
                 f"latest.")


def test_configs_resolve_from_the_installed_package_outside_the_checkout(tmp_path, monkeypatch):
  from radimagenet_jax import config_files
  monkeypatch.chdir(tmp_path)
  resolved = config_files.resolve("configs/finetune.py:demo")
  assert resolved.endswith(os.path.join("radimagenet_jax", "configs", "finetune.py") + ":demo")
  assert os.path.isfile(resolved.split(":")[0])
  with pytest.raises(FileNotFoundError, match=r"configs/nope.py.*expected one of .*configs/"
                     r"finetune.py"):
    config_files.resolve("configs/nope.py")
  assert config_files.resolve("finetune.py:busi") == resolved.replace(":demo", ":busi")


def test_a_config_path_into_another_folder_that_exists_nowhere_is_an_error(tmp_path, monkeypatch):
  from radimagenet_jax import config_files
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError) as e:
    config_files.resolve("my_experiments/finetune.py:busi")
  assert str(e.value).startswith(f"--config=my_experiments/finetune.py:busi: no file "
                                 f"'my_experiments/finetune.py' (from {tmp_path}); only a bare name")
  (tmp_path / "my_experiments").mkdir()
  (tmp_path / "my_experiments" / "finetune.py").write_text("")
  assert config_files.resolve("my_experiments/finetune.py:busi") == "my_experiments/finetune.py:busi"


@pytest.mark.parametrize("command", ["pretrain", "finetune", "sweep", "gradcam"])
def test_help_lists_every_config_field_with_its_default(command, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([command, "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  fields = out.split("with their defaults")[1]
  assert "dataset" in fields and "seed" in fields
  assert "Usage:" in out            # the config file's own usage, with a real example
