"""ONNX export (radimagenet_jax.export): ONNX Runtime on the exported graphs equals the Flax models.

Random weights with random BatchNorm statistics (so that no BatchNorm is the identity) and random
inputs; the limit is a max relative error (max abs error / max abs value) of 1e-5. Every model is
exported four times, a pairwise cover of {head, notop} x {NHWC, NCHW} x {static, dynamic}: the
layout only changes the input / output transposes, the top only the tail and dynamic only the
shapes, so every pair of choices meets at least once per model. Dynamic graphs run at two sizes.

Speed (2 CPU cores): variables come from ``jax.eval_shape`` filled with numpy (no compiled init),
the Flax references are one jitted ``capture`` (logits + the notop feature map) per model and size,
compiled with XLA's cheap settings, and the ONNX Runtime sessions skip graph optimisation except
for one per model (ORT's defaults, fusions included).
"""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import radimagenet_jax as rij

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from radimagenet_jax import export  # noqa: E402
from radimagenet_jax.export import onnx_graph  # noqa: E402

TOL = 1e-5
SIZES = {"resnet50": (32, 45), "densenet121": (32, 41),     # (static and dynamic, dynamic only)
         "inception_v3": (75, 86), "inception_resnet_v2": (75, 86)}
VARIANTS = [(True, "NHWC", False), (False, "NCHW", False), (True, "NCHW", True),
            (False, "NHWC", True)]     # (head, layout, dynamic)
CHEAP_XLA = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
NUM_CLASSES = 3


def random_variables(module, size, seed):
  """Variables of ``module`` (shapes from eval_shape), random weights and BatchNorm statistics."""
  shapes = jax.eval_shape(lambda: module.init({"params": jax.random.key(0)},
                                              jnp.zeros((1, size, size, 3)), train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      return rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return rng.normal(0, 0.2, shape).astype(np.float32)      # bias, mean
  return jax.tree_util.tree_map_with_path(fill, {k: shapes[k] for k in ("params", "batch_stats")})


def relative_error(got, want) -> float:
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@functools.lru_cache(maxsize=None)
def case(name):
  """(variables, {size: (input NHWC, logits, features NHWC)}) of one model, computed once."""
  spec = rij.models.get_spec(name)
  model = spec.module_cls(num_classes=NUM_CLASSES)
  variables = random_variables(model, spec.min_size, seed=len(name))
  refs = {}
  for size in SIZES[name]:
    x = np.random.default_rng(size).normal(0, 1, (2, size, size, 3)).astype(np.float32)
    run = jax.jit(lambda v, x: rij.models.capture(model, v, x, [spec.feature_layer]))
    logits, acts = run.lower(variables, x).compile(compiler_options=CHEAP_XLA)(variables, x)
    refs[size] = (x, np.asarray(logits), np.asarray(acts[spec.feature_layer]))
  return variables, refs


def session(model_or_path, optimise=False):
  options = ort.SessionOptions()
  if not optimise:
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
  source = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
  return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", list(SIZES))
def test_onnx_runtime_matches_flax(name, tmp_path):
  variables, refs = case(name)
  static = SIZES[name][0]
  for head, layout, dynamic in VARIANTS:
    kwargs = dict(head=head, layout=layout, **({"dynamic": True} if dynamic else
                                              {"image_size": static}))
    if (head, layout, dynamic) == VARIANTS[0]:   # through the file, with ORT's own optimisations
      sess = session(export.to_onnx(name, variables, tmp_path / "m.onnx", **kwargs), True)
    else:
      sess = session(export.build_onnx(name, variables, **kwargs))
    for size in SIZES[name] if dynamic else (static,):
      x, logits, features = refs[size]
      want = logits if head else features if layout == "NHWC" else features.transpose(0, 3, 1, 2)
      feed = x if layout == "NHWC" else x.transpose(0, 3, 1, 2)
      got = sess.run(None, {"input": feed})[0]
      where = f"{name} head={head} {layout} dynamic={dynamic} size={size}"
      assert got.shape == want.shape, where
      assert relative_error(got, want) < TOL, (where, relative_error(got, want))


def test_file_metadata_names_and_opset(tmp_path):
  variables, refs = case("resnet50")
  path = export.to_onnx("resnet50", variables, str(tmp_path / "r.onnx"), head=True, image_size=32,
                        batch_size=2, opset=13,
                        metadata={"class_names": ["a", "b", "c"], "source": "random init"})
  model = onnx.load(path)
  onnx.checker.check_model(model, full_check=True)
  props = {p.key: p.value for p in model.metadata_props}
  assert props["preprocess"] == "radimagenet"
  assert props["preprocess_formula"] == "(BGR(img) - [103.939, 116.779, 123.68]) / 255"
  assert json.loads(props["class_names"]) == ["a", "b", "c"] and props["source"] == "random init"
  assert (props["model"], props["top"], props["layout"], props["input_shape"],
          props["output_shape"]) == ("resnet50", "head", "NHWC", "2x32x32x3", "2x3")
  assert model.opset_import[0].version == 13
  assert [i.name for i in model.graph.input] == ["input"]
  assert [o.name for o in model.graph.output] == ["logits"]
  nodes = {n.name for n in model.graph.node}
  layers = rij.models.keras_layers("resnet50")
  assert {l.name for l in layers} <= nodes     # one node per Keras layer, named after it
  assert {i.name for i in model.graph.initializer} >= {"conv1_conv/kernel", "predictions/bias"}
  assert os.listdir(tmp_path) == ["r.onnx"]
  x, logits, _ = refs[32]
  assert relative_error(session(path).run(None, {"input": x})[0], logits) < TOL
  line = export.summary(model)
  assert line == "resnet50, head, NHWC, 2x32x32x3 -> 2x3, opset 13, preprocess=radimagenet"


def test_errors_are_raised_before_anything_is_written(tmp_path):
  resnet, _ = case("resnet50")
  out = tmp_path / "x.onnx"
  with pytest.raises(ValueError, match="valid choices: densenet121, inception_resnet_v2"):
    export.to_onnx("vgg16", resnet, out)
  with pytest.raises(ValueError, match="image_size=31 is below the minimum 32 of resnet50"):
    export.to_onnx("resnet50", resnet, out, image_size=31)
  densenet = random_variables(rij.models.get_spec("densenet121").module_cls(num_classes=3), 32, 0)
  with pytest.raises(ValueError, match=r"resnet50: first missing variable params/conv1_conv/bias"
                                       r".*they are densenet121 variables"):
    export.to_onnx("resnet50", densenet, out)
  bad = jax.tree.map(lambda a: a, resnet)
  bad["params"]["conv2_block1_2_conv"] = {"kernel": np.zeros((3, 3, 64, 32), np.float32),
                                          "bias": bad["params"]["conv2_block1_2_conv"]["bias"]}
  with pytest.raises(ValueError, match=r"params/conv2_block1_2_conv/kernel has shape "
                                       r"\(3, 3, 64, 32\), resnet50 expects \(3, 3, 64, 64\)"):
    export.to_onnx("resnet50", bad, out, image_size=32)
  notop = {"params": {k: v for k, v in resnet["params"].items() if k != "predictions"},
           "batch_stats": resnet["batch_stats"]}
  with pytest.raises(ValueError, match="use head=False"):
    export.to_onnx("resnet50", notop, out, image_size=32)
  for kwargs, message in [({"layout": "nhwc"}, "layout='nhwc'"),
                          ({"dynamic": True, "image_size": 64}, "give one or the other"),
                          ({"opset": 9}, "opset=9"), ({"batch_size": 0}, "batch_size=0"),
                          ({"metadata": {"class_names": ["a"]}}, "1 names, the head has 3"),
                          ({"metadata": {"preprocess": "bgr"}}, "preprocess='bgr'")]:
    with pytest.raises(ValueError, match=message):
      export.to_onnx("resnet50", resnet, out, **{"image_size": 32, **kwargs})
  with pytest.raises(FileNotFoundError, match="does not exist"):
    export.to_onnx("resnet50", resnet, tmp_path / "no" / "x.onnx", image_size=32)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("failure", ["replace", "check"])
def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, failure):
  variables, _ = case("resnet50")
  path = tmp_path / "model.onnx"
  path.write_bytes(b"previous export")

  def fail(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(*((os, "replace", fail) if failure == "replace" else
                        (onnx.checker, "check_model", fail)))
  with pytest.raises(OSError, match="disk full"):
    export.to_onnx("resnet50", variables, path, image_size=32)
  assert os.listdir(tmp_path) == ["model.onnx"] and path.read_bytes() == b"previous export"


@pytest.mark.parametrize("n", [1, 2, 5, 6, 7, 8, 13])
@pytest.mark.parametrize("k,s", [(1, 1), (3, 1), (3, 2), (2, 2), (7, 2), (3, 3), (5, 4)])
def test_same_padding_is_xla_same_padding(n, k, s):
  attrs, out = onnx_graph._window((n, n), (k, k), (s, s), "same")
  (lo, hi), _ = jax.lax.padtype_to_pads((n, n), (k, k), (s, s), "SAME")
  assert attrs["pads"] == [lo, lo, hi, hi] and out == (-(-n // s),) * 2
  attrs, out = onnx_graph._window((None, n), (k, k), (s, s), "same")
  assert attrs == ({"auto_pad": "SAME_UPPER"} if s > 1 else {"pads": [lo, lo, hi, hi]})


def tiny_backbone(L, x):
  """Every vocabulary entry, with the stride-2 'same' windows and odd sizes the four models lack."""
  x = L.input(x, name="input_layer")
  x = L.zero_pad(x, ((1, 2), (0, 1)), name="pad")
  x = L.conv(x, 4, 3, strides=2, padding="same", name="c1")
  x = L.bn(x, name="b1")
  x = L.act(x, "relu", name="r1")
  a = L.max_pool(x, 3, strides=2, padding="same", name="mp")
  b = L.avg_pool(x, 3, strides=2, padding="same", name="ap")
  x = L.concat([a, b], name="cat")
  y = L.conv(x, L.channels(x), (3, 2), strides=(1, 2), padding="same", use_bias=False, name="c2")
  x = L.conv(x, L.channels(x), 1, strides=(1, 2), padding="same", name="c3")
  x = L.scale_add([x, L.conv(y, L.channels(x), 1, name="c4")], 0.3, name="sa")
  x = L.add([x, x, x], name="add")
  return L.act(x, "linear", name="lin")


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_asymmetric_same_padding_static_and_dynamic(layout):
  class Tiny(rij.models.get_spec("resnet50").module_cls):
    min_size = 1
    backbone = staticmethod(tiny_backbone)

  module = Tiny(num_classes=2)
  variables = random_variables(module, 11, seed=1)
  for dynamic in (False, True):
    for size in (11, 14):
      model = onnx.ModelProto()
      model.opset_import.add(domain="", version=export.DEFAULT_OPSET)
      model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
      onnx_graph.build_graph(model.graph, Tiny, variables, model_name="tiny", head=False,
                             size=(None, None) if dynamic else (size, size), layout=layout,
                             batch="N")
      onnx.checker.check_model(model)
      x = np.random.default_rng(size).normal(0, 1, (2, size, size, 3)).astype(np.float32)
      want = np.asarray(module.apply(variables, x, method="features"))
      feed, want = (x, want) if layout == "NHWC" else (x.transpose(0, 3, 1, 2),
                                                      want.transpose(0, 3, 1, 2))
      got = session(model).run(None, {"input": feed})[0]
      assert got.shape == want.shape and relative_error(got, want) < TOL, (dynamic, size)


def _run_command(argv):
  import argparse
  from radimagenet_jax.export import command
  parser = argparse.ArgumentParser(prog="radimagenet-jax export")
  command.add_arguments(parser)
  return command.run(parser.parse_args(argv))


def test_command_checkpoint_and_h5(tmp_path, capsys):
  variables, refs = case("resnet50")
  ckpt = tmp_path / "ckpt"
  rij.checkpoints.save_variables(ckpt, variables, model_name="resnet50", num_classes=NUM_CLASSES,
                                 extra_metadata={"class_names": ["x", "y", "z"], "image_size": 32})
  out = str(tmp_path / "ft.onnx")
  assert _run_command(["--model", "resnet50", "--weights", str(ckpt), "--out", out]) == [out]
  assert capsys.readouterr().out.strip() == (f"wrote {out} (resnet50, head, NHWC, Nx32x32x3 -> "
                                             f"Nx3, opset 17, preprocess=radimagenet)")
  props = {p.key: p.value for p in onnx.load(out, load_external_data=False).metadata_props}
  assert json.loads(props["class_names"]) == ["x", "y", "z"]
  # No absolute path of the writing machine in the file: the folder's last two parts.
  assert props["source"] == f"{tmp_path.name}/ckpt"
  assert not [k for k, v in props.items() if str(tmp_path) in v]
  x, logits, features = refs[32]
  assert relative_error(session(out).run(None, {"input": x})[0], logits) < TOL

  h5 = tmp_path / "backbone.weights.h5"
  rij.keras_io.save_h5(variables, "resnet50", h5)
  with pytest.raises(ValueError, match="holds no trained classifier"):
    _run_command(["--model", "resnet50", "--weights", str(h5), "--out", out, "--head"])
  out = str(tmp_path / "notop.onnx")
  _run_command(["--model", "resnet50", "--weights", str(h5), "--out", out, "--dynamic",
                "--layout", "NCHW"])
  assert "resnet50, notop, NCHW, Nx3xHxW -> Nx2048x?x?" in capsys.readouterr().out
  got = session(out).run(None, {"input": x.transpose(0, 3, 1, 2)})[0]
  assert relative_error(got, features.transpose(0, 3, 1, 2)) < TOL


def test_command_with_another_models_checkpoint_advises_the_right_model(tmp_path, capsys):
  from radimagenet_jax import checkpoints, cli
  ckpt = tmp_path / "d121"
  checkpoints.save_variables(ckpt, {"params": {"predictions": {"bias": np.zeros(2, np.float32)}}},
                             model_name="densenet121", num_classes=2)
  out = tmp_path / "x.onnx"
  assert cli.main(["export", "--model", "resnet50", "--weights", str(ckpt), "--out", str(out)]) == 1
  err = capsys.readouterr().err.strip()
  assert err == (f"radimagenet-jax export: error: --weights {ckpt}: a densenet121 checkpoint, but "
                 f"--model resnet50 was given; pass --model densenet121 to export it.")
  assert not out.exists()
