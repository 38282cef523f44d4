"""The protocols as config fields, and the audit command on sweep directories written here: AUCs
and gains against scikit-learn, paired P values against rij.evaluate.delong_test, the shares of
the reference and published gains, and the protocol each sweep's runs were made under."""
import importlib.util
import json
import os

import ml_collections
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import radimagenet_jax as rij
from radimagenet_jax import cli
from radimagenet_jax.evaluate import audit
from radimagenet_jax.finetune import protocols, run as run_lib

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "finetune.py")
SCENARIOS = (("resnet50", "head", 0.01), ("resnet50", "all", 0.0001))


def _get_config(arg):
  """configs/finetune.py's get_config(arg)."""
  spec = importlib.util.spec_from_file_location("finetune_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)



@pytest.mark.parametrize("arg, protocol", [("official_acl", "paper"), ("busi", "paper"),
                                           ("busi,sweep=corrected", "corrected"),
                                           ("official_acl,protocol=corrected", "corrected"),
                                           ("demo", "corrected"), ("tiny,protocol=paper", "paper")])
def test_presets_set_every_field_of_their_protocol(arg, protocol):
  c = _get_config(arg)
  assert c.protocol == protocol
  assert {k: c[k] for k in protocols.PROTOCOLS[protocol]} == protocols.PROTOCOLS[protocol]
  assert protocols.name_of(c.to_dict()) == protocol
  run_lib.validate_config(c)


def test_protocol_names_say_what_differs():
  paper = dict(protocols.PROTOCOLS["paper"], protocol="paper")
  assert protocols.name_of(paper) == "paper"
  assert protocols.name_of(dict(paper, loss="softmax_ce")) == (
      "custom (paper except loss='softmax_ce')")
  assert "leak" in protocols.name_of(dict(paper, carry_over_folds=True))
  assert protocols.name_of({"model": "resnet50"}) == "unrecorded"
  assert protocols.describe(["paper", "corrected"]).startswith("Protocol: MIXED")


def test_parallel_runs_refuse_the_paper_protocol_in_one_line():
  c = _get_config("busi,protocol=paper")
  c.parallel_runs = 4
  with pytest.raises(ValueError, match=r"parallel_runs=4 .* does not support partial_batch=True, "
                                       r"loss='keras_bce'"):
    run_lib.validate_config(c)


def test_carry_over_needs_the_previous_folds_finished_run(tmp_path):
  c = ml_collections.ConfigDict({"carry_over_folds": True, "fold": "1"})
  with pytest.raises(ValueError, match=r"fold0 holds no finished run"):
    run_lib.carried_fold(c, str(tmp_path / "resnet50-all-lr0.001-radimagenet-fold1"))
  c.fold = "0"
  assert run_lib.carried_fold(c, str(tmp_path / "x-fold0")) is None


def _write_sweep(root, dataset, protocol, shift, seed):
  """A sweep directory as `radimagenet-jax sweep` leaves it: 2 scenarios x 2 inits x 2 folds."""
  rng = np.random.default_rng(seed)
  os.makedirs(root)
  json.dump({"dataset": dataset, "settings": {"init_order": ["radimagenet", "imagenet"]}},
            open(os.path.join(root, "sweep.json"), "w"))
  config = dict(protocols.PROTOCOLS[protocol], protocol=protocol)
  for model, freeze, lr in SCENARIOS:
    for init in ("radimagenet", "imagenet"):
      for fold in (0, 1):
        d = os.path.join(root, "runs", f"{model}-{freeze}-lr{lr:g}-{init}-fold{fold}")
        os.makedirs(d)
        labels = np.arange(30) % 2
        ids = [f"img{fold}_{i}" for i in range(30)]
        scores = rng.random(30) + (shift if init == "radimagenet" else 0.3) * labels
        scores = np.clip(scores / scores.max(), 0, 1)
        rij.evaluate.write_predictions(os.path.join(d, "predictions.csv"), ids, ids, labels,
                                       np.stack([1 - scores, scores], 1))
        json.dump({"status": "done", "model": model, "freeze": freeze, "lr": lr, "init": init,
                   "fold": fold, "dataset": dataset, "class_names": ["no", "yes"]},
                  open(os.path.join(d, "run.json"), "w"))
        json.dump(config, open(os.path.join(d, "config.json"), "w"))


def _pooled(sweep, model, freeze, lr, init):
  ids, labels, scores = [], [], []
  for fold in (0, 1):
    p = rij.evaluate.read_predictions(os.path.join(
        sweep, "runs", f"{model}-{freeze}-lr{lr:g}-{init}-fold{fold}", "predictions.csv"))
    ids += p.ids
    labels += list(p.labels)
    scores += list(p.probs[:, 1])
  order = np.argsort(ids)
  return np.asarray(labels)[order], np.asarray(scores)[order]


def test_audit_gains_and_shares_against_sklearn_and_delong(tmp_path, capsys):
  paper, corrected = str(tmp_path / "paper"), str(tmp_path / "corrected")
  _write_sweep(paper, "official/acl", "paper", 0.8, 0)
  _write_sweep(corrected, "official/acl", "corrected", 0.3, 1)
  assert cli.main(["audit", paper, corrected, "--out", str(tmp_path / "audit")]) == 0
  out = capsys.readouterr().out
  report = json.load(open(tmp_path / "audit" / "audit.json"))
  assert os.path.isfile(tmp_path / "audit" / "audit.md")
  assert report["application"] == "acl" and report["published_gain"] == 0.048
  gains = []
  for sweep, r in zip((paper, corrected), report["sweeps"]):
    assert r["protocol"] == ("paper" if sweep == paper else "corrected")
    aucs = {"radimagenet": [], "imagenet": []}
    for s, (model, freeze, lr) in zip(r["scenarios"], sorted(SCENARIOS, key=str)):
      y, a = _pooled(sweep, model, freeze, lr, "radimagenet")
      _, b = _pooled(sweep, model, freeze, lr, "imagenet")
      assert (s["model"], s["freeze"], s["lr"]) == (model, freeze, lr)
      assert s["auc_candidate"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
      assert s["auc_baseline"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
      assert s["p_value"] == pytest.approx(rij.evaluate.delong_test(y, a, b)["p_value"], rel=1e-9)
      aucs["radimagenet"].append(roc_auc_score(y, a))
      aucs["imagenet"].append(roc_auc_score(y, b))
    ra, im = np.mean(aucs["radimagenet"]), np.mean(aucs["imagenet"])
    assert r["gain_of_means"] == pytest.approx((ra - im) / im, abs=1e-12)
    gains.append((ra - im) / im)
  assert report["sweeps"][1]["share_of_reference_gain"] == pytest.approx(gains[1] / gains[0])
  assert report["sweeps"][0]["share_of_published_gain"] == pytest.approx(gains[0] / 0.048)
  assert "paper: radimagenet AUC" in out and "corrected: radimagenet AUC" in out
  assert "unit: image" in out


def test_audit_refuses_sweeps_of_two_data_sets(tmp_path):
  _write_sweep(str(tmp_path / "a"), "official/acl", "paper", 0.8, 0)
  _write_sweep(str(tmp_path / "b"), "official/breast", "corrected", 0.3, 1)
  with pytest.raises(ValueError, match="different data sets"):
    audit.audit([str(tmp_path / "a"), str(tmp_path / "b")])
  assert not os.path.exists(str(tmp_path / "a") + "_audit")


def test_collapsed_models_and_lost_gains_are_said_in_words(tmp_path):
  paper, corrected = str(tmp_path / "paper"), str(tmp_path / "corrected")
  _write_sweep(paper, "official/breast", "paper", 0.8, 0)
  _write_sweep(corrected, "official/breast", "corrected", 0.0, 1)   # no better than imagenet
  run = os.path.join(corrected, "runs", "resnet50-head-lr0.01-radimagenet-fold0")
  p = rij.evaluate.read_predictions(os.path.join(run, "predictions.csv"))
  rij.evaluate.write_predictions(os.path.join(run, "predictions.csv"), p.ids, p.patients,
                                 p.labels, np.tile([[0.0, 1.0]], (len(p.ids), 1)))
  report = audit.audit([paper, corrected])
  r = report["sweeps"][1]
  assert r["collapsed"] == []  # fold 1 still spreads the pooled scores
  for fold in (1,):
    run = os.path.join(corrected, "runs", f"resnet50-head-lr0.01-radimagenet-fold{fold}")
    p = rij.evaluate.read_predictions(os.path.join(run, "predictions.csv"))
    rij.evaluate.write_predictions(os.path.join(run, "predictions.csv"), p.ids, p.patients,
                                   p.labels, np.tile([[0.0, 1.0]], (len(p.ids), 1)))
  r = audit.audit([paper, corrected])["sweeps"][1]
  assert r["collapsed"] == ["resnet50-head-lr0.01 radimagenet"]
  assert "COLLAPSED" in r["verdict"] and "NOT SHOWN" in r["verdict"]
  assert r["gain_of_means"] < 0 and r["share_of_published_gain"] < 0
  text = open(os.path.join(paper + "_audit", "audit.md")).read()
  assert "(collapsed: radimagenet)" in text


def test_report_states_the_protocol_and_flags_a_mix(tmp_path):
  sweep = str(tmp_path / "paper")
  _write_sweep(sweep, "official/acl", "paper", 0.8, 0)
  report = rij.evaluate.write_report(sweep)
  assert any(n.startswith("Protocol: paper: the official scripts") for n in report["notes"])
  assert "Protocol: paper" in open(os.path.join(sweep, "report.md")).read()
  run = os.path.join(sweep, "runs", "resnet50-head-lr0.01-imagenet-fold1")
  json.dump(dict(protocols.PROTOCOLS["corrected"], protocol="corrected"),
            open(os.path.join(run, "config.json"), "w"))
  report = rij.evaluate.write_report(sweep)
  assert any(n.startswith("Protocol: MIXED") for n in report["notes"])
