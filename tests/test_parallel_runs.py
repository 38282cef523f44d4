"""Runs batched in one compiled step (`--config.parallel_runs=K`) equal the same runs trained alone:
the vmapped step against `steps.train_step`, and whole sweeps with parallel_runs=K against
parallel_runs=1 (best epoch, predictions.csv, NaN in one run, kill and resume).

A small Keras-style CNN registered for these tests keeps compiles to seconds; it has what matters
here: BatchNorm layers that freeze, 3x3 and 1x1 convolutions, the paper's head with dropout.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from radimagenet_jax import checkpoints, distributed, models
from radimagenet_jax.finetune import freeze, parallel, scenarios, sweep_command
from radimagenet_jax.models import base, flops
from radimagenet_jax.train import optim, state as state_lib, steps, vmapped

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "finetune.py")
SIZE, BATCH = 32, 8


class TinyCNN(base.KerasApplication):
  spec_name = "tiny_cnn_test"
  keras_application = "TinyCNN"
  min_size, default_size, feature_layer = 16, 32, "conv3_out"
  bn_epsilon, bn_scale = 1e-3, True

  @staticmethod
  def backbone(L, x):
    x = L.input(x)
    x = L.conv(x, 8, 3, strides=2, name="conv1_conv")
    x = L.bn(x, name="conv1_bn")
    x = L.act(x, "relu", name="conv1_relu")
    x = L.conv(x, 8, 3, padding="same", name="conv2_conv")
    x = L.bn(x, name="conv2_bn")
    x = L.act(x, "relu", name="conv2_relu")
    x = L.conv(x, 16, 1, name="conv3_conv")
    x = L.bn(x, name="conv3_bn")
    return L.act(x, "relu", name="conv3_out")


@pytest.fixture(scope="module", autouse=True)
def tiny_model():
  base.register(TinyCNN)
  yield
  base._REGISTRY.pop(TinyCNN.spec_name, None)  # pylint: disable=protected-access


def _flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _adam(lr):
  return ml_collections.ConfigDict(dict(optimizer="adam", momentum=0.9, adam_epsilon=1e-7,
                                        weight_decay=0.0, learning_rate=lr, schedule="constant"))


# (freeze mode, learning rate, preprocessing): every difference a group may hold.
RUNS = (("all", 1e-3, "radimagenet"), ("head", 1e-2, "tf"), ("top3", 3e-3, "radimagenet"))


def _train_alone(variables, mode, lr, preprocess, batches_):
  spec = models.get_spec(TinyCNN.spec_name)
  mask = freeze.trainable_mask(spec.name, variables["params"], mode)
  # The model's own frozen_bn field: the alone reference does not share the engine's mechanism.
  model = spec.module_cls(num_classes=2, frozen_bn=freeze.frozen_bn_layers(spec.name, mask))
  mesh = distributed.make_mesh()
  c = _adam(lr)
  tx = optim.freeze(optim.create_optimizer(c, optim.create_learning_rate_fn(c, 10, 0)), mask)
  state = state_lib.create(model, tx, 0, SIZE, distributed.replicated(mesh), variables=variables)
  fn = steps.compile_train_step(model, tx, mesh, preprocess, mask)
  acc = jax.device_put(steps.init_train_metrics(), distributed.replicated(mesh))
  for b in batches_:
    state, acc = fn(state, acc, distributed.to_global(b, mesh))
  return mask, tx, jax.device_get(state)


def test_batched_step_equals_each_run_trained_alone():
  model, variables = models.create(TinyCNN.spec_name, num_classes=2, rng=jax.random.key(3))
  rng = np.random.default_rng(1)
  data = [{"image": rng.integers(0, 255, (BATCH, SIZE, SIZE, 3)).astype(np.uint8),
           "label": rng.integers(0, 2, BATCH).astype(np.int32)} for _ in range(4)]
  alone = [_train_alone(variables, mode, lr, pre, data) for mode, lr, pre in RUNS]

  mesh = distributed.make_mesh()
  rep = distributed.replicated(mesh)
  cfg = _adam(1e-3)
  tx = vmapped.optimizer(cfg, cfg.learning_rate, 10, 0)
  states = jax.device_put(vmapped.stack(
      [state_lib.create(model, tx, 0, SIZE, rep, variables=variables) for _ in RUNS]), rep)
  masks = [a[0] for a in alone]
  run_data = jax.device_put(vmapped.runs_data(
      masks, [lr for _, lr, _ in RUNS], variables["batch_stats"],
      [freeze.frozen_bn_layers(TinyCNN.spec_name, m) for m in masks]), rep)
  fn = vmapped.compile_train_step(model, cfg, (10, 0), tuple(p for *_, p in RUNS), mesh)
  acc = jax.device_put(vmapped.init_train_metrics(len(RUNS)), rep)
  bad = jax.device_put(np.full(len(RUNS), vmapped.NO_BAD_STEP, np.int32), rep)
  for b in data:
    states, acc, bad = fn(states, acc, bad, distributed.to_global(b, mesh), run_data)
  host = jax.device_get(states)
  assert (np.asarray(host.step) == len(data)).all()
  assert (np.asarray(bad) == vmapped.NO_BAD_STEP).all()
  before = _flat(variables["params"])
  for i, (mask, alone_tx, ref) in enumerate(alone):
    mine = jax.tree.map(lambda x, i=i: x[i], host)
    got, want, trains = _flat(mine.params), _flat(ref.params), _flat(mask)
    for k in want:
      if trains[k] and k.endswith("_conv/bias"):
        # A conv bias right before a training-mode BatchNorm has a zero gradient up to rounding
        # (the batch mean removes it), and Adam scales that noise to steps of size lr: its value
        # is rounding noise in both runs, bounded by lr per step.
        assert np.abs(got[k] - before[k]).max() <= RUNS[i][1] * len(data) * 1.01
      elif trains[k]:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=2e-6, err_msg=f"{RUNS[i]} {k}")
      else:  # frozen: bit-identical, and not moved
        np.testing.assert_array_equal(got[k], before[k], err_msg=f"{RUNS[i]} {k}")
        np.testing.assert_array_equal(want[k], before[k], err_msg=f"{RUNS[i]} {k}")
    got_bs, want_bs = _flat(mine.batch_stats), _flat(ref.batch_stats)
    for k in want_bs:
      # Running means contain those conv biases, at weight 1 - momentum per step.
      atol = 0.01 * 2 * RUNS[i][1] * len(data) if k.endswith("mean") else 1e-6
      np.testing.assert_allclose(got_bs[k], want_bs[k], rtol=1e-4, atol=atol, err_msg=k)
    # The optimizer state in the alone run's layout (checkpoints): the same values.
    as_alone = optim.to_frozen_state(mine.opt_state, alone_tx.init(ref.params))
    assert jax.tree.structure(as_alone) == jax.tree.structure(ref.opt_state)
    for a, b in zip(jax.tree.leaves(as_alone), jax.tree.leaves(ref.opt_state)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-7)
    back = optim.from_frozen_state(as_alone, mine.opt_state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(mine.opt_state)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name,wd", [("sgd", 1e-4), ("adam", 0.0), ("adamw", 1e-2)])
def test_optimizer_state_converts_between_the_alone_and_the_vmapped_layout(name, wd):
  """A vmapped run keeps the unmasked chain's state; its checkpoint holds `optim.freeze`'s. The
  conversion keeps every trainable entry, drops the frozen ones, and is the identity without a
  mask."""
  params = {"a": np.ones((2, 3), np.float32), "b": {"c": np.ones(4, np.float32),
                                                    "d": np.ones((3, 3), np.float32)}}
  mask = {"a": True, "b": {"c": False, "d": True}}
  c = ml_collections.ConfigDict(dict(optimizer=name, momentum=0.9, adam_epsilon=1e-7,
                                     weight_decay=wd, learning_rate=1e-3, schedule="constant"))
  full_tx = optim.create_optimizer(c, lambda _: 1e-3)
  full = jax.tree.map(lambda x: x + 1.5, full_tx.init(params))   # distinct values everywhere
  template = optim.freeze(full_tx, mask).init(params)
  alone = optim.to_frozen_state(full, template)
  assert jax.tree.structure(alone) == jax.tree.structure(template)
  n_full, n_alone = len(jax.tree.leaves(full)), len(jax.tree.leaves(alone))
  assert n_alone < n_full                                         # frozen entries dropped
  back = optim.from_frozen_state(alone, full_tx.init(params))
  want = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(full)[0]}
  for path, value in jax.tree_util.tree_flatten_with_path(back)[0]:
    key = jax.tree_util.keystr(path)
    # The frozen parameter's entries are zeros; every other entry is the full state's.
    np.testing.assert_array_equal(np.asarray(value), 0 if "['c']" in key else want[key], key)
  assert optim.to_frozen_state(full, full_tx.init(params)) is full   # freeze(tx, None) is tx
  assert optim.from_frozen_state(full, full) is full


def test_frozen_bn_as_engine_flags_is_the_models_frozen_bn_field():
  """The engine passes frozen BatchNorm layers as the `bn_frozen` collection for one run too
  (`one_run`): with numpy flags the step is decided while tracing, the same program and the same
  numbers as the model's `frozen_bn` field (the alone reference above)."""
  spec = models.get_spec(TinyCNN.spec_name)
  _, variables = models.create(spec.name, num_classes=2, rng=jax.random.key(3))
  mask = freeze.trainable_mask(spec.name, variables["params"], "top3")
  frozen = freeze.frozen_bn_layers(spec.name, mask)
  assert frozen and frozen != ("*",)    # some layers frozen, some training
  c = _adam(1e-3)
  tx = optim.freeze(optim.create_optimizer(c, optim.create_learning_rate_fn(c, 10, 0)), mask)
  state = state_lib.create(spec.module_cls(num_classes=2), tx, 0, SIZE, variables=variables)
  rng = np.random.default_rng(2)
  batch = {"image": rng.integers(0, 255, (BATCH, SIZE, SIZE, 3)).astype(np.uint8),
           "label": rng.integers(0, 2, BATCH).astype(np.int32)}
  field = functools.partial(steps.train_step, model=spec.module_cls(num_classes=2, frozen_bn=frozen),
                            tx=tx, preprocess_mode="tf", trainable=mask)
  flags = functools.partial(steps.train_step, model=spec.module_cls(num_classes=2), tx=tx,
                            preprocess_mode="tf", trainable=mask,
                            bn_frozen=steps.bn_frozen_flags(variables["batch_stats"], frozen))
  args = (state, steps.init_train_metrics(), batch)
  assert str(jax.make_jaxpr(field)(*args)) == str(jax.make_jaxpr(flags)(*args))
  a, b = jax.jit(field)(*args), jax.jit(flags)(*args)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_runs_group_by_everything_but_init_freeze_lr_and_preprocess():
  def config_of(spec):
    c = ml_collections.ConfigDict(dict(model=spec.model, init=spec.init, freeze=spec.freeze,
                                       learning_rate=spec.lr, fold=str(spec.fold),
                                       preprocess="auto", image_size=32, seed=0))
    if spec.init == "big":
      c.image_size = 64
    return c
  specs = scenarios.expand(["resnet50", "densenet121"], [("all", 1e-3), ("head", 1e-2)],
                           ["a", "b", "big"], folds=[0, 1])
  chunks = parallel.plan(specs, config_of, parallel_runs=3)
  assert sorted(s.name for c in chunks for s in c) == sorted(s.name for s in specs)
  assert all(1 <= len(c) <= 3 for c in chunks)
  for chunk in chunks:
    keys = {(s.model, s.fold, s.init == "big") for s in chunk}
    assert len(keys) == 1, chunk    # one architecture, fold and input size per chunk
  # inits a and b (same size) x 2 scenarios = 4 runs per (model, fold): chunks of 3 + 1.
  sizes = sorted(len(c) for c in chunks if c[0].init != "big")
  assert sizes == [1, 1, 1, 1, 3, 3, 3, 3]
  with pytest.raises(ValueError, match=r"config.parallel_runs=0: expected an integer >= 1"):
    parallel.check_parallel_runs(0)


def test_shards_of_a_batched_sweep_hold_whole_chunks_and_partition_the_runs():
  # The paper's BUSI sweep: 4 models x 24 scenarios' 6 per model x 2 inits x 5 folds = 240 runs,
  # 20 (model, fold) groups of 12.
  c = ml_collections.ConfigDict(__import__("runpy").run_path(CONFIG)["get_config"]("busi"))
  config_of = lambda s: sweep_command.run_config(c, s)  # noqa: E731
  everything = sweep_command.plan(c)[1]
  assert len(everything) == 240

  def names(chunks):
    return sorted(tuple(r.name for r in ch) for ch in chunks)

  def shards(k, n):
    c.parallel_runs = k
    parts = []
    for i in range(n):
      c.shard = f"{i}/{n}"
      parts.append(sweep_command.plan(c)[1])
    assert sorted(r.name for p in parts for r in p) == sorted(r.name for r in everything)
    return parts

  parts = shards(1, 4)  # one run at a time: every 4th run, as before
  assert parts == [scenarios.shard(everything, f"{i}/4") for i in range(4)]

  def cost(runs):
    return sum(flops.forward_flops(r.model, c.image_size) for r in runs)

  for k, n in ((12, 4), (16, 3), (8, 2), (5, 3)):
    chunks = parallel.plan(everything, config_of, k)
    parts = shards(k, n)
    owner = {r.name: i for i, p in enumerate(parts) for r in p}
    for chunk in chunks:  # no chunk split between shards
      assert len({owner[r.name] for r in chunk}) == 1, (k, n, chunk)
    for p in parts:  # the sweep re-plans a shard's runs into the same chunks
      mine = [ch for ch in chunks if owner[ch[0].name] == owner[p[0].name]]
      assert names(parallel.plan(p, config_of, k)) == names(mine), (k, n)
    # dealt by cost (forward FLOPs per image x runs): shards differ by at most one chunk's cost
    loads = [cost(p) for p in parts]
    assert max(loads) - min(loads) <= max(cost(ch) for ch in chunks), (k, n, loads)
  # K=12, 4 hosts: 5 whole groups (60 runs) each.
  assert [len(p) for p in shards(12, 4)] == [60] * 4
  # Two architectures whose groups alternate in plan order: dealt by run count (round robin),
  # one host would get both Inception-ResNet-v2 groups; by cost, each gets one of each.
  c.parallel_runs = 12
  pair = [r for m in ("inception_resnet_v2", "resnet50") for r in everything
          if r.model == m and r.fold == 0]
  pair += [r for m in ("inception_resnet_v2", "resnet50") for r in everything
           if r.model == m and r.fold == 1]
  assert [ch[0].model for ch in parallel.plan(pair, config_of, 12)] == [
      "inception_resnet_v2", "resnet50"] * 2
  halves = [parallel.shard(pair, config_of, 12, f"{i}/2") for i in range(2)]
  assert [sorted({r.model for r in h}) for h in halves] == [
      ["inception_resnet_v2", "resnet50"]] * 2
  assert cost(halves[0]) == cost(halves[1])


# ---- Whole sweeps: parallel_runs=K against parallel_runs=1 ----------------------------------------
# ("head" is in the step test above.) lr=inf: the parameters become NaN at the first update.
SCENARIOS = (scenarios.Scenario("all", 1e-3), scenarios.Scenario("top3", 1e-2),
             scenarios.Scenario("all", math.inf))


@pytest.fixture(scope="module")
def sweep_config(tmp_path_factory, demo_data_dir):
  root = tmp_path_factory.mktemp("parallel")
  _, v = models.create(TinyCNN.spec_name, num_classes=2, rng=jax.random.key(5))
  ckpt = str(root / "tiny_ckpt")
  checkpoints.save_variables(ckpt, v, model_name=TinyCNN.spec_name, num_classes=2,
                             extra_metadata={"preprocess": "tf"})
  c = ml_collections.ConfigDict(__import__("runpy").run_path(CONFIG)["get_config"]("tiny"))
  c.data_dir, c.compilation_cache_dir = demo_data_dir, str(root / "jax_cache")
  c.sweep, c.sweep_models, c.sweep_inits, c.sweep_folds = "parallel_test", TinyCNN.spec_name, \
      "tinyckpt,random", "0"
  c.inits.tinyckpt = {TinyCNN.spec_name: ckpt}
  c.num_train_steps, c.eval_every, c.eval_steps, c.log_every = 4, 2, 2, 2
  return c


@pytest.fixture(scope="module", autouse=True)
def preset():
  scenarios.PRESETS["parallel_test"] = {"models": (TinyCNN.spec_name,), "folds": (0,),
                                        "scenarios": SCENARIOS}
  yield
  scenarios.PRESETS.pop("parallel_test", None)


def _sweep(config, workdir, k, **overrides):
  c = ml_collections.ConfigDict(config.to_dict())
  c.parallel_runs = k
  c.update(overrides)
  return sweep_command.run(c, str(workdir))


def _outputs(workdir):
  rows = {r["run"]: r for r in csv.DictReader(open(os.path.join(workdir, "results.csv")))}
  out = {}
  for name, row in rows.items():
    run_dir = os.path.join(workdir, "runs", name)
    if row["status"] != "done":
      out[name] = (row["status"], row["error"].split(":")[0])
      continue
    preds = list(csv.DictReader(open(os.path.join(run_dir, "predictions.csv"))))
    run = json.load(open(os.path.join(run_dir, "run.json")))
    out[name] = ("done", run["best_step"], [p["id"] for p in preds],
                 np.array([[float(p["score_0"]), float(p["score_1"])] for p in preds]),
                 sorted(os.listdir(run_dir)))
  return out


@pytest.fixture(scope="module")
def alone_sweep(sweep_config, tmp_path_factory):
  work = tmp_path_factory.mktemp("alone")
  assert _sweep(sweep_config, work, 1) == 2       # the lr=inf runs fail, alone
  return _outputs(work)


def _assert_same(batched_out, alone_out):
  assert batched_out.keys() == alone_out.keys()
  for name, want in alone_out.items():
    got = batched_out[name]
    assert got[0] == want[0], (name, got[:2], want[:2])
    if want[0] != "done":
      assert got == want, name       # failed with the same error type (NonFiniteLossError)
      continue
    assert got[1] == want[1], f"{name}: best step {got[1]} batched, {want[1]} alone"
    assert got[2] == want[2] and got[4] == want[4], name
    # Scores agree to float rounding, amplified by Adam in one place: conv biases right before a
    # training-mode BatchNorm get a zero gradient up to rounding, which Adam turns into steps of
    # size lr (see the step test), and in inference mode those biases shift the outputs. With
    # `freeze=all` at lr 1e-3 that moves scores by up to ~6e-4 (measured); a run alone on another
    # device count differs from itself as much.
    np.testing.assert_allclose(got[3], want[3], atol=2e-3, err_msg=name)


def test_sweep_with_parallel_runs_equals_runs_alone_and_nan_stops_only_its_run(
    sweep_config, alone_sweep, tmp_path):
  assert _sweep(sweep_config, tmp_path, 3) == 2
  out = _outputs(tmp_path)
  _assert_same(out, alone_sweep)
  failed = [n for n, o in out.items() if o[0] != "done"]
  assert sorted(failed) == sorted(n for n in out if "lrinf" in n)
  for name in failed:   # no checkpoint of a non-finite state
    assert checkpoints.latest_step(os.path.join(tmp_path, "runs", name)) is None


def test_sharded_batched_sweep_equals_runs_alone(sweep_config, alone_sweep, tmp_path):
  # 6 runs in one group, K=3: each of 2 shards trains one whole chunk (one init's three runs, an
  # lr=inf one among them) into one workdir; the deal itself is tested on the BUSI plan above.
  for i in range(2):
    c = ml_collections.ConfigDict(sweep_config.to_dict())
    c.parallel_runs, c.shard = 3, f"{i}/2"
    assert len({r.init for r in sweep_command.plan(c)[1]}) == 1
  assert [_sweep(sweep_config, tmp_path, 3, shard=f"{i}/2") for i in range(2)] == [1, 1]
  out = _outputs(tmp_path)
  _assert_same(out, alone_sweep)


def test_killed_batched_sweep_resumes_to_the_uninterrupted_result(
    sweep_config, alone_sweep, tmp_path, monkeypatch):
  real = vmapped.compile_train_step
  calls = {"n": 0}

  def crashing(*args, **kwargs):
    fn = real(*args, **kwargs)
    def step(*a):
      calls["n"] += 1
      if calls["n"] == 3:           # after the checkpoint at step 2 (checkpoint_every=2)
        raise KeyboardInterrupt
      return fn(*a)
    return step

  monkeypatch.setattr(vmapped, "compile_train_step", crashing)
  with pytest.raises(KeyboardInterrupt):
    _sweep(sweep_config, tmp_path, 3, checkpoint_every=2)
  run_dirs = sorted(os.path.join(tmp_path, "runs", d) for d in os.listdir(tmp_path / "runs"))
  steps_now = {d: checkpoints.latest_step(d) for d in run_dirs}
  assert sorted(set(steps_now.values()), key=str) == [2, None], steps_now
  # One run loses its checkpoint: it restarts from scratch, apart from the group resuming at 2.
  resumed = [d for d, s in steps_now.items() if s == 2]
  shutil.rmtree(os.path.join(resumed[0], "checkpoints"))
  monkeypatch.setattr(vmapped, "compile_train_step", real)
  assert _sweep(sweep_config, tmp_path, 3, checkpoint_every=2) == 2
  _assert_same(_outputs(tmp_path), alone_sweep)
