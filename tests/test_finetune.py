"""The fine-tuning step: frozen parameters and BatchNorm statistics never move, the optimizer keeps
no state for them, `head` computes no backbone gradient, and the start-up weights (init)."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

import radimagenet_jax as rij
from radimagenet_jax import checkpoints, distributed
from radimagenet_jax.finetune import freeze, initial_weights as init_lib
from radimagenet_jax.train import optim, state as state_lib, steps

SIZE = 32


@pytest.fixture(scope="module")
def resnet():
  model, variables = rij.models.create("resnet50", num_classes=2, rng=jax.random.key(3))
  # Non-trivial BatchNorm statistics, so that "unchanged" is not "still at the init values".
  rng = np.random.default_rng(0)
  # (Small changes: larger mean shifts compound over 53 layers and silence every ReLU.)
  stats = {layer: {"mean": np.asarray(s["mean"]) + rng.normal(0, 0.02, s["mean"].shape).astype(
                       np.float32),
                   "var": np.asarray(s["var"]) * rng.uniform(0.9, 1.1, s["var"].shape).astype(
                       np.float32)}
           for layer, s in variables["batch_stats"].items()}
  return model, {"params": variables["params"], "batch_stats": stats}


def _config(**kw):
  c = ml_collections.ConfigDict(dict(optimizer="adam", momentum=0.9, adam_epsilon=1e-7,
                                     weight_decay=0.0, learning_rate=1e-2, schedule="constant"))
  c.update(kw)
  return c


def _train(model_name, variables, mode, n_steps=3):
  spec = rij.models.get_spec(model_name)
  mask = freeze.trainable_mask(model_name, variables["params"], mode)
  model = spec.module_cls(num_classes=2, frozen_bn=freeze.frozen_bn_layers(model_name, mask))
  mesh = distributed.make_mesh()
  tx = optim.freeze(optim.create_optimizer(_config(), lambda s: 1e-2), mask)
  state = state_lib.create(model, tx, 0, SIZE, distributed.replicated(mesh), variables=variables)
  fn = steps.compile_train_step(model, tx, mesh, "unit", mask)
  acc = jax.device_put(steps.init_train_metrics(), distributed.replicated(mesh))
  rng = np.random.default_rng(1)
  for _ in range(n_steps):
    batch = {"image": rng.integers(0, 255, (8, SIZE, SIZE, 3)).astype(np.uint8),
             "label": rng.integers(0, 2, 8).astype(np.int32)}
    state, acc = fn(state, acc, distributed.to_global(batch, mesh))
  return mask, jax.device_get(state)


def _flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.mark.parametrize("mode", ["top10", "head"])
def test_frozen_parameters_and_batchnorm_statistics_stay_bit_identical(resnet, mode):
  _, variables = resnet
  mask, state = _train("resnet50", variables, mode)
  before_p, after_p, trains = _flat(variables["params"]), _flat(state.params), _flat(mask)
  frozen = [k for k in before_p if not trains[k]]
  trainable = [k for k in before_p if trains[k]]
  assert frozen and trainable
  for k in frozen:
    np.testing.assert_array_equal(after_p[k], before_p[k], err_msg=k)
  # Every trainable parameter moved, except conv biases right before a BatchNorm in training mode,
  # whose gradient is zero up to rounding (the batch mean removes them).
  moved = {k for k in trainable if not np.array_equal(after_p[k], before_p[k])}
  assert {k for k in trainable if not k.endswith("_conv/bias")} <= moved
  # BatchNorm layers of frozen parameters run in inference mode: their statistics do not move.
  frozen_bn = freeze.frozen_bn_layers("resnet50", mask)
  bn_names = {k.split("/")[0] for k in _flat(variables["batch_stats"])}
  frozen_bn = bn_names if frozen_bn == ("*",) else set(frozen_bn)
  before_s, after_s = _flat(variables["batch_stats"]), _flat(state.batch_stats)
  for k in before_s:
    if k.split("/")[0] in frozen_bn:
      np.testing.assert_array_equal(after_s[k], before_s[k], err_msg=k)
    else:
      assert not np.array_equal(after_s[k], before_s[k]), k
  # No optimizer state for frozen parameters: Adam's two moments cover the trainable ones only.
  moments = sum(int(np.size(x)) for x in jax.tree.leaves(state.opt_state)
                if getattr(x, "ndim", 0) > 0)
  assert moments == 2 * freeze.count_trainable(variables["params"], mask)


def _ops(model_name, mode):
  """(convolutions, matrix products) in the lowered (not compiled) train step of ``mode``, and in
  the inference forward pass of the same model."""
  spec = rij.models.get_spec(model_name)
  params = jax.eval_shape(lambda: rij.models.init_variables(spec.module_cls(num_classes=2), None,
                                                            SIZE))
  mask = freeze.trainable_mask(model_name, params["params"], mode)
  model = spec.module_cls(num_classes=2, frozen_bn=freeze.frozen_bn_layers(model_name, mask))
  tx = optim.freeze(optax.adam(1e-3), mask)
  state = jax.eval_shape(lambda: state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params["params"], batch_stats=params["batch_stats"],
      opt_state=tx.init(params["params"]), rng=jax.random.key_data(jax.random.key(0))))
  batch = {"image": jax.ShapeDtypeStruct((2, SIZE, SIZE, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
  fn = jax.jit(lambda s, m, b: steps.train_step(s, m, b, model=model, tx=tx, trainable=mask))
  step = fn.lower(state, jax.eval_shape(steps.init_train_metrics), batch).as_text()
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
      params, batch["image"]).as_text()
  count = lambda text: (text.count("stablehlo.convolution"), text.count("stablehlo.dot_general"))
  return count(step), count(forward)


def test_head_mode_has_no_backbone_backward_pass():
  (head_conv, head_dot), (fwd_conv, fwd_dot) = _ops("resnet50", "head")
  assert head_conv == fwd_conv                  # the backbone's convolutions: forward only
  assert head_dot <= fwd_dot + 2                # + the head's kernel gradient (and its input's)
  (all_conv, all_dot), _ = _ops("resnet50", "all")
  assert all_conv + all_dot > 2.5 * (fwd_conv + fwd_dot)   # + grads of inputs and kernels


def test_init_from_keras_h5_loads_the_backbone_and_a_keras_initialised_head(tmp_path, resnet):
  _, variables = resnet
  path = str(tmp_path / "r50.weights.h5")
  rij.keras_io.save_h5(variables, "resnet50", path)
  config = rij.finetune.run._with(_base_config(), init=path)
  label, src = init_lib.resolve(config)
  loaded, info = init_lib.initial_variables(config, 2, label, src)
  for k, v in _flat(variables["params"]).items():
    if not k.startswith("predictions/"):
      np.testing.assert_array_equal(_flat(loaded["params"])[k], v)
  kernel = np.asarray(loaded["params"]["predictions"]["kernel"])
  limit = np.sqrt(6 / sum(kernel.shape))                     # glorot_uniform's bound
  assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.5 * limit
  assert not np.asarray(loaded["params"]["predictions"]["bias"]).any()
  assert info["init_source"] == path


def test_checkpoint_with_another_class_count_gives_backbone_and_fresh_head(tmp_path, caplog):
  model, variables = rij.models.create("resnet50", num_classes=16, rng=jax.random.key(5))
  checkpoints.save_variables(tmp_path / "ck", variables, model_name="resnet50", num_classes=16)
  config = rij.finetune.run._with(_base_config(), init=str(tmp_path / "ck"))
  with caplog.at_level("WARNING"):
    loaded, info = init_lib.initial_variables(config, 2, *init_lib.resolve(config))
  assert "16 classes" in caplog.text and "head is fresh" in caplog.text
  assert loaded["params"]["predictions"]["kernel"].shape == (2048, 2)
  np.testing.assert_array_equal(loaded["params"]["conv1_conv"]["kernel"],
                                variables["params"]["conv1_conv"]["kernel"])
  assert "16 classes" in info["note"]


def test_weights_of_another_architecture_are_an_error_naming_both(tmp_path):
  _, variables = rij.models.create("densenet121", num_classes=2)
  checkpoints.save_variables(tmp_path / "d121", variables, model_name="densenet121",
                             num_classes=2)
  config = rij.finetune.run._with(_base_config(), init=str(tmp_path / "d121"))
  with pytest.raises(ValueError, match=r"densenet121 weights, but config.model is resnet50"):
    init_lib.initial_variables(config, 2, *init_lib.resolve(config))


def _base_config():
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "finetune.py")
  spec = importlib.util.spec_from_file_location("finetune_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny,init=random")
