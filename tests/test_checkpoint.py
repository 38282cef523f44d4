"""Checkpoint files: save_variables/load_variables (the `convert` output and training workdirs),
identity checks, and the grain iterator state stored in the same checkpoint."""
import os

import numpy as np
import pytest

from radimagenet_jax import checkpoints as ckpt_lib


def _variables(seed=0):
  rng = np.random.default_rng(seed)
  return {"params": {"conv1_conv": {"kernel": rng.normal(size=(7, 7, 3, 4)).astype(np.float32),
                                    "bias": rng.normal(size=(4,)).astype(np.float32)},
                     "predictions": {"kernel": rng.normal(size=(4, 2)).astype(np.float32)}},
          "batch_stats": {"conv1_bn": {"mean": rng.normal(size=(4,)).astype(np.float32),
                                       "var": rng.uniform(size=(4,)).astype(np.float32)}}}


def _assert_tree_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    if isinstance(a[key], dict):
      _assert_tree_equal(a[key], b[key])
    else:
      np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


def test_save_variables_round_trips_through_every_accepted_path(tmp_path):
  variables = _variables()
  step_dir = ckpt_lib.save_variables(tmp_path / "conv", variables, model_name="resnet50",
                                     num_classes=2, extra_metadata={"source": "x.h5"})
  for path in (tmp_path / "conv", tmp_path / "conv" / "checkpoints", step_dir):
    _assert_tree_equal(ckpt_lib.load_variables(path, "resnet50"), variables)
  meta = ckpt_lib.read_metadata(tmp_path / "conv")
  assert (meta["model_name"], meta["num_classes"], meta["source"]) == ("resnet50", 2, "x.h5")


def test_load_variables_of_another_model_names_both(tmp_path):
  ckpt_lib.save_variables(tmp_path, _variables(), model_name="resnet50", num_classes=2)
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match=r"model_name='resnet50'.*model_name='densenet121'"):
    ckpt_lib.load_variables(tmp_path, "densenet121")


def test_save_variables_refuses_to_overwrite_another_model(tmp_path):
  ckpt_lib.save_variables(tmp_path, _variables(0), model_name="resnet50", num_classes=2)
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="densenet121"):
    ckpt_lib.save_variables(tmp_path, _variables(1), model_name="densenet121", num_classes=2)
  _assert_tree_equal(ckpt_lib.load_variables(tmp_path), _variables(0))


def test_missing_or_empty_directory_errors_say_what_was_expected(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
    ckpt_lib.load_variables(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="holds no Orbax checkpoint"):
    ckpt_lib.load_variables(tmp_path)


def test_training_checkpoint_stores_grain_iterator_state(tmp_path):
  """save() + restore() bring back the variables, the optimizer part and the data position."""
  from radimagenet_jax.data import pipeline
  source = [{"image": np.full((8, 8), i, np.uint8), "label": i % 2} for i in range(40)]
  make = lambda: iter(pipeline.make_loader(source, batch_size=4, image_size=8, seed=3,
                                           preprocess_mode="unit"))
  it = make()
  for _ in range(3):
    next(it)
  variables = _variables()
  train = {"step": np.asarray(3, np.int32), "opt_state": {"mu": np.ones(3, np.float32)}}
  with ckpt_lib.manager(tmp_path, keep=2) as mngr:
    ckpt_lib.save(mngr, 3, variables=variables, train_state=train, data_iter=it,
                  metadata={"model_name": "resnet50", "num_classes": 2, "image_size": 8})
    mngr.wait_until_finished()
  expected_next = [next(it)["image"] for _ in range(2)]

  fresh = make()
  with ckpt_lib.manager(tmp_path, keep=2) as mngr:
    got_vars, got_train = ckpt_lib.restore(mngr, 3, variables=_variables(9), train_state={
        "step": np.asarray(0, np.int32), "opt_state": {"mu": np.zeros(3, np.float32)}}, data_iter=fresh)
  _assert_tree_equal(got_vars, variables)
  assert int(got_train["step"]) == 3 and np.all(np.asarray(got_train["opt_state"]["mu"]) == 1)
  for want in expected_next:
    np.testing.assert_array_equal(next(fresh)["image"], want)
  assert ckpt_lib.latest_step(tmp_path) == 3
  assert "process_0-of-1.json" in os.listdir(tmp_path / "checkpoints" / "3" / "data_iter")


def test_latest_step_lists_again_when_a_running_job_prunes_a_step_meanwhile(tmp_path, monkeypatch):
  """A reader polling a live workdir (an evaluation job, the multi-process tests) can see Orbax
  list a step folder that the writer's max_to_keep deletes before its metadata is read."""
  ckpt_lib.save_variables(tmp_path, _variables(), model_name="resnet50", num_classes=2)
  real, calls = ckpt_lib.manager, []

  def pruned_meanwhile(*args, **kwargs):
    calls.append(1)
    if len(calls) <= 2:
      raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "checkpoints" / "4"))
    return real(*args, **kwargs)

  monkeypatch.setattr(ckpt_lib, "manager", pruned_meanwhile)
  step = ckpt_lib.latest_step(tmp_path)
  assert step is not None and step == ckpt_lib.latest_step(tmp_path) and len(calls) == 4
  calls.clear()
  monkeypatch.setattr(ckpt_lib, "manager", lambda *a, **k: (_ for _ in ()).throw(
      FileNotFoundError("always gone")))
  with pytest.raises(FileNotFoundError, match="always gone"):  # not swallowed for ever
    ckpt_lib.latest_step(tmp_path)
