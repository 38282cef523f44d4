"""``to_onnx``: a standard ONNX file of one of the four models, with or without the paper's head.

The graph is the model's own ``backbone(L, x)`` run by ``onnx_graph.OnnxLayers`` (one ONNX node per
Keras layer), so it cannot drift from the Flax model. Preprocessing is not in the graph: the file's
``metadata_props`` name the mode and its formula (``preprocess=radimagenet``,
``preprocess_formula=(BGR(img) - [103.939, 116.779, 123.68]) / 255``), and the class names when
known. Every argument and the variables are checked before anything is written, and the file is
written to a temporary file in the same folder and renamed, so a failed export leaves nothing.

``onnx`` is imported here only when a function runs (``pip install 'radimagenet-jax[export]'``).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Mapping

import radimagenet_jax as rij

LAYOUTS = ("NHWC", "NCHW")
DEFAULT_LAYOUT = "NHWC"      # the layout of rij.data.preprocess and model.apply: same arrays in
DEFAULT_OPSET = 17           # ONNX Runtime >= 1.11, onnx2torch, TensorRT 8.5+
MIN_OPSET = 13
INPUT_NAME = "input"
PREPROCESS_FORMULAS = {       # img: RGB pixel values 0..255, HxWx3 (grey replicated to 3 channels)
    "radimagenet": "(BGR(img) - [103.939, 116.779, 123.68]) / 255",
    "caffe": "BGR(img) - [103.939, 116.779, 123.68]",
    "imagenet": "(img / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]",
    "unit": "img / 255",
    "tf": "img / 127.5 - 1",
}


def _onnx():
  try:
    import onnx
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError("ONNX export needs the onnx package: pip install "
                              "'radimagenet-jax[export]' (or pip install onnx).") from e
  return onnx


def _variable_paths(variables) -> set[tuple[str, str, str]]:
  paths = set()
  for collection in ("params", "batch_stats"):
    for layer, leaves in dict(variables.get(collection, {})).items():
      for var in (leaves if hasattr(leaves, "keys") else ()):
        paths.add((collection, layer, var))
  return paths


def _fits(name: str, paths: set) -> bool:
  expected = {p for layer in rij.models.keras_layers(name) for p in layer.params}
  return expected <= paths and {p[1] for p in paths - expected} <= {"predictions"}


def check_variables(spec, variables) -> None:
  """Raises a ValueError unless ``variables`` hold every backbone variable of ``spec`` (shapes are
  checked while the graph is built); names the first missing one and the model they fit."""
  if not hasattr(variables, "get") or "params" not in variables:
    raise ValueError(f"variables: expected a dict with 'params' and 'batch_stats' of "
                     f"{spec.name}, got {type(variables).__name__}.")
  paths = _variable_paths(variables)
  table = rij.models.keras_layers(spec.name)
  expected = [p for layer in table for p in layer.params]
  known = {layer.name for layer in table} | {"predictions"}
  missing = [p for p in expected if p not in paths]
  extra = sorted(p for p in paths if p[1] not in known)
  if not missing and not extra:
    return
  other = [n for n in rij.models.names() if n != spec.name and _fits(n, paths)]
  fits = f"; they are {other[0]} variables" if other else ""
  what = (f"first missing variable {'/'.join(missing[0])} (Keras layer order)" if missing
          else f"variable {'/'.join(extra[0])} belongs to no {spec.name} layer")
  raise ValueError(f"variables do not belong to {spec.name}: {what}{fits}.")


def _shape_text(dims) -> str:
  return "x".join("?" if d is None else str(d) for d in dims)


def _metadata_props(spec, *, head, layout, in_dims, out_dims, num_classes, opset, metadata):
  extra = dict(metadata or {})
  mode = extra.pop("preprocess", "radimagenet")
  if mode not in rij.data.PREPROCESS_MODES:
    raise ValueError(f"metadata preprocess={mode!r}: expected one of "
                     f"{', '.join(rij.data.PREPROCESS_MODES)}.")
  class_names = extra.pop("class_names", None)
  if class_names is not None:
    class_names = [str(c) for c in class_names]
    if head and len(class_names) != num_classes:
      raise ValueError(f"metadata class_names has {len(class_names)} names, the head has "
                       f"{num_classes} classes.")
  props = {
      "model": spec.name, "keras_application": spec.keras_application,
      "top": "head" if head else "notop", "layout": layout, "input": INPUT_NAME,
      "input_shape": _shape_text(in_dims), "output": "logits" if head else "features",
      "output_shape": _shape_text(out_dims),
      "output_meaning": ("logits of Dense 'predictions' (no softmax)" if head else
                         f"last feature map of the Keras notop model ({spec.feature_layer})"),
      "preprocess": mode,
      "preprocess_formula": PREPROCESS_FORMULAS.get(mode, "see radimagenet_jax.data.preprocess"),
      "min_size": str(spec.min_size), "opset": str(opset),
      "producer": f"radimagenet_jax {rij.__version__}"}
  if head:
    props["num_classes"] = str(num_classes)
  if class_names is not None:
    props["class_names"] = json.dumps(class_names)
  for key, value in extra.items():
    props[str(key)] = value if isinstance(value, str) else json.dumps(value, default=str)
  return props


def build_onnx(model_name: str, variables: Mapping[str, Any], *, head: bool = True,
               image_size: int | tuple[int, int] | None = None, dynamic: bool = False,
               layout: str = DEFAULT_LAYOUT, batch_size: int | None = None,
               metadata: Mapping[str, Any] | None = None, opset: int = DEFAULT_OPSET):
  """The ``onnx.ModelProto`` that ``to_onnx`` writes (same arguments, without the path)."""
  spec = rij.models.get_spec(model_name)
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: expected one of {', '.join(LAYOUTS)}.")
  if dynamic and image_size is not None:
    raise ValueError(f"image_size={image_size!r} with dynamic=True: give one or the other.")
  if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
    raise ValueError(f"batch_size={batch_size!r}: expected a positive int or None (dynamic).")
  if dynamic:
    size = (None, None)
  else:
    size = ((image_size, image_size) if isinstance(image_size, int) else
            tuple(image_size) if image_size is not None else (spec.default_size,) * 2)
    if len(size) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) for d in size):
      raise ValueError(f"image_size={image_size!r}: expected an int or (h, w) ints, at least "
                       f"{spec.min_size} for {spec.name}.")
    if min(size) < spec.min_size:
      raise ValueError(f"image_size={image_size!r} is below the minimum {spec.min_size} of "
                       f"{spec.name}; expected an int >= {spec.min_size}.")
  onnx = _onnx()
  if not (isinstance(opset, int) and MIN_OPSET <= opset <= onnx.defs.onnx_opset_version()):
    raise ValueError(f"opset={opset!r}: expected an int from {MIN_OPSET} to "
                     f"{onnx.defs.onnx_opset_version()}.")
  check_variables(spec, variables)
  from radimagenet_jax.export import onnx_graph

  model = onnx.ModelProto()
  model.opset_import.add(domain="", version=opset)
  model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
  model.producer_name, model.producer_version = "radimagenet-jax", rij.__version__
  model.doc_string = f"{spec.keras_application} exported by radimagenet_jax"
  in_dims, out_dims, channels = onnx_graph.build_graph(
      model.graph, spec.module_cls, variables, model_name=spec.name, head=head, size=size,
      layout=layout, batch="N" if batch_size is None else batch_size, input_name=INPUT_NAME)
  props = _metadata_props(spec, head=head, layout=layout, in_dims=in_dims, out_dims=out_dims,
                          num_classes=channels, opset=opset, metadata=metadata)
  onnx.helper.set_model_props(model, props)
  return model


def check_output_path(path: str | os.PathLike) -> str:
  """The absolute path; raises FileNotFoundError when its folder does not exist, ValueError when
  it is a folder."""
  path = os.path.abspath(os.fspath(path))
  if os.path.isdir(path):
    raise ValueError(f"{path} is a folder; expected the path of an .onnx file.")
  if not os.path.isdir(os.path.dirname(path)):
    raise FileNotFoundError(f"{path}: the folder {os.path.dirname(path)} does not exist; create "
                            f"it first.")
  return path


def save_atomic(model, path: str | os.PathLike) -> str:
  """Writes ``model`` (an onnx.ModelProto) to ``path`` through a temporary file in the same
  folder, checks it with ``onnx.checker`` and renames it (``os.replace``): ``path`` is either the
  complete, checked new file or left as it was."""
  path = check_output_path(path)
  folder = os.path.dirname(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(model.SerializeToString())
    _onnx().checker.check_model(tmp)  # the file as written; by path, so no in-memory copy
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  return path


def to_onnx(model_name: str, variables: Mapping[str, Any], path: str | os.PathLike, *,
            head: bool = True, image_size: int | tuple[int, int] | None = None,
            dynamic: bool = False, layout: str = DEFAULT_LAYOUT, batch_size: int | None = None,
            metadata: Mapping[str, Any] | None = None, opset: int = DEFAULT_OPSET) -> str:
  """Exports ``model_name`` with ``variables`` (Flax ``{'params', 'batch_stats'}``) to ``path``.

  head: True -> GAP + Dense 'predictions' (output ``logits``, no softmax); False -> the Keras
    notop output (``features``, the last feature map, as the official ``*_notop.h5`` files).
  image_size: static spatial size (int or (h, w), default the model's 224 / 299, at least its
    minimum); dynamic=True: dynamic height and width instead (two different sizes work).
  layout: 'NHWC' (default, the arrays ``rij.data.preprocess`` returns) or 'NCHW' (PyTorch style).
  batch_size: None (default) -> a dynamic batch dimension 'N'; an int fixes it.
  metadata: extra ``metadata_props``: 'preprocess' (mode, default 'radimagenet'), 'class_names'
    (a list), anything else (e.g. 'source') stored as a string (JSON for non-strings).
  opset: the ONNX opset (default 17, at least 13). Returns the absolute path written.
  """
  check_output_path(path)
  model = build_onnx(model_name, variables, head=head, image_size=image_size, dynamic=dynamic,
                     layout=layout, batch_size=batch_size, metadata=metadata, opset=opset)
  return save_atomic(model, path)


def summary(model) -> str:
  """'resnet50, notop, NHWC, Nx224x224x3 -> Nx7x7x2048, opset 17, preprocess=radimagenet'."""
  p = {prop.key: prop.value for prop in model.metadata_props}
  return (f"{p['model']}, {p['top']}, {p['layout']}, {p['input_shape']} -> {p['output_shape']}, "
          f"opset {p['opset']}, preprocess={p['preprocess']}")
