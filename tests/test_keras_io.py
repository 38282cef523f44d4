"""Keras weight files <-> Flax variables (radimagenet_jax.keras_io), with Keras 3 as the oracle.

For every registered model: the keras.applications model (random weights, randomised BatchNorm
statistics) is saved in every format Keras writes, plus the Keras 2 layouts, which Keras 3 cannot
write and which are synthesised here with h5py by rewriting a Keras 3 legacy file into the Keras 2
layout (`:0` weight-name suffixes, keras_version 2.x; the official RadImageNet files are Keras 2 full
models, Keras's ImageNet files Keras 2 weights-only files). Loaded here, every format must give
exactly the weights Keras holds, and the Flax backbone the Keras outputs (max rel. err 1e-4).
"""
import functools
import json
import logging
import os
import shutil

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import radimagenet_jax as rij
from radimagenet_jax import cli, keras_io
from radimagenet_jax.keras_io import h5file
from radimagenet_jax.keras_io import load as keras_load
from tests import keras_oracle

MODELS = rij.models.names()
SIZES = {"resnet50": 32, "densenet121": 32, "inception_v3": 75, "inception_resnet_v2": 75}
FORMATS = ("keras3", "keras3-model", "keras3-weights", "keras2-model", "keras2-weights")


# ---------------------------------------------------------------------------------------------
# Writing every file layout.

def _copy_attrs(src, dst, suffix=False):
  for k, v in src.attrs.items():
    if suffix and k.startswith("weight_names"):
      v = np.asarray([(w.decode() if isinstance(w, bytes) else w).encode() + b":0" for w in v])
    dst.attrs[k] = v


def _copy_group(src, dst, suffix):
  """Copies a legacy layer group; with suffix=True renames datasets `kernel` -> `kernel:0`."""
  for key, item in src.items():
    if isinstance(item, h5py.Group):
      g = dst.create_group(key)
      _copy_attrs(item, g, suffix)
      _copy_group(item, g, suffix)
    else:
      dst.create_dataset(key + (":0" if suffix else ""), data=item[()])


def write_legacy_variant(keras3_model_h5, dst, keras2: bool, weights_only: bool):
  """Rewrites a Keras 3 `model.save('x.h5')` file into one of the legacy layouts:
  keras2 -> Keras 2 naming (`conv1_conv/kernel:0`, keras_version 2.6.0, backend tensorflow);
  weights_only -> the `save_weights` layout (layer groups and `layer_names` at the root)."""
  with h5py.File(keras3_model_h5, "r") as src, h5py.File(dst, "w") as out:
    mw = src["model_weights"]
    root = out if weights_only else out.create_group("model_weights")
    if not weights_only:
      for k, v in src.attrs.items():
        out.attrs[k] = v
    _copy_attrs(mw, root, keras2)
    _copy_group(mw, root, keras2)
    if keras2:
      root.attrs["keras_version"] = b"2.6.0"
      root.attrs["backend"] = b"tensorflow"
  return dst


def write_all_formats(km, directory, stem):
  """{format: path} of one keras model saved in all five layouts."""
  paths = {"keras3": os.path.join(directory, f"{stem}.weights.h5"),
           "keras3-model": os.path.join(directory, f"{stem}_k3.h5")}
  km.save_weights(paths["keras3"])
  km.save(paths["keras3-model"])
  paths["keras3-weights"] = write_legacy_variant(
      paths["keras3-model"], os.path.join(directory, f"{stem}_k3w.h5"), False, True)
  paths["keras2-model"] = write_legacy_variant(
      paths["keras3-model"], os.path.join(directory, f"{stem}_k2.h5"), True, False)
  paths["keras2-weights"] = write_legacy_variant(
      paths["keras3-model"], os.path.join(directory, f"{stem}_k2w.h5"), True, True)
  return paths


def _max_rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _assert_same_tree(a, b):
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg="/".join(k))


# ---------------------------------------------------------------------------------------------
# Layout parsing on a tiny hand-made Keras model (independent of the four architectures).

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  import keras
  keras.utils.set_random_seed(1)
  inp = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, name="c1")(inp)
  x = keras.layers.BatchNormalization(scale=False, name="b1")(x)
  x = keras.layers.Activation("relu")(x)
  x = keras.layers.Conv2D(5, 1, use_bias=False, name="c2")(x)
  x = keras.layers.BatchNormalization(name="b2")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  x = keras.layers.Dense(2, name="predictions")(x)
  km = keras.Model(inp, x)
  paths = write_all_formats(km, str(tmp_path_factory.mktemp("tiny")), "tiny")
  # The stand-in of a model table: the weighted layers with their Flax paths and shapes.
  expected = [("c1", "Conv2D", [(("params", "c1", "kernel"), (3, 3, 3, 4)),
                                (("params", "c1", "bias"), (4,))]),
              ("b1", "BatchNormalization", [(("params", "b1", "bias"), (4,)),
                                            (("batch_stats", "b1", "mean"), (4,)),
                                            (("batch_stats", "b1", "var"), (4,))]),
              ("c2", "Conv2D", [(("params", "c2", "kernel"), (1, 1, 4, 5))]),
              ("b2", "BatchNormalization", [(("params", "b2", "scale"), (5,)),
                                            (("params", "b2", "bias"), (5,)),
                                            (("batch_stats", "b2", "mean"), (5,)),
                                            (("batch_stats", "b2", "var"), (5,))])]
  return km, paths, expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_layout_parses_to_keras_weights_in_order(tiny, fmt):
  km, paths, expected = tiny
  with h5py.File(paths[fmt], "r") as f:
    contents = h5file._parse(f, paths[fmt])
    assert contents.format == fmt
    pairs, top = keras_load._match(contents, "tiny", expected)
    got = [np.asarray(d[()]) for _, d in pairs]
    assert [l.name for l in top] == ["predictions"]
  want = [w for name, ws in keras_oracle.keras_weight_lists(km) if name != "predictions" for w in ws]
  assert len(got) == len(want) == 10
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


def test_keras_archive_is_read_through_its_weights_file(tiny, tmp_path):
  km, paths, expected = tiny
  km.save(tmp_path / "tiny.keras")
  with h5file._open(tmp_path / "tiny.keras") as f, h5py.File(paths["keras3"], "r") as g:
    a, _ = keras_load._match(h5file._parse(f, "tiny.keras"), "tiny", expected)
    b, _ = keras_load._match(h5file._parse(g, "tiny.weights.h5"), "tiny", expected)
    for (pa, da), (pb, db) in zip(a, b):
      assert pa == pb
      np.testing.assert_array_equal(da[()], db[()])


def test_shape_mismatch_names_file_layer_and_both_shapes(tiny):
  _, paths, expected = tiny
  wrong = [expected[0], expected[1],
           ("c2", "Conv2D", [(("params", "c2", "kernel"), (1, 1, 4, 6))]), expected[3]]
  for fmt in ("keras3", "keras2-model"):
    with h5py.File(paths[fmt], "r") as f, pytest.raises(ValueError) as e:
      keras_load._match(h5file._parse(f, paths[fmt]), "tiny", wrong)
    msg = str(e.value)
    assert paths[fmt] in msg and "'c2'" in msg and "(1, 1, 4, 5)" in msg and "(1, 1, 4, 6)" in msg


def test_chunked_attributes_read_like_keras(tmp_path):
  # IRV2's layer_names exceed the 64 KB HDF5 header limit; Keras splits them into chunks.
  from keras.src.legacy.saving import legacy_h5_format
  names = [f"a_rather_long_layer_name_number_{i:05d}" * 3 for i in range(1200)]
  with h5py.File(tmp_path / "a.h5", "w") as f:
    h5file._write_attr_list(f, "layer_names", names)
    assert "layer_names" not in f.attrs and "layer_names0" in f.attrs
    assert legacy_h5_format.load_attributes_from_hdf5_group(f, "layer_names") == names
    assert h5file._read_attr_list(f, "layer_names") == names


# ---------------------------------------------------------------------------------------------
# The four models.

_KERAS = {}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
  """name -> (keras model, {format: path}); built once per model for the whole module."""
  def get(name):
    if name not in _KERAS:
      km = keras_oracle.keras_model(name, SIZES[name])
      d = str(tmp_path_factory.mktemp(name))
      _KERAS[name] = (km, write_all_formats(km, d, name))
    return _KERAS[name]
  yield get
  _KERAS.clear()


def _inputs(name, n=2, seed=0):
  s = SIZES[name]
  return np.random.default_rng(seed).normal(0, 1, (n, s, s, 3)).astype("float32")


@functools.lru_cache(maxsize=None)
def _flax_pooled_fn(name):
  # Jitted once per model and reused: one XLA compile is faster than op-by-op dispatch.
  model = rij.models.get_spec(name).module_cls()
  return jax.jit(lambda v, x: jnp.mean(model.apply(v, x, train=False, method="features"),
                                       axis=(1, 2)))


def _flax_pooled(name, variables, x):
  """The Flax backbone's output with Keras's pooling='avg'."""
  return np.asarray(_flax_pooled_fn(name)(variables, jnp.asarray(x)))


@pytest.mark.parametrize("name", MODELS)
def test_all_formats_load_exactly_and_match_keras_outputs(model_files, name):
  km, paths = model_files(name)
  oracle = keras_oracle.variables_from_keras(km, name)
  for fmt in FORMATS:
    _assert_same_tree(keras_io.load_h5(paths[fmt], name), oracle)
  # The official RadImageNet layout, run through the Flax backbone: same outputs as Keras.
  variables = keras_io.load_h5(paths["keras2-model"], name)
  x = _inputs(name)
  assert _max_rel_err(_flax_pooled(name, variables, x), km(x, training=False)) <= 1e-4


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("fmt", ["weights.h5", "legacy"])
def test_save_h5_round_trips_through_keras_applications(model_files, tmp_path, name, fmt):
  km, paths = model_files(name)
  # Different weights than the keras model holds, of the same scale: the loaded ones reversed
  # along the last axis (scaling them instead overflows IRV2's 40 residual blocks).
  v = jax.tree.map(lambda a: np.flip(np.asarray(a), -1).copy(), keras_io.load_h5(paths["keras3"], name))
  path = str(tmp_path / ("ours.weights.h5" if fmt == "weights.h5" else "ours.h5"))
  keras_io.save_h5(v, name, path, format=fmt)
  try:
    km.load_weights(path)
    _assert_same_tree(keras_oracle.variables_from_keras(km, name), v)
    if fmt == "weights.h5":  # the same weights give the same outputs; one forward pass suffices
      x = _inputs(name, seed=1)
      assert _max_rel_err(_flax_pooled(name, v, x), km(x, training=False)) <= 1e-4
  finally:
    km.load_weights(paths["keras3"])  # the module-scoped model is shared


def test_file_with_top_loads_backbone_and_says_so(tmp_path, caplog):
  name = "resnet50"
  km = keras_oracle.keras_model(name, SIZES[name], include_top=True, classes=3, seed=2)
  oracle = keras_oracle.variables_from_keras(km, name)
  for path in (str(tmp_path / "top.weights.h5"), str(tmp_path / "top.h5")):
    (km.save_weights if path.endswith(".weights.h5") else km.save)(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="radimagenet_jax.keras_io"):
      _assert_same_tree(keras_io.load_h5(path, name), oracle)
    assert "predictions" in caplog.text and "skipped the top" in caplog.text
    assert "predictions [(2048, 3), (3,)]" in keras_io.describe(path)


def test_head_written_with_include_head_loads_into_keras_fine_tuning_model(model_files, tmp_path):
  import keras
  name = "resnet50"
  km, paths = model_files(name)
  backbone = jax.tree.map(lambda a: np.flip(np.asarray(a), -1).copy(),
                          keras_io.load_h5(paths["keras3"], name))
  rng = np.random.default_rng(3)
  head = {"kernel": rng.normal(0, 0.1, (2048, 2)).astype("float32"),
          "bias": rng.normal(0, 0.1, (2,)).astype("float32")}
  variables = {"params": {**backbone["params"], "predictions": head},
               "batch_stats": backbone["batch_stats"]}
  # The official fine-tuning model: backbone (pooling='avg') + Dropout + Dense(2).
  x = keras.layers.Dropout(0.5)(km.output)
  ft = keras.Model(km.input, keras.layers.Dense(2, name="predictions")(x))
  try:
    for path in (str(tmp_path / "ft.weights.h5"), str(tmp_path / "ft.h5")):
      keras_io.save_h5(variables, name, path, include_head=True,
                       format="weights.h5" if path.endswith(".weights.h5") else "legacy")
      ft.load_weights(path)
      for got, want in zip(ft.get_layer("predictions").get_weights(), (head["kernel"], head["bias"])):
        np.testing.assert_array_equal(got, want)
      _assert_same_tree(keras_oracle.variables_from_keras(km, name), backbone)
      km.load_weights(paths["keras3"])
  finally:
    km.load_weights(paths["keras3"])


@pytest.mark.parametrize("frozen", [False, True])
def test_backbone_nested_as_one_layer_loads_in_every_format(model_files, tmp_path, frozen):
  """A fine-tuning model built around the backbone as ONE layer (``Model(inp, Dense(base(inp)))``,
  or a Sequential) stores all the backbone's weights in one group, trainable ones first: with the
  backbone partly frozen (the paper's top10 scenarios) that is not Keras's layer order. Full-model
  files and .weights.h5 / .keras load exactly; a weights-only legacy file of a partly frozen nested
  model (no layer order recorded) is refused with the reason."""
  import keras
  name = "resnet50"
  base, _ = model_files(name)
  try:
    for layer in base.layers[:-10] if frozen else []:
      layer.trainable = False
    inp = keras.Input(base.input_shape[1:])
    ft = keras.Model(inp, keras.layers.Dense(2, name="predictions")(
        keras.layers.Dropout(0.5)(base(inp))))
    paths = write_all_formats(ft, str(tmp_path), "nested")
    paths["keras3-archive"] = str(tmp_path / "nested.keras")
    ft.save(paths["keras3-archive"])
    seq = keras.Sequential([keras.Input(base.input_shape[1:]), base, keras.layers.Dense(2)])
    paths["sequential"] = str(tmp_path / "sequential.h5")
    seq.save(paths["sequential"])
  finally:
    for layer in base.layers:
      layer.trainable = True
  oracle = keras_oracle.variables_from_keras(base, name)
  x = _inputs(name, seed=2)
  want_logits = np.asarray(ft(x, training=False))
  for fmt, path in paths.items():
    if frozen and fmt in ("keras3-weights", "keras2-weights"):
      with pytest.raises(ValueError, match="nested as layer 'resnet50'.*partly frozen"):
        keras_io.load_h5(path, name, load_head=True)
      continue
    v = keras_io.load_h5(path, name, load_head=True)
    head = v["params"].pop("predictions")
    _assert_same_tree(v, oracle)
    dense = (seq if fmt == "sequential" else ft).layers[-1].get_weights()
    np.testing.assert_array_equal(head["kernel"], dense[0])
    np.testing.assert_array_equal(head["bias"], dense[1])
    if fmt == "keras2-model":   # the weights in the Flax model give Keras's logits
      logits = _flax_pooled(name, v, x) @ head["kernel"] + head["bias"]
      assert _max_rel_err(logits, want_logits) <= 1e-4
  described = keras_io.describe(paths["keras2-model"])
  assert "matches model:   resnet50" in described
  assert "a model nested as layer 'resnet50')" in described
  # a config that leaves out one of the nested model's weighted layers: a damaged file
  damaged = shutil.copy(paths["keras2-model"], tmp_path / "damaged.h5")
  with h5py.File(damaged, "a") as f:
    config = json.loads(f.attrs["model_config"])
    inner = next(l for l in config["config"]["layers"] if l["class_name"] == "Functional")
    inner["config"]["layers"] = [l for l in inner["config"]["layers"]
                                 if l["config"]["name"] != "conv1_conv"]
    f.attrs["model_config"] = json.dumps(config).encode()
  with pytest.raises(ValueError, match=r"damaged.h5: the nested model 'resnet50' holds weights of "
                                       r"layers its config does not list \(conv1_conv\)"):
    keras_io.load_h5(str(damaged), name)


# ---------------------------------------------------------------------------------------------
# Bad input.

def test_file_of_another_architecture_is_refused_with_first_mismatch(model_files):
  # DenseNet's first conv has no bias, ResNet50's has one: the very first weighted layer differs.
  path = model_files("densenet121")[1]["keras2-model"]
  with pytest.raises(ValueError) as e:
    keras_io.load_h5(path, "resnet50")
  msg = str(e.value)
  assert path in msg and "weighted layer #0" in msg, msg
  assert "'conv1_conv' has weight shapes [(7, 7, 3, 64)]" in msg and "'conv1_conv' (Conv2D) expects [(7, 7, 3, 64), (64,)]" in msg
  # IRV2 begins like InceptionV3 (same stem shapes): the first difference comes later.
  path = model_files("inception_v3")[1]["keras3"]
  with pytest.raises(ValueError) as e:
    keras_io.load_h5(path, "inception_resnet_v2")
  assert path in str(e.value) and "expects" in str(e.value) and "shapes" in str(e.value)


def test_shape_mismatch_in_a_model_file(model_files, tmp_path):
  name = "resnet50"
  src = model_files(name)[1]["keras2-model"]
  path = str(tmp_path / "bad.h5")
  shutil.copy(src, path)
  with h5py.File(path, "r+") as f:
    del f["model_weights/conv3_block2_2_conv/conv3_block2_2_conv/kernel:0"]
    f["model_weights/conv3_block2_2_conv/conv3_block2_2_conv/kernel:0"] = np.zeros((1, 3, 128, 128))
  with pytest.raises(ValueError) as e:
    keras_io.load_h5(path, name)
  msg = str(e.value)
  assert all(s in msg for s in (path, "conv3_block2_2_conv", "(1, 3, 128, 128)", "(3, 3, 128, 128)"))


def test_truncated_and_non_hdf5_files_are_refused(model_files, tmp_path):
  src = model_files("resnet50")[1]["keras2-model"]
  trunc, text = str(tmp_path / "trunc.h5"), str(tmp_path / "text.h5")
  with open(src, "rb") as f, open(trunc, "wb") as g:
    g.write(f.read(os.path.getsize(src) // 2))
  with open(text, "w") as g:
    g.write("not an HDF5 file\n")
  for path in (trunc, text):
    with pytest.raises(ValueError, match=path):
      keras_io.load_h5(path, "resnet50")
    with pytest.raises(ValueError, match=path):
      keras_io.describe(path)


def test_unknown_model_lists_the_valid_names(model_files):
  with pytest.raises(ValueError) as e:
    keras_io.load_h5(model_files("resnet50")[1]["keras3"], "vgg16")
  assert "vgg16" in str(e.value) and all(n in str(e.value) for n in MODELS)


def test_convert_leaves_nothing_behind_on_failure(tmp_path):
  bad = tmp_path / "bad.h5"
  bad.write_text("garbage")
  with pytest.raises(ValueError):
    keras_io.convert(str(bad), "resnet50", str(tmp_path / "out"))
  assert sorted(os.listdir(tmp_path)) == ["bad.h5"]


# ---------------------------------------------------------------------------------------------
# convert / inspect, library and CLI.

def test_convert_then_create_loads_the_weights(model_files, tmp_path, capsys):
  name = "resnet50"
  km, paths = model_files(name)
  out = str(tmp_path / "ckpt")
  assert cli.main(["convert", "--model", name, "--h5", paths["keras2-model"], "--workdir", out]) == 0
  assert [p for p in os.listdir(tmp_path) if p != "ckpt"] == []  # the temp folder is gone
  _, variables = rij.models.create(name, num_classes=2, weights=out)
  oracle = keras_oracle.variables_from_keras(km, name)
  backbone = {k: {l: v for l, v in variables[k].items() if l != "predictions"} for k in variables}
  _assert_same_tree(backbone, oracle)
  with pytest.raises(FileExistsError, match="ckpt"):  # never overwrites
    keras_io.convert(paths["keras2-model"], name, out)

  assert cli.main(["inspect", paths["keras2-model"]]) == 0
  text = capsys.readouterr().out
  assert "Keras 2 full model" in text and "2.6.0" in text and "tensorflow" in text
  assert f"matches model:   {name}" in text
  assert "23,587,712" in text  # docs/fidelity.md: ResNet50 notop parameters with BN statistics
  assert "176 (106 with weights)" in text and "none (notop file)" in text
