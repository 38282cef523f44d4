"""Freeze modes as trainable masks over the 'params' collection, with the paper's semantics.

Modes (docs/fidelity.md "Downstream fine-tuning"):

- ``all``: every parameter trains ("unfreeze all");
- ``head``: only the Dense head ``predictions`` trains (the paper's "freeze all");
- ``top<N>``: the last N layers of ``rij.models.keras_layers(name)`` (the pooling='avg' Keras table,
  weightless layers counted, so ``avg_pool`` is the last) plus the head; ``top10`` is the paper's;
- ``rules:REGEX=train|freeze;...``: big_vision-style rules over parameter paths ``layer/variable``
  (e.g. ``conv5_block3_3_bn/scale``), matched with ``re.search``; every parameter must match exactly
  one rule. Rules are separated by ``;`` and split at their LAST ``=``.

    mask = freeze.trainable_mask("resnet50", variables["params"], "top10")   # pytree of bool
    model = spec.module_cls(num_classes=2, frozen_bn=freeze.frozen_bn_layers("resnet50", mask))

A frozen Keras BatchNorm layer runs in inference mode (uses and keeps its moving statistics):
``frozen_bn_layers`` lists the BatchNorm layers none of whose parameters train, for the models'
``frozen_bn`` field. Counts cover the 'params' collection only (BatchNorm moving statistics are
never trainable, as in Keras ``trainable_weights``).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from radimagenet_jax.models import registry
from radimagenet_jax.models.base import HEAD_PARAM_LAYERS

BATCH_NORM = "BatchNormalization"
CHOICES = "all, head, top<N> (e.g. top10), rules:REGEX=train|freeze;REGEX=train|freeze..."
_TOP = re.compile(r"top(\d+)")


def parse_mode(mode: str) -> tuple[str, Any]:
  """('all', None) | ('head', None) | ('top', N) | ('rules', [(compiled regex, trains, text)])."""
  if not isinstance(mode, str):
    raise ValueError(f"freeze mode {mode!r}: expected a string, one of {CHOICES}")
  if mode in ("all", "head"):
    return mode, None
  top = _TOP.fullmatch(mode)
  if top:
    return "top", int(top.group(1))
  if mode.startswith("rules:"):
    return "rules", _parse_rules(mode[len("rules:"):])
  raise ValueError(f"unknown freeze mode {mode!r}; choices: {CHOICES}")


def check_mode(mode: str) -> str:
  """``mode`` when it is well formed (no model needed: for config validation), else ValueError."""
  parse_mode(mode)
  return mode


def _parse_rules(text: str) -> list[tuple[re.Pattern, bool, str]]:
  rules = []
  for part in (p.strip() for p in text.split(";")):
    if not part:
      continue
    regex, sep, action = part.rpartition("=")
    if not sep or not regex or action not in ("train", "freeze"):
      raise ValueError(f"freeze rule {part!r}: expected REGEX=train or REGEX=freeze")
    try:
      rules.append((re.compile(regex), action == "train", part))
    except re.error as e:
      raise ValueError(f"freeze rule {part!r}: bad regular expression ({e})") from e
  if not rules:
    raise ValueError(f"freeze mode 'rules:{text}': no rules; expected REGEX=train|freeze;...")
  return rules


def _key(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _paths(tree) -> list[str]:
  """'layer/variable' of every leaf of ``tree``, in jax.tree order."""
  return ["/".join(_key(k) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _table_owner(model_name: str) -> dict[str, str]:
  """'layer/variable' -> Keras layer name, for the 'params' variables of the layer table."""
  return {f"{p[1]}/{p[2]}": layer.name for layer in registry.keras_layers(model_name)
          for p in layer.params if p[0] == "params"}


def _head_path(path: str) -> bool:
  return path.split("/", 1)[0] in HEAD_PARAM_LAYERS


def _check_model(model_name: str, paths: Sequence[str]) -> dict[str, str]:
  """The table owner map, after checking that ``paths`` are this model's parameters."""
  owner = _table_owner(model_name)
  backbone = [p for p in paths if not _head_path(p)]
  unknown = [p for p in backbone if p not in owner]
  if unknown:
    raise ValueError(f"parameter {unknown[0]!r} is not in the Keras layer table of {model_name!r}; "
                     f"expected the params of rij.models.create({model_name!r}, ...)")
  missing = sorted(set(owner) - set(backbone))
  if missing:
    raise ValueError(f"params lack {model_name!r} parameter {missing[0]!r}; expected the 'params' "
                     f"collection of that model ({{layer: {{variable: array}}}})")
  return owner


def _decide(model_name: str, paths: Sequence[str], mode: str) -> dict[str, bool]:
  kind, arg = parse_mode(mode)
  owner = _check_model(model_name, paths)
  if kind == "all":
    return {p: True for p in paths}
  if kind == "head":
    return {p: _head_path(p) for p in paths}
  if kind == "top":
    table = registry.keras_layers(model_name)
    if not 0 <= arg <= len(table):
      raise ValueError(f"freeze mode {mode!r}: {model_name} has {len(table)} Keras layers; "
                       f"expected top0..top{len(table)}")
    top = {layer.name for layer in table[len(table) - arg:]}
    return {p: _head_path(p) or owner[p] in top for p in paths}
  out = {}
  order = {path: i for i, path in enumerate(owner)}  # errors name parameters in Keras order
  for p in sorted(paths, key=lambda p: order.get(p, len(order))):
    hits = [(trains, text) for regex, trains, text in arg if regex.search(p)]
    if len(hits) != 1:
      what = "no rule" if not hits else f"{len(hits)} rules ({', '.join(t for _, t in hits)})"
      raise ValueError(f"freeze mode {mode!r}: parameter {p!r} matches {what}; expected exactly "
                       f"one of the rules {[text for _, _, text in arg]}")
    out[p] = hits[0][0]
  return out


def trainable_mask(model_name: str, params: Mapping[str, Any], mode: str):
  """A pytree of bool with the structure of ``params`` (the 'params' collection): True = trains."""
  decision = _decide(model_name, _paths(params), mode)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decision["/".join(_key(k) for k in path)], params)


def _flat_mask(mask) -> dict[str, bool]:
  return {p: bool(v) for p, v in zip(_paths(mask), jax.tree_util.tree_leaves(mask))}


def frozen_bn_layers(model_name: str, mask) -> tuple[str, ...]:
  """The BatchNorm layers none of whose parameters train (Keras order), for ``frozen_bn``;
  ('*',) when every BatchNorm layer is frozen, () when none is."""
  flat = _flat_mask(mask)
  bn_layers = [layer for layer in registry.keras_layers(model_name) if layer.kind == BATCH_NORM]
  frozen = []
  for layer in bn_layers:
    paths = [f"{p[1]}/{p[2]}" for p in layer.params if p[0] == "params"]
    absent = [p for p in paths if p not in flat]
    if absent:
      raise ValueError(f"mask has no entry for {model_name!r} parameter {absent[0]!r}; expected a "
                       f"mask from trainable_mask({model_name!r}, ...)")
    if not any(flat[p] for p in paths):
      frozen.append(layer.name)
  if bn_layers and len(frozen) == len(bn_layers):
    return ("*",)
  return tuple(frozen)


def _size(leaf) -> int:
  return int(np.prod(getattr(leaf, "shape", np.shape(leaf))))


def count_trainable(params, mask) -> int:
  """Number of parameter entries (scalars) whose mask is True."""
  sizes = jax.tree_util.tree_map(lambda p, m: _size(p) if bool(m) else 0, params, mask)
  return int(sum(jax.tree_util.tree_leaves(sizes)))


def describe(model_name: str, params, mode: str) -> dict:
  """Counts for logs and run.json: trainable / total params with and without the head, the number
  of Keras layers (head included) with a trainable parameter, and of frozen BatchNorm layers."""
  mask = trainable_mask(model_name, params, mode)
  flat_mask = _flat_mask(mask)
  sizes = dict(zip(_paths(params), (_size(x) for x in jax.tree_util.tree_leaves(params))))
  owner = _table_owner(model_name)
  trainable_layers = {owner.get(p, p.split("/", 1)[0]) for p, m in flat_mask.items() if m}
  frozen_bn = frozen_bn_layers(model_name, mask)
  n_bn = sum(layer.kind == BATCH_NORM for layer in registry.keras_layers(model_name))

  def total(head: bool, trainable_only: bool) -> int:
    return sum(n for p, n in sizes.items()
               if (head or not _head_path(p)) and (flat_mask[p] or not trainable_only))

  return {
      "mode": mode,
      "trainable_params": total(True, True),
      "total_params": total(True, False),
      "trainable_backbone_params": total(False, True),
      "total_backbone_params": total(False, False),
      "trainable_layers": len(trainable_layers),
      "frozen_bn_layers": n_bn if frozen_bn == ("*",) else len(frozen_bn),
  }
