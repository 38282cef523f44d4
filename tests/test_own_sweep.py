"""The own-data preset (configs/finetune.py:own), user scenario lists, and extending a sweep."""
from __future__ import annotations

import json
import os

import pytest

from radimagenet_jax import config_files
from radimagenet_jax.finetune import scenarios, sweep, sweep_command
from tests.test_sweep import FakeRun, read_csv, settings

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "finetune.py")


def _config(arg):
  return config_files.load_module(CONFIG).get_config(arg)


def test_scenario_lists_parse_from_text_and_from_a_file(tmp_path):
  S = scenarios.Scenario
  assert scenarios.parse_scenarios("top10@1e-3, all@1e-4") == [S("top10", 1e-3), S("all", 1e-4)]
  path = tmp_path / "scenarios.txt"
  path.write_text("# mine\nhead@0.01\n\ntop5@1e-3  # five layers\n")
  assert scenarios.parse_scenarios(str(path)) == [S("head", 0.01), S("top5", 1e-3)]
  for bad, match in (("top10", r"scenario 'top10': expected FREEZE@LR"),
                     ("top10@-1", r"expected a learning rate > 0"),
                     ("sideways@1e-3", r"scenario 'sideways@1e-3'"),
                     ("all@1e-3,all@0.001", r"listed twice"),
                     ("", r"no scenario")):
    with pytest.raises(ValueError, match=match):
      scenarios.parse_scenarios(bad)


def test_own_variant_takes_data_weights_and_a_scenario_list_with_commas():
  c = _config("own,data=image_folder/lung,weights=runs/demo/best,scenarios=top10@1e-3,all@1e-4,"
              "model=densenet121")
  assert c.dataset == "image_folder/lung" and c.model == "densenet121"
  assert c.sweep_scenarios == "top10@1e-3,all@1e-4"
  assert c.init == "pretrained" and c.inits.pretrained.densenet121 == "runs/demo/best"
  assert c.sweep_inits == "pretrained,random" and c.sweep_models == "densenet121"
  settings_, runs = sweep_command.plan(c)
  assert settings_["dataset"] == "image_folder/lung" and settings_["preset"] == "custom"
  assert {(r.freeze, r.lr) for r in runs} == {("top10", 1e-3), ("all", 1e-4)}
  assert {r.init for r in runs} == {"pretrained", "random"} and {r.fold for r in runs} == set(range(5))
  default = _config("own")
  assert [tuple(s) for s in scenarios.parse_scenarios(default.sweep_scenarios)] == [
      ("head", 1e-2), ("top10", 1e-3), ("all", 1e-4)]
  assert _config("busi").sweep_scenarios == ""  # the presets keep their own scenarios
  with pytest.raises(ValueError, match="data= and weights= are settings of the own variant"):
    _config("busi,weights=x.h5")


def test_a_sweep_extends_with_more_scenarios_inits_and_folds_keeping_finished_runs(tmp_path):
  S = scenarios.Scenario
  first = scenarios.expand(["resnet50"], [S("head", 1e-2)], ["pretrained"], [0])
  fake = FakeRun()
  sweep.run_sweep(settings(first, init_order=["pretrained"]), tmp_path, first, fake,
                  log=lambda _: None)
  grown = scenarios.expand(["resnet50"], [S("head", 1e-2), S("all", 1e-4)],
                           ["pretrained", "random"], [0, 1])
  lines, fake = [], FakeRun()
  rows = sweep.run_sweep(settings(grown, init_order=["pretrained", "random"]), tmp_path, grown,
                         fake, log=lines.append)
  assert first[0].name not in fake.calls and len(fake.calls) == len(grown) - 1
  assert f"[1/{len(grown)}] {first[0].name}: finished, skipped" in lines
  assert any(line.startswith(f"extending the sweep in {tmp_path}: +") for line in lines)
  assert [r["status"] for r in rows] == ["done"] * len(grown)
  saved = json.load(open(tmp_path / "sweep.json"))
  assert saved["scenarios"] == [["all", 1e-4], ["head", 1e-2]]
  assert saved["inits"] == ["pretrained", "random"] and saved["folds"] == [0, 1]
  assert saved["settings"]["init_order"] == ["pretrained", "random"]
  # A later call with a subset (one new fold alone) keeps the union.
  more = scenarios.expand(["resnet50"], [S("head", 1e-2)], ["random"], [2])
  sweep.run_sweep(settings(more), tmp_path, more, FakeRun(), log=lambda _: None)
  saved = json.load(open(tmp_path / "sweep.json"))
  assert saved["folds"] == [0, 1, 2] and saved["inits"] == ["pretrained", "random"]
  assert len(read_csv(tmp_path)) == len(grown) + 1
  # Another data set is still another sweep.
  with pytest.raises(ValueError, match=r"holds another sweep: sweep.json differs in \['dataset'"):
    sweep.run_sweep(settings(more, dataset="ddti/tirads4"), tmp_path, more, FakeRun())
