"""Freeze modes against Keras (layer.trainable on keras.applications models) as the oracle.

Parameters come from ``jax.eval_shape`` of the model's init (the same tree ``rij.models.create``
returns, without compiling); the Keras models are built once per module (weights=None).
"""
from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import radimagenet_jax as rij
from radimagenet_jax.finetune import freeze

MODELS = {"resnet50": 32, "densenet121": 32, "inception_v3": 75, "inception_resnet_v2": 75}
KERAS_APPS = {"resnet50": "ResNet50", "densenet121": "DenseNet121",
              "inception_v3": "InceptionV3", "inception_resnet_v2": "InceptionResNetV2"}
# docs/fidelity.md: trainable backbone parameters of the paper's "top 10 layers" mode.
FIDELITY_TOP10 = {"resnet50": 3_416_576, "densenet121": 168_128, "inception_v3": 192,
                  "inception_resnet_v2": 4_130_592}
HEAD_PARAMS = {"resnet50": 2048 * 2 + 2, "densenet121": 1024 * 2 + 2, "inception_v3": 2048 * 2 + 2,
               "inception_resnet_v2": 1536 * 2 + 2}


@functools.lru_cache(maxsize=None)
def params_of(name: str):
  spec = rij.models.get_spec(name)
  model = spec.module_cls(num_classes=2)
  x = jax.ShapeDtypeStruct((1, MODELS[name], MODELS[name], 3), jnp.float32)
  key = jax.random.key(0)
  return jax.eval_shape(lambda x: model.init({"params": key, "dropout": key}, x), x)["params"]


@functools.lru_cache(maxsize=None)
def keras_model(name: str):
  import keras
  size = MODELS[name]
  return getattr(keras.applications, KERAS_APPS[name])(
      weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3))


def keras_trainable(name: str, n_top: int) -> tuple[int, list[int]]:
  """(trainable parameter count, indices of frozen BatchNorm layers), layers[-n_top:] trainable."""
  model = keras_model(name)
  layers = model.layers
  for i, layer in enumerate(layers):
    layer.trainable = i >= len(layers) - n_top
  count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
  frozen_bn = [i for i, l in enumerate(layers)
               if type(l).__name__ == "BatchNormalization" and not l.trainable]
  return count, frozen_bn


def backbone_trainable(name: str, mode: str) -> int:
  params = params_of(name)
  return freeze.count_trainable(params, freeze.trainable_mask(name, params, mode)) - (
      0 if mode in ("all",) else HEAD_PARAMS[name])


@pytest.mark.parametrize("name", list(MODELS))
def test_top10_matches_fidelity_and_keras(name):
  params = params_of(name)
  mask = freeze.trainable_mask(name, params, "top10")
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  assert mask["predictions"] == {"kernel": True, "bias": True}
  ours = freeze.count_trainable(params, mask) - HEAD_PARAMS[name]
  assert ours == FIDELITY_TOP10[name] == keras_trainable(name, 10)[0]
  info = freeze.describe(name, params, "top10")
  assert info["trainable_backbone_params"] == FIDELITY_TOP10[name]
  assert info["trainable_params"] == FIDELITY_TOP10[name] + HEAD_PARAMS[name]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("n_top", [1, 3, 40])
def test_top_n_matches_keras(name, n_top):
  assert backbone_trainable(name, f"top{n_top}") == keras_trainable(name, n_top)[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_all_and_head(name):
  params = params_of(name)
  keras_all, _ = keras_trainable(name, len(keras_model(name).layers))
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert backbone_trainable(name, "all") == total == keras_all + HEAD_PARAMS[name]
  head = freeze.trainable_mask(name, params, "head")
  trains = {layer for layer, vs in head.items() if any(vs.values())}
  assert trains == {"predictions"}
  assert freeze.count_trainable(params, head) == HEAD_PARAMS[name]
  assert freeze.frozen_bn_layers(name, head) == ("*",)
  assert freeze.frozen_bn_layers(name, freeze.trainable_mask(name, params, "all")) == ()
  # top0 is the head; top<all layers> is everything.
  assert freeze.trainable_mask(name, params, "top0") == head
  n = len(rij.models.keras_layers(name))
  assert freeze.count_trainable(params, freeze.trainable_mask(name, params, f"top{n}")) == total


@pytest.mark.parametrize("name", list(MODELS))
def test_frozen_bn_layers_match_keras(name):
  table = rij.models.keras_layers(name)
  mask = freeze.trainable_mask(name, params_of(name), "top10")
  _, keras_frozen = keras_trainable(name, 10)
  expected = tuple(l.name for l in table[:-10] if l.kind == "BatchNormalization")
  assert freeze.frozen_bn_layers(name, mask) == expected
  assert [i for i, l in enumerate(table) if l.name in expected] == keras_frozen


def test_rules_select_by_regex():
  name = "resnet50"
  params = params_of(name)
  mode = r"rules:^predictions/=train;^conv5_block3_=train;^(?!predictions/|conv5_block3_)=freeze"
  mask = freeze.trainable_mask(name, params, mode)
  flat = dict(zip(freeze._paths(params), jax.tree.leaves(mask)))
  for path, trains in flat.items():
    assert trains == bool(re.match(r"predictions/|conv5_block3_", path)), path
  assert flat["conv5_block3_3_bn/scale"] and not flat["conv5_block2_3_bn/scale"]
  # Only BN scales train: BN layers with a trainable scale run in training mode.
  only_scale = r"rules:_bn/scale$=train;^predictions/=train;_bn/bias$|_conv/=freeze"
  mask = freeze.trainable_mask(name, params, only_scale)
  assert freeze.frozen_bn_layers(name, mask) == ()


def test_rules_must_cover_every_parameter_exactly_once():
  params = params_of("resnet50")
  with pytest.raises(ValueError, match=r"parameter 'conv1_conv/kernel' matches no rule"):
    freeze.trainable_mask("resnet50", params, "rules:^predictions/=train")
  with pytest.raises(ValueError, match=r"'conv1_conv/kernel' matches 2 rules \(conv=train, "
                                       r"\.=freeze\)"):
    freeze.trainable_mask("resnet50", params, "rules:conv=train;.=freeze")
  for bad in ("rules:conv", "rules:conv=maybe", "rules:(=train", "rules:", "rules:=train"):
    with pytest.raises(ValueError, match="freeze"):
      freeze.check_mode(bad)


def test_unknown_mode_and_wrong_model():
  params = params_of("resnet50")
  for bad in ("top", "top-1", "freeze_all", "Top10", 10):
    with pytest.raises(ValueError, match=r"all, head, top<N>"):
      freeze.trainable_mask("resnet50", params, bad)
  with pytest.raises(ValueError, match="resnet50 has 176 Keras layers"):
    freeze.trainable_mask("resnet50", params, "top177")
  with pytest.raises(ValueError, match="not in the Keras layer table of 'densenet121'"):
    freeze.trainable_mask("densenet121", params, "all")


def test_describe_counts():
  name = "inception_v3"
  params = params_of(name)
  info = freeze.describe(name, params, "top10")
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  n_bn = sum(l.kind == "BatchNormalization" for l in rij.models.keras_layers(name))
  assert info == {"mode": "top10", "trainable_params": 192 + HEAD_PARAMS[name],
                  "total_params": total, "trainable_backbone_params": 192,
                  "total_backbone_params": total - HEAD_PARAMS[name],
                  "trainable_layers": 2, "frozen_bn_layers": n_bn - 1}
