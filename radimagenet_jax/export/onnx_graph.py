"""``OnnxLayers``: the third interpreter of the models' Keras layer vocabulary, emitting ONNX nodes.

Every architecture is written once as ``Model.backbone(L, x)`` over a vocabulary ``L`` (``input,
conv, bn, act, add, concat, scale_add, zero_pad, max_pool, avg_pool, channels``): ``FlaxLayers``
runs it in Flax, ``LayerTable`` records the Keras layer table, and ``OnnxLayers`` (here) writes one
ONNX node per Keras layer, named after it, with the weights taken from the Flax variables as
initializers (``conv1_conv/kernel``). The graph computes in NCHW, ONNX's native layout; an NHWC
graph transposes its input once (``input_layer``) and, for a notop graph, its output once.

Exactness: every op is the ONNX op with the Keras semantics -- Conv with bias; BatchNormalization
in inference mode with the model's epsilon (gamma = 1 when the model has ``bn_scale=False``); 'same'
padding as XLA/TF pad it (the odd pixel at the end), as explicit pads when the spatial size is known
or the stride is 1 (then the pads do not depend on the size), else ``auto_pad=SAME_UPPER`` (which is
defined the same way); AveragePool with ``count_include_pad=0`` (Keras's 'same' average pools divide
by the real pixels); MaxPool pads never win (ONNX ignores them); ZeroPadding2D is a Pad node.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
from onnx import TensorProto, helper

NCHW_FROM_NHWC = (0, 3, 1, 2)
NHWC_FROM_NCHW = (0, 2, 3, 1)


@dataclasses.dataclass(frozen=True)
class Tensor:
  """A value in the graph: its ONNX name, channel count and spatial size (None = dynamic)."""
  name: str
  channels: int
  size: tuple[int | None, int | None]


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _zero_pads(padding) -> tuple[tuple[int, int], tuple[int, int]]:
  """Keras ZeroPadding2D ``padding``: int, (h, w) or ((top, bottom), (left, right))."""
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  if isinstance(padding[0], int):
    return ((padding[0], padding[0]), (padding[1], padding[1]))
  return (tuple(padding[0]), tuple(padding[1]))


def _window(size, kernel, strides, padding: str) -> tuple[dict, tuple]:
  """ONNX padding attributes of a conv / pool window and its output spatial size.

  'same' follows XLA/TF: output ceil(n / s), total padding max((out - 1) * s + k - n, 0), the
  larger half at the end (bottom / right). With stride 1 the total is k - 1 for any n, so the pads
  are explicit even for a dynamic size; a dynamic size with a larger stride uses SAME_UPPER.
  """
  padding = padding.lower()
  if padding not in ("same", "valid"):
    raise ValueError(f"padding={padding!r}: expected 'same' or 'valid'.")
  begins, ends, out = [], [], []
  for n, k, s in zip(size, kernel, strides):
    if padding == "valid":
      begins.append(0)
      ends.append(0)
      out.append(None if n is None else (n - k) // s + 1)
      continue
    if n is None and s > 1:
      return {"auto_pad": "SAME_UPPER"}, tuple(None if m is None else -(-m // t)
                                                 for m, t in zip(size, strides))
    total = k - 1 if n is None else max((math.ceil(n / s) - 1) * s + k - n, 0)
    begins.append(total // 2)
    ends.append(total - total // 2)
    out.append(None if n is None else math.ceil(n / s))
  if any(o is not None and o < 1 for o in out):
    raise ValueError(f"input of spatial size {size} is too small for a {kernel} window with "
                     f"strides {strides} and {padding!r} padding.")
  return {"pads": begins + ends}, tuple(out)


class OnnxLayers:
  """Emits ONNX nodes for the Keras layer vocabulary (same signatures as ``FlaxLayers``).

  ``variables``: the Flax ``{'params', 'batch_stats'}`` of the model; every weight is checked
  against the shape the layer needs, and the first mismatch raises a ValueError naming the
  variable, both shapes and ``model_name``. ``layout``: the graph input's ('NHWC' or 'NCHW').
  """

  def __init__(self, graph: onnx.GraphProto, variables, *, bn_epsilon: float, bn_scale: bool,
               model_name: str, layout: str = "NHWC"):
    self.graph, self.layout = graph, layout
    self.params = variables.get("params", {})
    self.stats = variables.get("batch_stats", {})
    self.bn_epsilon, self.bn_scale, self.model_name = float(bn_epsilon), bn_scale, model_name

  @staticmethod
  def channels(x: Tensor) -> int:
    return x.channels

  # -- helpers ------------------------------------------------------------------------------------

  def _weight(self, collection: str, layer: str, var: str, shape: tuple[int, ...]) -> np.ndarray:
    tree = self.params if collection == "params" else self.stats
    node = tree.get(layer) if hasattr(tree, "get") else None
    value = node.get(var) if hasattr(node, "get") else None
    if value is None:
      raise ValueError(f"variables lack {collection}/{layer}/{var}, which {self.model_name} "
                       f"needs; expected a {self.model_name} variable tree.")
    value = np.asarray(value, np.float32)
    if value.shape != tuple(shape):
      raise ValueError(f"variable {collection}/{layer}/{var} has shape {value.shape}, "
                       f"{self.model_name} expects {tuple(shape)}.")
    return value

  def _const(self, name: str, value: np.ndarray) -> str:
    # Filled in place: 200 MB of weights are never copied between protobuf messages.
    tensor = self.graph.initializer.add()
    tensor.name, tensor.data_type = name, helper.np_dtype_to_tensor_dtype(value.dtype)
    tensor.dims.extend(value.shape)
    tensor.raw_data = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
    return name

  def _node(self, op: str, inputs, name: str, **attrs) -> str:
    """One node, named ``name``, whose single output tensor is also named ``name``."""
    self.graph.node.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
    return name

  # -- the vocabulary -----------------------------------------------------------------------------

  def input(self, x: Tensor, name="input_layer") -> Tensor:
    """``x`` is the graph input; NHWC input is transposed to the NCHW the graph computes in."""
    if self.layout == "NHWC":
      self._node("Transpose", [x.name], name, perm=list(NCHW_FROM_NHWC))
    else:
      self._node("Identity", [x.name], name)
    return Tensor(name, x.channels, x.size)

  def conv(self, x, filters, kernel, *, name, strides=1, padding="valid", use_bias=True):
    kernel, strides = _pair(kernel), _pair(strides)
    w = self._weight("params", name, "kernel", (*kernel, x.channels, filters))
    inputs = [x.name, self._const(f"{name}/kernel", w.transpose(3, 2, 0, 1))]  # HWIO -> OIHW
    if use_bias:
      inputs.append(self._const(f"{name}/bias", self._weight("params", name, "bias", (filters,))))
    attrs, size = _window(x.size, kernel, strides, padding)
    self._node("Conv", inputs, name, kernel_shape=list(kernel), strides=list(strides),
               dilations=[1, 1], group=1, **attrs)
    return Tensor(name, filters, size)

  def bn(self, x, *, name):
    c = (x.channels,)
    gamma = (self._weight("params", name, "scale", c) if self.bn_scale
             else np.ones(c, np.float32))
    inputs = [x.name, self._const(f"{name}/gamma", gamma),
              self._const(f"{name}/beta", self._weight("params", name, "bias", c)),
              self._const(f"{name}/moving_mean", self._weight("batch_stats", name, "mean", c)),
              self._const(f"{name}/moving_variance", self._weight("batch_stats", name, "var", c))]
    self._node("BatchNormalization", inputs, name, epsilon=self.bn_epsilon)
    return Tensor(name, x.channels, x.size)

  def act(self, x, activation="relu", *, name):
    ops = {"relu": "Relu", "linear": "Identity"}
    if activation not in ops:
      raise ValueError(f"activation {activation!r} of layer {name!r}: expected one of "
                       f"{', '.join(ops)}.")
    self._node(ops[activation], [x.name], name)
    return Tensor(name, x.channels, x.size)

  def add(self, xs, *, name):
    y = xs[0].name
    for i, other in enumerate(xs[1:], start=1):
      y = self._node("Add", [y, other.name], name if i == len(xs) - 1 else f"{name}/{i}")
    return Tensor(name, xs[0].channels, xs[0].size)

  def concat(self, xs, *, name):
    self._node("Concat", [t.name for t in xs], name, axis=1)
    return Tensor(name, sum(t.channels for t in xs), xs[0].size)

  def scale_add(self, xs, scale, *, name):
    """IRV2's ``CustomScaleLayer``: ``xs[0] + xs[1] * scale`` (float32 scale, as in Flax)."""
    scale_name = self._const(f"{name}/scale", np.asarray(scale, np.float32))
    scaled = self._node("Mul", [xs[1].name, scale_name], f"{name}/scaled")
    self._node("Add", [xs[0].name, scaled], name)
    return Tensor(name, xs[0].channels, xs[0].size)

  def zero_pad(self, x, padding, *, name):
    (t, b), (l, r) = _zero_pads(padding)
    pads = self._const(f"{name}/pads", np.asarray([0, 0, t, l, 0, 0, b, r], np.int64))
    self._node("Pad", [x.name, pads], name, mode="constant")
    h, w = x.size
    return Tensor(name, x.channels, (None if h is None else h + t + b,
                                     None if w is None else w + l + r))

  def _pool(self, op, x, size, strides, padding, name, **extra):
    size = _pair(size)
    strides = size if strides is None else _pair(strides)
    attrs, out = _window(x.size, size, strides, padding)
    self._node(op, [x.name], name, kernel_shape=list(size), strides=list(strides), **attrs,
               **extra)
    return Tensor(name, x.channels, out)

  def max_pool(self, x, size, strides=None, padding="valid", *, name):
    return self._pool("MaxPool", x, size, strides, padding, name)

  def avg_pool(self, x, size, strides=None, padding="valid", *, name):
    return self._pool("AveragePool", x, size, strides, padding, name, count_include_pad=0)

  # -- the paper's head and the graph's output ----------------------------------------------------

  def head(self, x: Tensor, *, name="predictions") -> Tensor:
    """GlobalAveragePooling2D 'avg_pool' -> (Dropout: identity at inference) -> Dense 'predictions'
    (logits, no softmax)."""
    kernel = np.asarray(self.params.get(name, {}).get("kernel", np.zeros((0, 0))), np.float32)
    if kernel.ndim != 2 or kernel.shape[0] != x.channels or kernel.shape[1] < 1:
      raise ValueError(f"variable params/{name}/kernel has shape {kernel.shape}, {self.model_name} "
                       f"expects ({x.channels}, num_classes); use head=False for a notop export.")
    k = kernel.shape[1]
    bias = self._weight("params", name, "bias", (k,))
    pooled = self._node("GlobalAveragePool", [x.name], "avg_pool")
    flat = self._node("Flatten", [pooled], "avg_pool/flatten", axis=1)
    self._node("Gemm", [flat, self._const(f"{name}/kernel", kernel),
                        self._const(f"{name}/bias", bias)], name)
    return Tensor(name, k, (None, None))

  def output(self, x: Tensor, name: str, *, to_nhwc: bool) -> str:
    """Names the graph output ``name``; ``to_nhwc`` transposes a feature map back to NHWC."""
    if to_nhwc:
      return self._node("Transpose", [x.name], name, perm=list(NHWC_FROM_NCHW))
    return self._node("Identity", [x.name], name)

def value_info(name: str, dims) -> onnx.ValueInfoProto:
  """A float32 graph input/output; a dim is an int (static), a str (named dynamic) or None."""
  return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


def _dims(batch, size, channels, layout):
  return [batch, *size, channels] if layout == "NHWC" else [batch, channels, *size]


def build_graph(graph: onnx.GraphProto, module_cls, variables, *, model_name: str, head: bool,
                size: tuple[int | None, int | None], layout: str, batch: int | str,
                input_name: str = "input") -> tuple[list, list, int]:
  """Fills ``graph`` with ``module_cls.backbone`` (and the head): input ``input_name``, output
  ``logits`` (head) or ``features`` (notop). ``size`` (None: dynamic, named 'H' / 'W'), ``batch``
  (an int or a dim name). Returns the input dims, the output dims and the output channels."""
  L = OnnxLayers(graph, variables, bn_epsilon=module_cls.bn_epsilon, bn_scale=module_cls.bn_scale,
                 model_name=model_name, layout=layout)
  in_size = tuple(d if d is not None else n for d, n in zip(size, ("H", "W")))
  in_dims = _dims(batch, in_size, 3, layout)
  x = module_cls.backbone(L, Tensor(input_name, 3, tuple(size)))
  if head:
    x = L.head(x)
    out_dims = [batch, x.channels]
  else:
    out_dims = _dims(batch, x.size, x.channels, layout)
  out_name = "logits" if head else "features"
  L.output(x, out_name, to_nhwc=not head and layout == "NHWC")
  graph.name = f"{model_name}_{'head' if head else 'notop'}"
  graph.input.append(value_info(input_name, in_dims))
  graph.output.append(value_info(out_name, out_dims))
  return in_dims, out_dims, x.channels
