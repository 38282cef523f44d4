"""Layer tables in Keras's ``model.layers`` order for branching networks (InceptionV3, IRV2).

Keras lists a functional model's layers in its own topological order (by longest distance to the
output, ties by a depth-first search from the output), which interleaves the branches of every
Inception block, and it matches weight files to layers by that order. Rather than calling the
layers in that order by hand, ``KerasGraph`` records the block functions as a graph and sorts it
exactly as Keras does (``keras_order``, a port of keras/src/ops/function.py ``map_graph``).
"""
from __future__ import annotations

import dataclasses

from radimagenet_jax.models.base import KerasApplication
from radimagenet_jax.models.layers import KerasLayer, LayerTable


@dataclasses.dataclass(frozen=True)
class GraphTensor:
  """A placeholder tensor while recording: the layer that produced it and its channel count."""
  layer: str
  channels: int


def _recorded(method: str):
  """A ``KerasGraph`` layer method: records the layer with ``LayerTable`` (name, kind,
  parameter paths, output channels) and remembers which layers feed it."""

  def record(self, x, *args, name, **kwargs):
    many = isinstance(x, (list, tuple))
    xs = list(x) if many else [x]
    channels = getattr(self.table, method)(
        [t.channels for t in xs] if many else x.channels, *args, name=name, **kwargs)
    self.inputs[name] = tuple(t.layer for t in xs)
    return GraphTensor(name, channels)

  record.__name__ = method
  return record


class KerasGraph:
  """Records a ``backbone(L, x)`` as a Keras functional graph; ``ordered()`` returns the layer
  table in Keras's ``model.layers`` order. Same vocabulary as ``LayerTable``."""

  def __init__(self, bn_scale: bool):
    self.table = LayerTable(bn_scale=bn_scale)
    self.inputs: dict[str, tuple[str, ...]] = {}

  @staticmethod
  def channels(x: GraphTensor) -> int:
    return x.channels

  def input(self, x, name="input_layer"):
    self.inputs[name] = ()
    return GraphTensor(name, self.table.input(None, name=name))

  conv = _recorded("conv")
  bn = _recorded("bn")
  act = _recorded("act")
  add = _recorded("add")
  concat = _recorded("concat")
  scale_add = _recorded("scale_add")
  max_pool = _recorded("max_pool")
  avg_pool = _recorded("avg_pool")
  zero_pad = _recorded("zero_pad")
  global_avg_pool = _recorded("global_avg_pool")

  def ordered(self, output: GraphTensor) -> list[KerasLayer]:
    by_name = {layer.name: layer for layer in self.table.layers}
    return [by_name[name] for name in keras_order(self.inputs, output.layer)]


def keras_order(inputs: dict[str, tuple[str, ...]], output: str) -> list[str]:
  """Layer names in Keras's ``model.layers`` order (keras/src/ops/function.py ``map_graph``).

  Keras walks the graph depth-first from the output, visiting each layer's inputs in order and
  numbering a layer when first reached; it then sorts the layers by their longest distance to the
  output (farthest first), ties by that number. Iterative: IRV2 is deeper than Python's recursion
  limit.
  """
  first_seen = {output: 0}
  finished: list[str] = []
  stack = [(output, iter(inputs[output]))]
  while stack:
    name, pending = stack[-1]
    parent = next(pending, None)
    if parent is None:
      stack.pop()
      finished.append(name)
    elif parent not in first_seen:
      first_seen[parent] = len(first_seen)
      stack.append((parent, iter(inputs[parent])))
  unused = [name for name in inputs if name not in first_seen]
  if unused:
    raise ValueError(f"keras_order: layers {unused} do not lead to the output {output!r}.")
  depth = dict.fromkeys(finished, 0)
  for name in reversed(finished):  # every layer comes before the layers that feed it
    for parent in inputs[name]:
      depth[parent] = max(depth[parent], depth[name] + 1)
  return sorted(finished, key=lambda name: (-depth[name], first_seen[name]))


class KerasGraphApplication(KerasApplication):
  """A KerasApplication whose layer table is sorted like Keras's graph (branching networks)."""

  @classmethod
  def layer_table(cls) -> list[KerasLayer]:
    """keras_layers(): the backbone's layers plus the 'avg_pool' of pooling='avg', Keras order."""
    graph = KerasGraph(cls.bn_scale)
    x = cls.backbone(graph, None)
    return graph.ordered(graph.global_avg_pool(x, name="avg_pool"))
