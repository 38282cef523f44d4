"""`radimagenet-jax pretrain|evaluate` end to end: ResNet50 on the demo data with the tiny config."""
import json
import os
import re

import pytest

from radimagenet_jax import cli
from radimagenet_jax import checkpoints as ckpt_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "pretrain.py")


def _crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), bit by bit: the checksum of TFRecord framing, computed independently
  of the writer's own table."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_scalar_events(path) -> dict:
  """{(tag, step): value} of a TensorBoard event file, parsed record by record (length, masked
  CRC of the length, Event proto, masked CRC of the data: the TFRecord format), checksums checked."""
  import struct
  from tensorboardX.proto import event_pb2
  data, at, scalars = open(path, "rb").read(), 0, {}
  while at < len(data):
    header = data[at:at + 8]
    (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[at + 8:at + 12])
    assert header_crc == _masked(_crc32c(header)), f"{path}: bad length checksum at byte {at}"
    body = data[at + 12:at + 12 + length]
    (body_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
    assert len(body) == length and body_crc == _masked(_crc32c(body)), f"{path}: bad record at {at}"
    event = event_pb2.Event.FromString(body)
    for value in event.summary.value:
      got = value.simple_value if value.HasField("simple_value") else value.tensor.float_val[0]
      scalars[(value.tag, event.step)] = got
    at += 16 + length
  return scalars


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
  (events,) = [f for f in os.listdir(workdir / "tb") if f.startswith("events.out.tfevents")]
  # TensorBoard holds the scalars of metrics.jsonl, at their steps (float32 in the event file).
  scalars = read_scalar_events(workdir / "tb" / events)
  expected = {(f"{l['split']}/{k}", l["step"]): v for l in lines for k, v in l.items()
              if k not in ("step", "split") and v is not None}
  assert scalars.keys() == expected.keys() and ("train/loss", 4) in scalars
  for key, value in expected.items():
    assert scalars[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
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
  # Every field of the command's default config, nested ones by their dotted name, each on its own
  # line with its default's repr (the config is loaded here by ml_collections' own flag parser).
  from absl import flags
  from ml_collections import config_flags
  from radimagenet_jax import config_files
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=["x"])
  fv(["x", "--config=" + config_files.resolve(cli._DEFAULT_CONFIG[command])])
  def walk(d, prefix=""):
    for k, v in d.items():
      yield from walk(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]
  expected = dict(walk(fv.config.to_dict()))
  listed = {}
  for line in fields.splitlines()[1:]:
    if line.startswith("  ") and line.strip():
      key, _, value = line.strip().partition(" ")
      listed[key] = value.strip()
  assert len(expected) > 20 and listed.keys() == expected.keys()
  for key, value in expected.items():
    assert listed[key] == repr(value), key
  assert "Usage:" in out            # the config file's own usage, with a real example
