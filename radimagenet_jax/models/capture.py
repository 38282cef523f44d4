"""Read any Keras layer's output (the ``tap`` points) from a model run."""
from __future__ import annotations

from typing import Sequence


def capture(model, variables, x, layers: Sequence[str], train: bool = False, **apply_kwargs):
  """Returns ``(logits, {layer: activation})`` for the named Keras layers.

  Raises a ValueError listing the valid layer names when one does not exist.
  """
  # In training mode BatchNorm updates its statistics, so that collection must be mutable too.
  mutable = ["intermediates"] + (["batch_stats"] if train else [])
  out, state = model.apply(variables, x, train=train, mutable=mutable, **apply_kwargs)
  taps = state["intermediates"]["layers"]
  missing = [l for l in layers if l not in taps]
  if missing:
    raise ValueError(f"Unknown layer(s) {missing} for {type(model).__name__}; valid names "
                     f"(model.layers order): {', '.join(taps)}.")
  return out, {l: taps[l] for l in layers}
