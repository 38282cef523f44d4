"""Training: sharded step equivalence, exact resume, NaN stop and config/workdir errors.

A tiny BatchNorm+Dropout CNN and an in-memory source stand in for ResNet50 and the demo dataset, so
these tests exercise the loop itself in seconds; tests/test_cli.py runs the real ResNet50 on the
real demo data end to end.
"""
import json
import math
import os
import sys
import types

import flax.linen as nn
import jax
import numpy as np
import pytest

from radimagenet_jax import distributed
from radimagenet_jax.models import registry
from radimagenet_jax import checkpoints as ckpt_lib
from radimagenet_jax import pretrain as pretrain_lib
from radimagenet_jax.train import loop, optim, state as state_lib, steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import pretrain  # noqa: E402  (configs/pretrain.py)

CLASSES = ("ct_abd", "mr_brain", "us_thyroid")


class TinyCNN(nn.Module):
  """Conv -> BatchNorm -> ReLU -> GAP -> Dropout -> Dense: the parts of ResNet50 that matter to
  the loop (batch statistics, dropout rng, a classifier head)."""
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: object = None
  frozen_bn: tuple = ()
  spec_name = "tiny_cnn"
  min_size, default_size, feature_layer, keras_application = 8, 16, "conv", ""
  layer_table = classmethod(lambda cls: [])

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), (2, 2), name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x).mean((1, 2)))
    return nn.Dense(self.num_classes, name="predictions")(x)


class TinyCNNWide(TinyCNN):
  spec_name = "tiny_cnn_wide"


class _Source(list):
  """A list of TFDS-like records with the `dataset_info` a tfds data source carries."""
  dataset_info = types.SimpleNamespace(
      features={"label": types.SimpleNamespace(names=list(CLASSES))})


def _fake_open(config, split):
  # Class-dependent brightness so that something can be learned.
  rng = np.random.default_rng(0 if split == "train" else 1)
  n = 96 if split == "train" else 20
  records = []
  for i in range(n):
    label = i % len(CLASSES)
    image = rng.integers(0, 80, (20, 20), dtype=np.uint8) + np.uint8(60 * label)
    records.append({"image": image, "label": label})
  return _Source(records)


@pytest.fixture
def tiny_setup(monkeypatch):
  """Registers the tiny models and the in-memory dataset for the duration of one test."""
  registry._ensure_loaded()
  for cls in (TinyCNN, TinyCNNWide):
    monkeypatch.setitem(registry._REGISTRY, cls.spec_name, cls)
  monkeypatch.setattr(pretrain_lib, "_open", _fake_open)


def _config(**overrides):
  c = pretrain.get_config("tiny,model=tiny_cnn")
  c.image_size, c.num_train_steps, c.checkpoint_every, c.log_every = 16, 6, 2, 2
  c.augment = "paper"     # random augmentation must resume exactly too
  c.update(overrides)
  return c


def _latest_params(workdir):
  return ckpt_lib.load_variables(workdir)["params"]


def _latest_variables(workdir):
  return ckpt_lib.load_variables(workdir)


# ---- The sharded step --------------------------------------------------------------------------

def test_train_step_on_1_and_8_devices_gives_same_loss_params_and_batch_stats():
  assert jax.device_count() == 8
  # SGD, not Adam: the conv bias before BatchNorm has a zero gradient up to rounding, which Adam's
  # normalisation would blow up to +-learning_rate in either direction.
  config = _config(optimizer="sgd", learning_rate=0.1)
  model = TinyCNN(num_classes=3)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 10, 1))
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(8, 16, 16, 3)).astype(np.float32),
              "label": rng.integers(0, 3, 8).astype(np.int32)} for _ in range(3)]
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = distributed.make_mesh(devices)
    state = state_lib.create(model, tx, 0, 16, distributed.replicated(mesh))
    acc = jax.device_put(steps.init_train_metrics(), distributed.replicated(mesh))
    step_fn = steps.compile_train_step(model, tx, mesh)
    for batch in batches:
      global_batch = distributed.to_global(batch, mesh)
      assert len(global_batch["image"].addressable_shards) == len(devices)
      state, acc = step_fn(state, acc, global_batch)
    results.append(jax.device_get((state.params, state.batch_stats, acc)))
  (p1, bs1, m1), (p8, bs8, m8) = results
  np.testing.assert_allclose(m1["loss_sum"], m8["loss_sum"], rtol=1e-5)
  assert m1["correct1"] == m8["correct1"] and m1["count"] == m8["count"] == 24
  for a, b in zip(jax.tree.leaves((p1, bs1)), jax.tree.leaves((p8, bs8))):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  # BatchNorm statistics over the GLOBAL batch: with 1 example per device, per-device statistics
  # would give a zero variance estimate; the momentum-0.9 running var must have moved from 1.
  assert np.all(np.abs(bs8["bn"]["var"] - 1.0) > 1e-3)


def test_learning_rate_schedule_warms_up_then_decays_to_zero():
  c = _config(learning_rate=0.5, schedule="cosine")
  fn = optim.create_learning_rate_fn(c, num_train_steps=110, warmup_steps=10)
  np.testing.assert_allclose([fn(0), fn(5), fn(10), fn(60), fn(110)],
                             [0.0, 0.25, 0.5, 0.25, 0.0], atol=1e-6)


def test_bn_bias_correction_recovers_the_average_of_the_batch_statistics():
  m, steps_ = 0.99, 30
  rng = np.random.default_rng(0)
  batch_means = rng.normal(3.0, 0.1, (steps_, 4))
  batch_vars = rng.uniform(0.5, 2.0, (steps_, 4))
  mean, var = np.zeros(4), np.ones(4)          # Keras initial running statistics
  for bm, bv in zip(batch_means, batch_vars):
    mean, var = m * mean + (1 - m) * bm, m * var + (1 - m) * bv
  weights = (1 - m) * m ** np.arange(steps_ - 1, -1, -1)
  expected_mean = weights @ batch_means / weights.sum()
  expected_var = weights @ batch_vars / weights.sum()
  out = state_lib.bn_bias_corrected({"bn": {"mean": mean, "var": var}}, steps_, m)
  np.testing.assert_allclose(out["bn"]["mean"], expected_mean, rtol=1e-10)
  np.testing.assert_allclose(out["bn"]["var"], expected_var, rtol=1e-10)
  # Long runs: unchanged.
  assert state_lib.bn_bias_corrected({"bn": {"mean": mean}}, 5000, m)["bn"]["mean"] is mean


def _at_batch(monkeypatch, n, action):
  """Calls ``action()`` when the loop makes its n-th batch global; returns the original to_global."""
  calls = {"n": 0}
  to_global = distributed.to_global

  def hooked(batch, mesh):
    calls["n"] += 1
    if calls["n"] == n:
      action()
    return to_global(batch, mesh)

  monkeypatch.setattr(distributed, "to_global", hooked)
  return to_global


# ---- Resume --------------------------------------------------------------------------------------

def test_interrupted_and_resumed_run_ends_with_identical_params(tiny_setup, tmp_path, monkeypatch):
  config = _config()
  pretrain_lib.train_and_evaluate(config, str(tmp_path / "straight"))

  def interrupt():
    raise KeyboardInterrupt("simulated preemption")

  to_global = _at_batch(monkeypatch, 5, interrupt)
  with pytest.raises(KeyboardInterrupt):
    pretrain_lib.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert ckpt_lib.latest_step(tmp_path / "resumed") == 4
  monkeypatch.setattr(distributed, "to_global", to_global)
  summary = pretrain_lib.train_and_evaluate(config, str(tmp_path / "resumed"))

  assert summary["step"] == 6 == ckpt_lib.latest_step(tmp_path / "resumed")
  straight_vars = _latest_variables(tmp_path / "straight")
  resumed_vars = _latest_variables(tmp_path / "resumed")
  for a, b in zip(jax.tree.leaves(straight_vars), jax.tree.leaves(resumed_vars)):
    np.testing.assert_array_equal(a, b)     # params AND BatchNorm running statistics
  straight = straight_vars["params"]
  # Something was learned from step 0 (guards against comparing two untouched inits).
  init = jax.device_get(state_lib.create(TinyCNN(num_classes=3), optim.create_optimizer(
      config, lambda s: 0.0), config.seed, 16).params)
  assert not np.allclose(init["predictions"]["kernel"], straight["predictions"]["kernel"])
  # keep_checkpoints=2: only the two newest steps remain.
  assert sorted(os.listdir(tmp_path / "straight" / "checkpoints")) == ["4", "6"]


# ---- Bad input -----------------------------------------------------------------------------------

def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tiny_setup, tmp_path):
  config = _config(optimizer="sgd", learning_rate=1e30, schedule="constant", warmup_steps=0,
                   warmup_epochs=0.0, checkpoint_every=1, log_every=100, augment="none")
  with pytest.raises(loop.NonFiniteLossError, match=r"NaN/Inf at step 2\b.*checkpoint \(step 1\)"):
    pretrain_lib.train_and_evaluate(config, str(tmp_path))
  assert ckpt_lib.latest_step(tmp_path) == 1
  assert all(np.isfinite(a).all() for a in jax.tree.leaves(_latest_params(tmp_path)))


def test_workdir_with_another_models_checkpoint_is_refused_and_left_untouched(tiny_setup,
                                                                              tmp_path):
  pretrain_lib.train_and_evaluate(_config(num_train_steps=2), str(tmp_path))
  before = {p: os.stat(os.path.join(r, p)).st_mtime_ns
            for r, _, files in os.walk(tmp_path) for p in files}
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match=r"model_name='tiny_cnn'.*model_name='tiny_cnn_wide'"):
    pretrain_lib.train_and_evaluate(_config(model="tiny_cnn_wide"), str(tmp_path))
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r"image_size: checkpoint has 16, "
                     r"requested 24"):
    pretrain_lib.train_and_evaluate(_config(image_size=24), str(tmp_path))
  after = {p: os.stat(os.path.join(r, p)).st_mtime_ns
           for r, _, files in os.walk(tmp_path) for p in files}
  assert after == before
  assert json.load(open(tmp_path / "config.json"))["model"] == "tiny_cnn"


@pytest.mark.parametrize("key, value, expected", [
    ("model", "resnet51", r"Unknown model 'resnet51'; valid choices: .*resnet50"),
    ("preprocess", "zscore", r"config.preprocess='zscore' is not valid; choices: .*radimagenet"),
    ("optimizer", "lamb", r"choices: sgd, adam, adamw"),
    ("dtype", "float16", r"choices: float32, bfloat16"),
])
def test_unknown_choice_is_an_error_listing_valid_choices(tiny_setup, tmp_path, key, value,
                                                           expected):
  with pytest.raises(ValueError, match=expected):
    pretrain_lib.train_and_evaluate(_config(**{key: value}), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_unknown_config_key_is_an_error_listing_valid_keys(tmp_path):
  config = _config()
  config.learning_rat = 0.1
  with pytest.raises(ValueError, match=r"unknown keys \['learning_rat'\]; valid keys: .*"
                     r"learning_rate"):
    pretrain_lib.train_and_evaluate(config, str(tmp_path))


def test_config_variants_combine():
  c = pretrain.get_config("demo,model=densenet121")
  assert (c.model, c.dataset, c.image_size) == ("densenet121", "radimagenet_demo/pretrain", 64)
  r = pretrain.get_config("radimagenet")
  assert (r.image_size, r.batch_size, r.num_classes) == (224, 512, 165)
  with pytest.raises(ValueError, match="valid variants: demo, radimagenet, tiny"):
    pretrain.get_config("demo,tiniest")
  pretrain_lib.validate_config(c)


@pytest.mark.parametrize("arg", ["demo", "radimagenet", "tiny"])
def test_every_pretrain_variant_names_an_existing_builder_config(arg):
  from radimagenet_jax.data import build
  config = pretrain.get_config(arg)
  name, builder_config = build.parse_name(config.dataset)
  cls = build.builder_class(name)
  valid = [c.name for c in cls.BUILDER_CONFIGS]
  assert builder_config in valid, (config.dataset, valid)


# ---- What a run never loses, and errors before anything is written (issue #11) ---------------------

def test_sigterm_saves_a_checkpoint_at_the_next_step_and_resume_is_exact(tiny_setup, tmp_path,
                                                                         monkeypatch):
  import signal
  from radimagenet_jax.train import preemption
  config = _config()
  pretrain_lib.train_and_evaluate(config, str(tmp_path / "straight"))
  # As SLURM would; the handler only sets a flag.
  to_global = _at_batch(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
  with pytest.raises(preemption.Preempted, match=r"stopped by SIGTERM at step 3; checkpoint saved"):
    pretrain_lib.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert ckpt_lib.latest_step(tmp_path / "resumed") == 3   # not a multiple of checkpoint_every
  monkeypatch.setattr(distributed, "to_global", to_global)
  pretrain_lib.train_and_evaluate(config, str(tmp_path / "resumed"))
  for a, b in zip(jax.tree.leaves(_latest_variables(tmp_path / "straight")),
                  jax.tree.leaves(_latest_variables(tmp_path / "resumed"))):
    np.testing.assert_array_equal(a, b)


def test_keep_checkpoints_zero_keeps_every_checkpoint(tiny_setup, tmp_path):
  pretrain_lib.train_and_evaluate(_config(keep_checkpoints=0), str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["2", "4", "6"]


def test_a_checkpoint_is_never_written_from_non_finite_parameters(tiny_setup, tmp_path):
  # The loss of step 1 is finite (computed before the update); the update makes the weights
  # infinite. The old guard checked only that loss and kept this state as "the last good one".
  config = _config(optimizer="sgd", learning_rate=float("inf"), schedule="constant",
                   warmup_steps=0, warmup_epochs=0.0, checkpoint_every=1, augment="none")
  with pytest.raises(loop.NonFiniteLossError, match=r"parameters became NaN/Inf by step 1; no "
                     r"checkpoint written. There is no good checkpoint"):
    pretrain_lib.train_and_evaluate(config, str(tmp_path))
  assert ckpt_lib.latest_step(tmp_path) is None


@pytest.mark.parametrize("overrides, expected", [
    ({"learning_rate": -1e-3}, r"config.learning_rate=-0.001 must be positive"),
    ({"eval_batch_size": 12}, r"config.eval_batch_size=12 must be a multiple of the device count 8"),
    ({"image_size": 4}, r"config.image_size=4 is below the minimum input size 8 of tiny_cnn"),
    ({"num_classes": 2}, r"config.num_classes=2 is smaller than the 3 classes"),
])
def test_bad_sizes_and_rates_fail_before_anything_is_written(tiny_setup, tmp_path, overrides,
                                                              expected):
  with pytest.raises(ValueError, match=expected):
    pretrain_lib.train_and_evaluate(_config(**overrides), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_resume_with_another_optimizer_names_the_fields_and_overwrites_nothing(tiny_setup,
                                                                               tmp_path):
  pretrain_lib.train_and_evaluate(_config(num_train_steps=2), str(tmp_path))
  saved = open(tmp_path / "config.json").read()
  with pytest.raises(ValueError, match=r"another config \(optimizer: saved 'adam', now 'sgd'.*"
                     r"Nothing was overwritten"):
    pretrain_lib.train_and_evaluate(_config(num_train_steps=4, optimizer="sgd"), str(tmp_path))
  assert open(tmp_path / "config.json").read() == saved
  # Fields that do not change what is trained may change: this resumes to step 4.
  summary = pretrain_lib.train_and_evaluate(_config(num_train_steps=4, log_every=1), str(tmp_path))
  assert summary["step"] == 4


def test_workdir_that_is_a_file_read_only_or_a_url_is_one_line(tiny_setup, tmp_path, monkeypatch):
  (tmp_path / "file").write_text("x")
  with pytest.raises(FileExistsError, match=r"is a file; expected a directory"):
    pretrain_lib.train_and_evaluate(_config(), str(tmp_path / "file"))
  if os.geteuid() != 0:  # root writes anywhere
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match=r"is not writable"):
      pretrain_lib.train_and_evaluate(_config(), str(ro / "run"))
  # A bucket URL would have become ./gs:/bucket/run (os.path.abspath); it is refused instead.
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r"--workdir=gs://bucket/run: a URL; expected a directory "
                     r"path.*mount the bucket"):
    pretrain_lib.train_and_evaluate(_config(), "gs://bucket/run")
  assert not (tmp_path / "gs:").exists()


def test_non_finite_metrics_are_written_as_null(tmp_path):
  from radimagenet_jax.train import writers
  w = writers.MetricWriter(str(tmp_path))
  w.write(1, "train", {"loss": float("nan"), "top1": 0.5})
  w.close()
  line = json.loads(open(tmp_path / "metrics.jsonl").read())   # strict JSON parses
  assert line["loss"] is None and line["top1"] == 0.5


@pytest.mark.parametrize("n, local_batch, count", [(58, 4, 2), (17, 3, 4), (5, 4, 2), (0, 2, 2)])
def test_process_rows_put_a_one_process_runs_batch_k_into_global_batch_k(n, local_batch, count):
  from radimagenet_jax.train import eval_batches
  source = list(range(n))
  views = [list(eval_batches.ProcessRows(source, local_batch, i, count)) for i in range(count)]
  # Brute force: global batch k as the sharded step assembles it, process 0's rows first.
  chunks = [[v[b * local_batch:(b + 1) * local_batch] for b in range(math.ceil(n / (
      local_batch * count)))] for v in views]
  for k in range(math.ceil(n / (local_batch * count))):
    assembled = [r for i in range(count) for r in chunks[i][k]]
    assert assembled == source[k * local_batch * count:(k + 1) * local_batch * count], k
  assert sorted(r for v in views for r in v) == source   # every example read once, by one process
