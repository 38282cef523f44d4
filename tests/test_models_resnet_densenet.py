"""ResNet50 and DenseNet121 against keras.applications (Keras 3, JAX backend) as the oracle.

Each model is compiled a handful of times per module (fixtures are module-scoped): inference with
all taps, training with all taps, the frozen-BN features and the bfloat16 features, at 64x64; the
224x224 parity test (slow) compiles once more.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import radimagenet_jax as rij
from tests import keras_oracle

MODELS = ("resnet50", "densenet121")
SIZE, BATCH = 64, 4
# docs/fidelity.md: layers without the pooling layer, notop parameters (with BN statistics), and
# trainable backbone parameters of the "top 10 layers" fine-tuning mode.
EXPECTED = {
    "resnet50": dict(layers=175, notop_params=23_587_712, top10_trainable=3_416_576),
    "densenet121": dict(layers=427, notop_params=7_037_504, top10_trainable=168_128),
}
# Layers Keras names itself (no name= in keras.applications), numbered per session.
AUTO_NAMED = {"InputLayer": "input_layer", "ZeroPadding2D": "zero_padding2d"}


def rel_err(a, b) -> float:
  """max |a - b| / max |b|: relative to the oracle's scale, so near-zero entries do not blow up."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _flax_variables(model, keras_model, name):
  """Init structure (no compile), backbone copied from keras by layer order, head zeros."""
  x = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), x)
  target = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                        {k: shapes[k] for k in ("params", "batch_stats")})
  return rij.models.merge_variables(target, keras_oracle.variables_from_keras(keras_model, name))


def _keras_run(keras_model, feature_layer, x, training):
  """(feature map, pooled) from keras; training=True also stores the updated moving statistics
  in the keras model, as an eager Keras call does. Jitted: eager Keras is slower than compiling."""
  import keras
  probe = keras.Model(keras_model.input,
                      [keras_model.get_layer(feature_layer).output, keras_model.output])
  trainable = [v.value for v in probe.trainable_variables]
  non_trainable = [v.value for v in probe.non_trainable_variables]
  run = jax.jit(lambda t, n, x: probe.stateless_call(t, n, x, training=training))
  (feats, pooled), non_trainable = run(trainable, non_trainable, x)
  for var, value in zip(probe.non_trainable_variables, non_trainable):
    var.assign(value)
  return np.asarray(feats), np.asarray(pooled)


@pytest.fixture(scope="module", params=MODELS)
def case(request):
  """One model: the keras oracle's outputs and ours, inference and training mode."""
  name = request.param
  spec = rij.models.get_spec(name)
  kmodel = keras_oracle.keras_model(name, size=SIZE)
  model = spec.module_cls(num_classes=2)
  variables = _flax_variables(model, kmodel, name)
  x = np.random.default_rng(1).normal(0, 1, (BATCH, SIZE, SIZE, 3)).astype(np.float32)

  keras_infer = _keras_run(kmodel, spec.feature_layer, x, training=False)
  keras_train = _keras_run(kmodel, spec.feature_layer, x, training=True)
  keras_stats = keras_oracle.variables_from_keras(kmodel, name)["batch_stats"]

  @jax.jit
  def infer(v, x):
    return model.apply(v, x, train=False, mutable=["intermediates"])

  @jax.jit
  def train(v, x):
    return model.apply(v, x, train=True, mutable=["intermediates", "batch_stats"],
                       rngs={"dropout": jax.random.key(0)})

  _, state = infer(variables, x)
  _, train_state = train(variables, x)
  return dict(name=name, spec=spec, kmodel=kmodel, model=model, variables=variables, x=x,
              keras_infer=keras_infer, keras_train=keras_train, keras_stats=keras_stats,
              taps=state["intermediates"]["layers"],
              train_taps=train_state["intermediates"]["layers"],
              train_stats=train_state["batch_stats"])


def test_layer_table_matches_keras_model_layers(case):
  """Names, kinds and weight shapes of keras_layers() equal keras model.layers (pooling='avg')."""
  table = rij.models.keras_layers(case["name"])
  klayers = case["kmodel"].layers
  assert len(table) == EXPECTED[case["name"]]["layers"] + 1 == len(klayers)
  assert table[-1].name == "avg_pool" and table[-1].kind == "GlobalAveragePooling2D"
  assert [l.kind for l in table] == [type(l).__name__ for l in klayers]
  for entry, klayer in zip(table, klayers):
    auto = AUTO_NAMED.get(entry.kind)
    if auto and re.fullmatch(auto + r"(_\d+)?", klayer.name):
      # Keras numbered this unnamed layer per session; ours is the fresh-session name.
      assert re.fullmatch(auto + r"(_1)?", entry.name), entry.name
    else:
      assert entry.name == klayer.name
  flat = traverse_util.flatten_dict(case["variables"])
  for entry, klayer in zip(table, klayers):
    ours = [tuple(flat[path].shape) for path in entry.params]
    assert ours == [tuple(w.shape) for w in klayer.weights], entry.name


def test_every_keras_layer_is_tapped_in_model_layers_order(case):
  # Pytree outputs sort dict keys, so read the tap order while tracing (no compile).
  order = []

  def trace(v, x):
    _, state = case["model"].apply(v, x, mutable=["intermediates"])
    order.extend(state["intermediates"]["layers"])
    return 0

  jax.eval_shape(trace, case["variables"], case["x"])
  assert order == [l.name for l in rij.models.keras_layers(case["name"])]


def test_notop_parameter_count_matches_fidelity_and_keras(case):
  flat = traverse_util.flatten_dict(case["variables"])
  notop = sum(int(np.prod(v.shape)) for path, v in flat.items() if path[1] != "predictions")
  assert notop == EXPECTED[case["name"]]["notop_params"] == case["kmodel"].count_params()


def test_top10_layers_trainable_parameters_match_fidelity_and_keras(case):
  flat = traverse_util.flatten_dict(case["variables"])
  top10 = rij.models.keras_layers(case["name"])[-10:]
  ours = sum(int(np.prod(flat[p].shape)) for l in top10 for p in l.params if p[0] == "params")
  keras_count = sum(int(np.prod(w.shape)) for l in case["kmodel"].layers[-10:]
                    for w in l.trainable_weights)
  assert ours == EXPECTED[case["name"]]["top10_trainable"] == keras_count


def test_inference_matches_keras(case):
  feats, pooled = case["keras_infer"]
  assert case["taps"][case["spec"].feature_layer].shape == feats.shape
  assert rel_err(case["taps"][case["spec"].feature_layer], feats) <= 1e-4
  assert rel_err(case["taps"]["avg_pool"], pooled) <= 1e-4


def test_training_mode_batch_statistics_match_keras(case):
  feats, pooled = case["keras_train"]
  assert rel_err(case["train_taps"][case["spec"].feature_layer], feats) <= 1e-4
  assert rel_err(case["train_taps"]["avg_pool"], pooled) <= 1e-4
  # Batch statistics really were used: training output differs from inference output.
  assert rel_err(case["keras_infer"][0], feats) > 1e-2


def test_moving_statistics_update_matches_keras(case):
  ours = traverse_util.flatten_dict(case["train_stats"])
  theirs = traverse_util.flatten_dict(case["keras_stats"])
  assert ours.keys() == theirs.keys()
  worst = max(rel_err(ours[k], theirs[k]) for k in theirs)
  assert worst <= 1e-4
  before = traverse_util.flatten_dict(case["variables"]["batch_stats"])
  assert max(rel_err(ours[k], before[k]) for k in before) > 1e-4  # they did move


def test_frozen_bn_trains_in_inference_mode(case):
  """frozen_bn=('*',): train=True uses and keeps the running statistics (Keras frozen layers)."""
  frozen = case["spec"].module_cls(num_classes=2, frozen_bn=("*",))
  feats, state = jax.jit(lambda v, x: frozen.apply(
      v, x, train=True, method="features", mutable=["batch_stats"]))(case["variables"], case["x"])
  expected = case["taps"][case["spec"].feature_layer]
  np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(expected))))
  for a, b in zip(jax.tree.leaves(state["batch_stats"]),
                  jax.tree.leaves(case["variables"]["batch_stats"])):
    np.testing.assert_array_equal(a, b)


def test_bfloat16_compute_stays_close_to_float32(case):
  model = case["spec"].module_cls(num_classes=2, dtype=jnp.bfloat16)
  feats = jax.jit(lambda v, x: model.apply(v, x, method="features"))(case["variables"], case["x"])
  assert feats.dtype == jnp.bfloat16
  assert jax.tree.leaves(case["variables"])[0].dtype == jnp.float32  # params stay float32
  assert rel_err(feats, case["keras_infer"][0]) <= 0.05  # observed ~0.01


@pytest.mark.parametrize("name", MODELS)
def test_input_below_minimum_size_raises(name):
  model = rij.models.get_spec(name).module_cls(num_classes=2)
  with pytest.raises(ValueError, match=r"31x31 is below the minimum 32x32"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 31, 31, 3))))
  with pytest.raises(ValueError, match=r"NHWC input with 3 channels"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64))))


def test_unknown_model_name_lists_valid_choices():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet51'.*densenet121.*resnet50"):
    rij.models.create("resnet51", num_classes=2)


def test_create_returns_model_and_trainable_variables():
  model, variables = rij.models.create("resnet50", num_classes=2)
  assert set(variables) == {"params", "batch_stats"}
  assert variables["params"]["predictions"]["kernel"].shape == (2048, 2)
  assert variables["params"]["conv5_block3_2_conv"]["kernel"].shape == (3, 3, 512, 512)
  assert variables["batch_stats"]["conv1_bn"]["var"].shape == (64,)
  spec = rij.models.get_spec("resnet50")
  assert (spec.min_size, spec.default_size, spec.feature_layer, spec.keras_application) == (
      32, 224, "conv5_block3_out", "ResNet50")
  spec = rij.models.get_spec("densenet121")
  assert (spec.min_size, spec.default_size, spec.feature_layer, spec.keras_application) == (
      32, 224, "relu", "DenseNet121")


def test_num_classes_0_is_a_features_only_model_end_to_end(tmp_path):
  """create(num_classes=0): no head parameters, the pooled features (B, 2048), equal to the mean of
  method="features"; weights with a classifier (a Keras file, a checkpoint) load without it."""
  model, variables = rij.models.create("resnet50", num_classes=0, rng=jax.random.key(1))
  assert "predictions" not in variables["params"] and "dropout" not in variables["params"]
  x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  pooled = model.apply(variables, x, train=False)
  fmap = model.apply(variables, x, method="features")
  assert pooled.shape == (3, 2048) and fmap.shape == (3, 1, 1, 2048)
  np.testing.assert_allclose(pooled, jnp.mean(fmap, axis=(1, 2)), rtol=1e-6, atol=1e-6)
  _, with_head = rij.models.create("resnet50", num_classes=2, rng=jax.random.key(1))
  path = str(tmp_path / "top.h5")
  rij.keras_io.save_h5(with_head, "resnet50", path, format="legacy", include_head=True)
  ckpt = rij.keras_io.convert(path, "resnet50", tmp_path / "ckpt")   # keeps the 2-class head
  for weights in (path, ckpt):
    _, loaded = rij.models.create("resnet50", num_classes=0, weights=weights)
    assert "predictions" not in loaded["params"]
    np.testing.assert_array_equal(model.apply(loaded, x, train=False), pooled)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_inference_matches_keras_at_224(name):
  spec = rij.models.get_spec(name)
  kmodel = keras_oracle.keras_model(name, size=224, seed=3)
  model = spec.module_cls(num_classes=2)
  variables = _flax_variables(model, kmodel, name)
  x = np.random.default_rng(2).normal(0, 1, (2, 224, 224, 3)).astype(np.float32)
  feats, pooled = _keras_run(kmodel, spec.feature_layer, x, training=False)
  ours = jax.jit(lambda v, x: model.apply(v, x, method="features"))(variables, x)
  assert ours.shape == feats.shape == (2, 7, 7, feats.shape[-1])
  assert rel_err(ours, feats) <= 1e-4
  assert rel_err(jnp.mean(ours, axis=(1, 2)), pooled) <= 1e-4
