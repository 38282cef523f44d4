"""InceptionV3 and Inception-ResNet-v2: the Flax ports against keras.applications (Keras 3, JAX).

The oracle is the keras.applications model itself, built with random weights and randomised
BatchNorm statistics (tests/keras_oracle.py). Each model is built and compiled once per module
(module-scoped fixtures): the layer-table tests and the parity tests share them.
"""
import os
import re

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import radimagenet_jax as rij
from radimagenet_jax.models.keras_graph import KerasGraph
from tests import keras_oracle

# 107 is the smallest input whose last feature map is 2x2 rather than 1x1: with a 1x1 map and a
# small batch, training-mode BatchNorm normalises a handful of values per channel and turns float32
# rounding differences (1e-7) into output differences of several percent.
SIZE = 107
BATCH = 4
TOL = 1e-4
# Training-mode BatchNorm at random init is chaotic: measured against a float64 run, rounding
# differences grow ~1.08x per layer through InceptionV3, so two correct float32 implementations
# end up 2e-4 apart. Moving every BatchNorm beta up by this much keeps most ReLUs open, which
# makes the network well conditioned (errors 2e-5) without changing what is being compared.
BETA_SHIFT = 1.0

# docs/fidelity.md: layers of the include_top=False, pooling=None model; notop parameters with BN
# statistics; trainable backbone parameters of layers[-10:] of the pooling='avg' model.
EXPECTED = {
    "inception_v3": dict(layers=311, params=21_802_784, top10=192),
    "inception_resnet_v2": dict(layers=780, params=54_336_736, top10=4_130_592),
}
MODELS = sorted(EXPECTED)
STABLE_KERAS_NAMES = {
    "inception_v3": {f"mixed{i}" for i in range(11)} | {"mixed9_0", "mixed9_1"},
    "inception_resnet_v2": (
        {"mixed_5b", "mixed_6a", "mixed_7a", "conv_7b", "conv_7b_bn", "conv_7b_ac"}
        | {f"block35_{i}_{s}" for i in range(1, 11) for s in ("mixed", "conv", "ac")}
        | {f"block17_{i}_{s}" for i in range(1, 21) for s in ("mixed", "conv", "ac")}
        | {f"block8_{i}_{s}" for i in range(1, 11) for s in ("mixed", "conv")}
        | {f"block8_{i}_ac" for i in range(1, 10)}),
}


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def make_runner(model, feature_layer):
  """One jitted function: (features, avg_pool) in inference mode and in training mode (batch
  statistics, plus the updated batch_stats). One compile per model and input shape."""

  def run(variables, x):
    outs = {}
    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    taps = state["intermediates"]["layers"]
    outs["infer"] = (taps[feature_layer], taps["avg_pool"])
    _, state = model.apply(variables, x, train=True, mutable=["intermediates", "batch_stats"],
                           rngs={"dropout": jax.random.key(0)})
    taps = state["intermediates"]["layers"]
    outs["train"] = (taps[feature_layer], taps["avg_pool"])
    outs["batch_stats"] = state["batch_stats"]
    return outs

  return jax.jit(run)


def keras_outputs(kmodel, name, x):
  """Keras (features, avg pool) in inference mode, then in training mode; the training call
  updates the Keras moving statistics, which are returned as Flax batch_stats."""
  import keras
  feature_layer = rij.models.get_spec(name).feature_layer
  probe = keras.Model(kmodel.input, [kmodel.get_layer(feature_layer).output, kmodel.output])
  infer = [np.asarray(t) for t in probe(x, training=False)]
  train = [np.asarray(t) for t in probe(x, training=True)]
  stats = keras_oracle.variables_from_keras(kmodel, name)["batch_stats"]
  return {"infer": infer, "train": train, "batch_stats": stats}


def conditioned_keras_model(name, size, seed=0):
  """keras_oracle's model with every BatchNorm beta shifted by BETA_SHIFT (see above)."""
  kmodel = keras_oracle.keras_model(name, size, seed=seed)
  for layer in kmodel.layers:
    if type(layer).__name__ == "BatchNormalization":
      beta, *stats = layer.get_weights()  # scale=False: no gamma
      layer.set_weights([beta + BETA_SHIFT, *stats])
  return kmodel


def flax_variables(kmodel, name, num_classes):
  """The Keras backbone's variables plus a random Dense head (the notop model has none); no
  model.init, which would cost one more compile of the whole network."""
  variables = keras_oracle.variables_from_keras(kmodel, name)
  channels = kmodel.output.shape[-1]
  rng = np.random.default_rng(0)
  variables["params"]["predictions"] = {
      "kernel": rng.normal(0, 0.05, (channels, num_classes)).astype("float32"),
      "bias": np.zeros(num_classes, "float32")}
  return variables


@pytest.fixture(scope="module", params=MODELS)
def case(request):
  """Keras model, copied Flax variables, and both sides' outputs on one random batch."""
  name = request.param
  spec = rij.models.get_spec(name)
  kmodel = conditioned_keras_model(name, SIZE)
  variables = flax_variables(kmodel, name, num_classes=3)
  x = np.random.default_rng(1).normal(0, 1, (BATCH, SIZE, SIZE, 3)).astype("float32")
  model = spec.module_cls(num_classes=3)
  flax_out = jax.device_get(make_runner(model, spec.feature_layer)(variables, x))
  keras_out = keras_outputs(kmodel, name, x)  # after Flax: its training call updates kmodel
  return dict(name=name, spec=spec, kmodel=kmodel, model=model, variables=variables,
              flax=flax_out, keras=keras_out)


def test_layer_table_follows_keras_model_layers(case):
  table = rij.models.keras_layers(case["name"])
  kmodel = case["kmodel"]
  assert len(table) - 1 == EXPECTED[case["name"]]["layers"]  # minus the pooling='avg' layer
  assert [l.kind for l in table] == [type(l).__name__ for l in kmodel.layers]
  flat = traverse_util.flatten_dict(case["variables"])
  for entry, klayer in zip(table, kmodel.layers):
    flax_shapes = [tuple(flat[path].shape) for path in entry.params]
    assert flax_shapes == [tuple(w.shape) for w in klayer.weights], (entry.name, klayer.name)
  # Where Keras's names are stable (not auto-numbered), ours are the same, at the same index.
  for i, klayer in enumerate(kmodel.layers):
    if klayer.name in STABLE_KERAS_NAMES[case["name"]]:
      assert table[i].name == klayer.name
  assert {l.name for l in kmodel.layers} >= STABLE_KERAS_NAMES[case["name"]]


def test_keras_auto_numbering_follows_our_source_order(case):
  """Keras numbers unnamed layers (conv2d_57 ...) in creation order; ours are created in the same
  order, so a file's auto-numbered names map onto our stable names by sorting (README)."""
  table = rij.models.keras_layers(case["name"])
  recorder = KerasGraph(bn_scale=False)
  case["spec"].module_cls.backbone(recorder, None)
  creation = [l.name for l in recorder.table.layers]
  for prefix in ("conv2d", "batch_normalization", "activation"):
    pairs = [(k.name, ours.name) for k, ours in zip(case["kmodel"].layers, table)
             if re.fullmatch(prefix + r"(_\d+)?", k.name)]
    assert len(pairs) > 90
    by_keras_number = [ours for k, ours in sorted(pairs, key=lambda p: _auto_number(p[0]))]
    names = {ours for _, ours in pairs}
    assert by_keras_number == [n for n in creation if n in names]


def _auto_number(keras_name):
  tail = keras_name.rsplit("_", 1)[-1]
  return int(tail) if tail.isdigit() else 0


def test_parameter_counts_match_keras(case):
  backbone = {k: v for k, v in case["variables"].items()}
  backbone["params"] = {k: v for k, v in backbone["params"].items() if k != "predictions"}
  count = sum(np.size(v) for v in jax.tree_util.tree_leaves(backbone))
  assert count == EXPECTED[case["name"]]["params"] == case["kmodel"].count_params()


def test_top10_layers_trainable_parameters(case):
  table = rij.models.keras_layers(case["name"])
  flat = traverse_util.flatten_dict(case["variables"])
  ours = sum(np.size(flat[p]) for l in table[-10:] for p in l.params if p[0] == "params")
  keras_count = sum(int(np.prod(w.shape)) for l in case["kmodel"].layers[-10:]
                    for w in l.trainable_weights)
  assert ours == keras_count == EXPECTED[case["name"]]["top10"]


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_outputs_match_keras(case, mode):
  (f_ours, a_ours), (f_keras, a_keras) = case["flax"][mode], case["keras"][mode]
  assert f_ours.shape == f_keras.shape
  assert rel_err(f_ours, f_keras) <= TOL
  assert rel_err(a_ours, a_keras) <= TOL


def test_training_updates_batch_stats_like_keras(case):
  ours = traverse_util.flatten_dict(case["flax"]["batch_stats"])
  keras_stats = traverse_util.flatten_dict(case["keras"]["batch_stats"])
  assert ours.keys() == keras_stats.keys()
  worst = max(rel_err(ours[k], keras_stats[k]) for k in ours)
  assert worst <= TOL
  before = traverse_util.flatten_dict(case["variables"]["batch_stats"])
  assert any(not np.allclose(before[k], ours[k]) for k in ours)  # statistics did move


@pytest.mark.parametrize("name", MODELS)
def test_input_below_minimum_size_is_rejected(name):
  model = rij.models.get_spec(name).module_cls()
  with pytest.raises(ValueError, match="minimum 75x75"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.zeros((1, 74, 74, 3)))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_outputs_match_keras_at_299(name):
  spec = rij.models.get_spec(name)
  kmodel = conditioned_keras_model(name, 299, seed=2)
  variables = flax_variables(kmodel, name, num_classes=2)
  model = spec.module_cls(num_classes=2)
  x = np.random.default_rng(3).normal(0, 1, (2, 299, 299, 3)).astype("float32")
  ours = jax.device_get(make_runner(model, spec.feature_layer)(variables, x))
  theirs = keras_outputs(kmodel, name, x)
  assert ours["infer"][0].shape == (2, 8, 8, 2048 if name == "inception_v3" else 1536)
  for mode in ("infer", "train"):
    assert rel_err(ours[mode][0], theirs[mode][0]) <= TOL
    assert rel_err(ours[mode][1], theirs[mode][1]) <= TOL


def test_keras_order_reproduces_keras_on_a_branching_graph():
  import keras
  from radimagenet_jax.models.keras_graph import keras_order
  graph = {"input_layer": (), "a": ("input_layer",), "b1": ("a",), "b2": ("b1",), "c": ("a",),
           "m": ("c", "b2", "a"), "out": ("m",)}
  tensors = {"input_layer": keras.Input((8, 8, 3), name="input_layer")}
  for name in ["a", "b1", "b2", "c", "m", "out"]:
    ins = [tensors[i] for i in graph[name]]
    layer = (keras.layers.Concatenate(name=name) if len(ins) > 1
             else keras.layers.Conv2D(4, 1, name=name))
    tensors[name] = layer(ins if len(ins) > 1 else ins[0])
  kmodel = keras.Model(tensors["input_layer"], tensors["out"])
  expected = [l.name for l in kmodel.layers]
  assert expected != list(graph)  # creation order is not Keras's order here
  assert keras_order(graph, "out") == expected
