"""The `gradcam` command: its pictures (overlays, panels, titles), the study run end to end on the
demo data and on synthetic records, and the checks that run before anything is written."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import radimagenet_jax as rij
from radimagenet_jax.explain import gradcam as gc
from radimagenet_jax.explain import regions as sm
from tests.model_variables import random_variables


# ----------------------------------------------------------------------------- pictures
def test_overlay_and_panel_pngs(tmp_path):
  from PIL import Image
  from radimagenet_jax.explain import plots
  rng = np.random.default_rng(0)
  img = rng.normal(size=(3, 32, 32, 3))
  cams = rng.uniform(size=(3, 32, 32))
  masks = np.zeros((3, 32, 32), bool)
  masks[:, 8:20, 8:20] = True
  fig = plots.overlay(img[0], cams[0], masks[0], path=str(tmp_path / "o.png"), title="x",
                      caption="label 1, predicted 1 (p 0.90)", region=cams[0] > 0.7)
  assert plots.titles(fig) == ["x\nlabel 1, predicted 1 (p 0.90)"]
  assert any(ax.get_ylabel() == "Grad-CAM" for ax in fig.axes)          # the colour bar
  fig = plots.panel(img, masks, cams, cams[::-1], names=("RadImageNet", "ImageNet"),
                    dice_a=[0.1, 0.2, 0.3], dice_b=[0.3, 0.2, 0.1], excluded=[False, False, True],
                    row_titles=["#0 a", "#1 a", "#2 b"], regions_a=cams > 0.7,
                    captions_b=["predicted x (p 0.50)"] * 3, path=str(tmp_path / "p.png"))
  assert plots.titles(fig) == [
      "#0 a", "RadImageNet  Dice 0.10", "ImageNet  Dice 0.30\npredicted x (p 0.50)",
      "#1 a", "RadImageNet  Dice 0.20", "ImageNet  Dice 0.20\npredicted x (p 0.50)",
      "#2 b", "RadImageNet  excluded (empty mask)",
      "ImageNet  excluded (empty mask)\npredicted x (p 0.50)"]
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend == ["lesion mask", "map above threshold"]
  o = Image.open(tmp_path / "o.png")
  p = Image.open(tmp_path / "p.png")
  assert o.size == (380, 380) and p.size == (860, 860)
  # The heat map is drawn: the picture is not grey.
  rgb = np.asarray(p.convert("RGB")).astype(int)
  assert np.abs(rgb[..., 0] - rgb[..., 2]).max() > 50
  # display_image undoes any per-channel affine preprocessing of a grey image.
  grey = rng.uniform(size=(8, 8))
  pre = np.stack([(grey * 255 - 104) / 255, (grey * 255 - 117) / 255, (grey * 255 - 124) / 255], -1)
  np.testing.assert_allclose(plots.display_image(pre), (grey - grey.min()) / np.ptp(grey),
                             atol=1e-5)


def test_command_pictures_titles_are_unique_and_mark_excluded_images(tmp_path, monkeypatch):
  """Two images sharing one source id get distinct titles (#index id); an empty-mask image says
  'excluded' instead of 'Dice 0.00'; titles carry the label, the prediction and its probability."""
  from radimagenet_jax.explain import pictures, plots
  drawn = []
  for fn in ("overlay", "panel"):
    original = getattr(plots, fn)
    monkeypatch.setattr(plots, fn,
                        lambda *a, _f=original, **k: drawn.append(_f(*a, **k)) or drawn[-1])
  rng = np.random.default_rng(0)
  mask = np.zeros((16, 16), bool)
  mask[4:9, 4:9] = True

  def picture(index, empty):
    m = np.zeros_like(mask) if empty else mask
    return {"index": index, "id": "src7", "image": rng.normal(size=(16, 16, 3)), "mask": m,
            "label": 0 if empty else 1, "empty": empty,
            "maps": {k: rng.uniform(size=(16, 16)) for k in "AB"},
            "dice": {"A": 0.0 if empty else 0.5, "B": 0.0 if empty else 0.25},
            "region": {k: m for k in "AB"}, "probs": {"A": np.array([0.2, 0.8]),
                                                     "B": np.array([0.6, 0.4])}}

  c = __import__("configs.gradcam", fromlist=["get_config"]).get_config("demo,tiny")
  c.num_overlays, c.panel_rows = 3, 3
  written = pictures.write(str(tmp_path), c, ["A", "B"], [picture(3, True), picture(4, False),
                                                        picture(5, False)], ["benign", "malignant"])
  assert written == [f"{tmp_path / 'overlays'}{os.sep} (6 PNG)", str(tmp_path / "panel.png"),
                     str(tmp_path / "panel.pdf")]
  overlay_titles = [plots.titles(f)[0] for f in drawn[:6]]
  assert len(set(overlay_titles)) == 6
  assert overlay_titles[0] == ("A  #3 src7  excluded (empty mask)\n"
                               "label benign, predicted malignant (p 0.80)")
  assert overlay_titles[3] == "B  #4 src7  Dice 0.25\nlabel malignant, predicted benign (p 0.60)"
  panel = plots.titles(drawn[6])
  rows = panel[0::3]
  assert rows == ["#4 src7\nlabel malignant", "#5 src7\nlabel malignant", "#3 src7\nlabel benign"]
  assert panel[7] == "A  excluded (empty mask)\npredicted malignant (p 0.80)"
  assert not any("Dice 0.00" in t for t in panel + overlay_titles)


# ----------------------------------------------------------------------------- the command
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "gradcam.py")


def _read_csv(path):
  import csv
  with open(path) as f:
    return list(csv.DictReader(f))


def test_run_loads_a_checkpoint_and_matches_direct_computation(demo_data_dir, tmp_path):
  """One model from an Orbax checkpoint: the per-image numbers in per_image.csv equal Grad-CAM +
  threshold + Dice computed directly with the saved variables on the same images."""
  from radimagenet_jax.explain import study as gradcam_run
  from radimagenet_jax import checkpoints as checkpoint
  model = rij.models.get_spec("resnet50").module_cls(num_classes=2)
  variables = random_variables(model, jnp.zeros((1, 32, 32, 3)), seed=5)
  # The checkpoint records its preprocessing: the command uses it (config.preprocess='auto').
  checkpoint.save_variables(tmp_path / "ckpt", variables, model_name="resnet50", num_classes=2,
                            extra_metadata={"preprocess": "caffe"})
  c = __import__("configs.gradcam", fromlist=["get_config"]).get_config("demo,tiny,model_b=none")
  c.data_dir, c.build_dataset = demo_data_dir, False
  c.image_size, c.max_images, c.batch_size = 32, 6, 4          # 4 + 2: the last batch is padded
  c.model_a.weights, c.model_a.label = str(tmp_path / "ckpt"), "ckpt"
  summary = gradcam_run.run(c, str(tmp_path / "w"))
  rows = _read_csv(tmp_path / "w" / "per_image.csv")
  assert len(rows) == 6 and summary["n_images"] == 6 and "comparison" not in summary
  assert summary["models"]["ckpt"]["preprocess"] == "caffe"
  assert summary["models"]["ckpt"]["preprocess_origin"].startswith("weights")
  source, _ = gradcam_run.load_records(c)
  direct = []
  for batch in gradcam_run.iterate_batches(source, c, ["caffe"]):
    res = gc.gradcam_full(model, variables, batch["images"]["caffe"])
    pred = sm.predicted_regions(maps=np.asarray(res.maps)[:batch["valid"]])
    direct.append(sm.dice_iou(pred, batch["masks"])[0])
  np.testing.assert_allclose([float(r["dice"]) for r in rows], np.concatenate(direct), atol=1e-9)
  assert sorted(os.listdir(tmp_path / "w" / "overlays")) == ["ckpt_00000.png", "ckpt_00001.png"]
  assert not (tmp_path / "w" / "panel.png").exists()


def test_cli_run_end_to_end_statistics_match_csv(demo_data_dir, tmp_path, capsys):
  import tensorflow_datasets as tfds
  from scipy import stats as sps
  from radimagenet_jax import cli
  work = tmp_path / "w"
  assert cli.main(["gradcam", f"--config={CONFIG}:demo,tiny", f"--workdir={work}",
                   f"--config.data_dir={demo_data_dir}", "--config.image_size=32",
                   "--config.max_images=12", "--config.batch_size=4",
                   "--config.comparison=>=", "--config.model_b.seed=7"]) == 0
  summary = json.load(open(work / "summary.json"))
  rows = _read_csv(work / "per_image.csv")
  source = tfds.data_source("radimagenet_demo/lesion", split="test", data_dir=demo_data_dir)
  empty = [not np.any(source[i]["mask"]) for i in range(12)]
  assert summary["n_empty_masks"] == sum(empty) and summary["n_masks_resized"] == 0
  assert summary["settings"]["comparison"] == ">="
  assert [r["mask_empty"] == "True" for r in rows if r["model"] == "A"] == empty
  keep = [r for r in rows if r["mask_empty"] == "False"]
  # The paired statistics run on per-patient means (the unit of independence).
  patients = list(dict.fromkeys(r["patient"] for r in keep))
  assert all(patients)
  da, db = (np.array([np.mean([float(r["dice"]) for r in keep if r["model"] == m
                               and r["patient"] == p]) for p in patients]) for m in "AB")
  s = summary["comparison"]["dice"]
  assert s["unit"] == "patient" and s["n"] == len(patients) and s["n_images"] == 12 - sum(empty)
  assert s["A"]["mean"] == pytest.approx(da.mean()) and s["B"]["sd"] == pytest.approx(db.std(ddof=1))
  if s["ttest_rel"] is not None:
    assert s["ttest_rel"]["pvalue"] == pytest.approx(sps.ttest_rel(da, db).pvalue)
  for r in rows:
    pred, mask = int(r["pred_pixels"]), int(r["mask_pixels"])
    # The max pixel passes 180 unless a random model's CAM is all zero (ReLU): then nothing does.
    assert 0 <= float(r["dice"]) <= 1 and 0 <= pred <= 32 * 32 and mask <= 32 * 32
    assert float(r["iou"]) == pytest.approx(float(r["dice"]) / (2 - float(r["dice"])))
  assert (work / "panel.png").exists() and (work / "config.json").exists()
  # It says what it did: progress, per-model Dice, the comparison's p-value, the files written.
  out = capsys.readouterr().out.splitlines()
  assert "gradcam: 12/12 images" in "\n".join(out)
  assert any(l.startswith("  A (resnet50, random init (seed 0), preprocess radimagenet") and
             f"Dice {summary['models']['A']['dice']['mean']:.3f}" in l for l in out)
  assert any(l.startswith("  A vs B: Dice difference") and " p = " in l
             and f"(n={len(patients)} patients, per-patient means)" in l for l in out)
  assert out[-6:] == [f"wrote {work / 'per_image.csv'}", f"wrote {work / 'summary.json'}",
                      f"wrote {work / 'overlays'}{os.sep} (4 PNG)", f"wrote {work / 'panel.png'}",
                      f"wrote {work / 'panel.pdf'}", f"wrote {work / 'config.json'}"]
  from PIL import Image
  with Image.open(work / "panel.png") as im:
    assert im.info["Title"] == "Grad-CAM A vs B"
  assert (work / "panel.pdf").read_bytes().startswith(b"%PDF")


def test_run_resizes_mismatched_masks_and_counts_them(monkeypatch, tmp_path):
  """A synthetic source (no TFDS): masks at half the image size are resized (nearest) and
  counted; one model only, so no comparison block."""
  from radimagenet_jax.explain import study as gradcam_run
  rng = np.random.default_rng(0)
  records = []
  for i in range(5):
    mask = np.zeros((40, 40, 1) if i % 2 else (20, 20, 1), np.uint8)
    mask[5:15, 5:15] = 255 if i < 4 else 0                  # record 4: empty mask
    records.append({"image": rng.integers(0, 255, (40, 40, 1), np.uint8), "mask": mask,
                    "label": i % 2, "file_name": f"img{i}.png"})
  monkeypatch.setattr(gradcam_run, "load_records", lambda config: (records, 2))
  c = __import__("configs.gradcam", fromlist=["get_config"]).get_config("demo,tiny,model_b=none")
  c.image_size, c.batch_size, c.target = 32, 4, "label"
  summary = gradcam_run.run(c, str(tmp_path))
  rows = _read_csv(tmp_path / "per_image.csv")
  assert summary["n_masks_resized"] == 3 and summary["n_empty_masks"] == 1
  assert "comparison" not in summary and list(summary["models"]) == ["A"]
  assert [r["mask_resized"] for r in rows] == ["True", "False", "True", "False", "True"]
  assert [r["id"] for r in rows] == [f"img{i}.png" for i in range(5)]
  assert [int(r["target"]) for r in rows] == [0, 1, 0, 1, 0]   # target='label'
  # 10x10 of 20x20 -> 16x16 of 32x32; 10x10 of 40x40 -> 8x8 of 32x32.
  assert [int(r["mask_pixels"]) for r in rows] == [256, 64, 256, 64, 0]
  assert summary["models"]["A"]["dice"]["n"] == 4


# ----------------------------------------------------------------------------- never overwrites
def _pretrain_workdir(path):
  """What `pretrain` leaves: config.json (a training config), checkpoints/, summary.json."""
  (path / "checkpoints" / "120").mkdir(parents=True)
  (path / "config.json").write_text(json.dumps({"dataset": "radimagenet_demo/pretrain",
                                                "model": "resnet50", "learning_rate": 0.001}))
  (path / "summary.json").write_text(json.dumps({"top1": 0.84}))
  return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def test_gradcam_refuses_another_commands_workdir_and_writes_nothing(tmp_path):
  """The original failure: gradcam on a pretrain workdir overwrote its config.json/summary.json."""
  from radimagenet_jax import cli
  work = tmp_path / "runs" / "demo"
  before = _pretrain_workdir(work)
  for extra in ([], ["--config.model_a.layer=conv9"]):
    assert cli.main(["gradcam", f"--config={CONFIG}:demo,tiny", f"--workdir={work}",
                     "--config.build_dataset=False", *extra]) == 1
  assert {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()} == before
  assert sorted(os.listdir(work)) == ["checkpoints", "config.json", "summary.json"]
  from radimagenet_jax.explain import checks
  with pytest.raises(FileExistsError, match=r"checkpoints, config.json of another command\); "
                     r"gradcam never writes into it.*--workdir=.*demo/gradcam"):
    checks.check_workdir(work)
  # A config.json of another command is enough, and so are gradcam-like outputs without one.
  other = tmp_path / "finetune"
  other.mkdir()
  (other / "config.json").write_text(json.dumps({"init": "radimagenet"}))
  with pytest.raises(FileExistsError, match="config.json of another command"):
    checks.check_workdir(other)
  (other / "config.json").unlink()
  (other / "summary.json").write_text("{}")
  with pytest.raises(FileExistsError, match=r"\(summary.json\)"):
    checks.check_workdir(other)
  # New, empty, unrelated files only, or a previous gradcam run: accepted.
  checks.check_workdir(tmp_path / "new")
  (tmp_path / "empty").mkdir()
  checks.check_workdir(tmp_path / "empty")
  c = __import__("configs.gradcam", fromlist=["get_config"]).get_config("demo")
  (other / "summary.json").unlink()
  (other / "config.json").write_text(c.to_json_best_effort())
  (other / "summary.json").write_text("{}")
  checks.check_workdir(other)


def test_gradcam_validates_models_weights_layers_before_writing(tmp_path):
  from radimagenet_jax.explain import checks
  from radimagenet_jax.explain import study
  get = __import__("configs.gradcam", fromlist=["get_config"]).get_config
  cases = [({"model_a.layer": "conv9"}, ValueError, "'conv9' is not a feature-map layer of "
            "resnet50.*'conv5_block3_out'"),
           ({"model_a.layer": "avg_pool"}, ValueError, "not a feature-map layer"),
           ({"model_b.weights": str(tmp_path / "nope.h5")}, FileNotFoundError,
            r"config.model_b.weights=.*nope.h5: no such file"),
           ({"model_a.name": "resnet51"}, ValueError, "Unknown model 'resnet51'"),
           ({"target": "truth"}, ValueError, r"config.target='truth'; expected one of predicted"),
           ({"preprocess": "torch"}, ValueError, "config.preprocess='torch'"),
           ({"threshold": 300}, ValueError, "config.threshold=300; expected 0..255"),
           ({"image_size": 16}, ValueError, "config.image_size=16 is below resnet50's minimum"),
           ({"dataset": "no_such_dataset", "build_dataset": False}, Exception, "no_such_dataset")]
  for overrides, error, message in cases:
    c = get("demo,tiny")
    c.data_dir = str(tmp_path / "tfds")
    for key, value in overrides.items():
      node, _, leaf = key.rpartition(".")
      setattr(c[node] if node else c, leaf, value)
    with pytest.raises(error, match=message):
      study.run(c, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()
  # A checkpoint of another architecture is named before anything is loaded or written.
  from radimagenet_jax import checkpoints as checkpoint
  checkpoint.save_variables(tmp_path / "d121", {"params": {"x": {"k": np.zeros(2)}}},
                            model_name="densenet121",
                            num_classes=2)
  c = get("demo,tiny")
  c.model_a.weights = str(tmp_path / "d121")
  with pytest.raises(ValueError, match="holds densenet121 weights, but config.model_a.name is "
                     "resnet50"):
    checks.model_plans(c)


def test_keras_file_weights_keep_a_matching_classifier_and_their_preprocessing(tmp_path):
  """A fine-tuned Keras file (a 2-class 'predictions') explains with its own head; a file named as
  Keras's ImageNet weights gets keras.applications' mode (caffe for ResNet50) under 'auto'."""
  from radimagenet_jax.explain import checks, study
  model = rij.models.get_spec("resnet50").module_cls(num_classes=2)
  variables = random_variables(model, jnp.zeros((1, 32, 32, 3)), seed=2)
  path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_imagenet_finetuned.h5"
  rij.keras_io.save_h5(variables, "resnet50", path, format="legacy", include_head=True)
  c = __import__("configs.gradcam", fromlist=["get_config"]).get_config("demo,tiny,model_b=none")
  c.model_a.weights = str(path)
  plans = checks.model_plans(c)
  assert (plans[0]["preprocess"], plans[0]["info"]["num_classes"]) == ("caffe", 2)
  (created,) = study._create(plans, 2)
  np.testing.assert_array_equal(created["variables"]["params"]["predictions"]["kernel"],
                                variables["params"]["predictions"]["kernel"])


def test_images_of_the_runs_training_or_validation_set_are_refused(demo_data_dir, tmp_path):
  """Weights of a fine-tuning run (best/ beside its splits.json): the split's images listed in its
  train or validation set are left out and counted; all of them seen is a one-line error before
  anything is written; allow_seen_images keeps them."""
  from radimagenet_jax import checkpoints as checkpoint
  from radimagenet_jax.data import tfds_source
  from radimagenet_jax.explain import held_out, study
  model = rij.models.get_spec("resnet50").module_cls(num_classes=2)
  variables = random_variables(model, jnp.zeros((1, 32, 32, 3)), seed=3)
  run = tmp_path / "run"
  checkpoint.save_variables(run / "best", variables, model_name="resnet50", num_classes=2)
  raw = tfds_source.open_source("radimagenet_demo/lesion", "test", demo_data_dir, decode=False)
  ids = [held_out.record_id(raw[i], "test", i) for i in range(6)]
  c = __import__("configs.gradcam", fromlist=["get_config"]).get_config("demo,tiny,model_b=none")
  c.data_dir, c.build_dataset = demo_data_dir, False
  c.image_size, c.max_images, c.batch_size, c.num_overlays = 32, 6, 4, 0
  c.model_a.weights = str(run / "best")

  def splits(train, validation):
    (run / "splits.json").write_text(json.dumps({"train": train, "validation": validation,
                                                 "test": ["elsewhere"]}))

  splits(ids, [])                                     # a call on the fold's training images
  with pytest.raises(ValueError, match=r"all 6 images of radimagenet_demo/lesion\[test\] are in "
                     r"the training or validation set of .*splits.json.*allow_seen_images=True"):
    study.run(c, str(tmp_path / "refused"))
  assert not (tmp_path / "refused").exists()
  splits(ids[:3], ids[3:4])
  summary = study.run(c, str(tmp_path / "kept"))
  assert summary["held_out"]["n_refused"] == 4 and summary["n_images"] == 2
  rows = _read_csv(tmp_path / "kept" / "per_image.csv")
  assert [int(r["index"]) for r in rows] == [4, 5] and {r["id"] for r in rows}.isdisjoint(ids[:4])
  c.allow_seen_images = True
  summary = study.run(c, str(tmp_path / "allowed"))
  assert summary["n_images"] == 6 and summary["held_out"]["allowed"]


def test_sweep_mode_finds_finished_runs_or_says_what_is_missing(tmp_path):
  """--config.sweep takes a sweep (its runs/*) or one run; only finished runs with best/,
  splits.json and config.json count, and none is a one-line error naming what is needed."""
  from radimagenet_jax.explain import sweep_cam
  sweep = tmp_path / "sweep"
  for name, status, complete in (("a-fold0", "done", True), ("b-fold0", "failed", True),
                                 ("c-fold0", "done", False)):
    run = sweep / "runs" / name
    (run / "best").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": status, "init": name[0],
                                              "model": "resnet50"}))
    if complete:
      (run / "splits.json").write_text("{}")
      (run / "config.json").write_text("{}")
  assert [r["name"] for r in sweep_cam.find_runs(str(sweep))] == ["a-fold0"]
  assert [r["name"] for r in sweep_cam.find_runs(str(sweep / "runs" / "a-fold0"))] == ["a-fold0"]
  with pytest.raises(ValueError, match=r"no finished fine-tuning run \(run.json with status done, "
                     r"best/, splits.json, config.json\)"):
    sweep_cam.find_runs(str(sweep / "runs" / "c-fold0"))
