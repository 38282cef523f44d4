"""The model variables' collections, one definition for the models and the checkpoints: what
``models.create`` returns and what a checkpoint's ``variables`` item holds."""
from __future__ import annotations

from typing import Any, Mapping

VARIABLE_COLLECTIONS = ("params", "batch_stats")


def variables_only(tree: Mapping[str, Any]) -> dict[str, Any]:
  """The model variables ({'params', 'batch_stats'}) of a larger collection dict."""
  return {k: tree[k] for k in VARIABLE_COLLECTIONS if k in tree}
