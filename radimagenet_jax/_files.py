"""Writing files so that no reader ever sees half of one: a temporary file next to the target,
then an atomic rename. Used for every JSON / CSV record a run or a sweep writes."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_text_atomic(path: str, text: str) -> None:
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                             dir=os.path.dirname(path) or ".")
  try:
    with os.fdopen(fd, "w", newline="") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  """``obj`` as JSON (an ml_collections ConfigDict too) at ``path``, atomically."""
  if hasattr(obj, "to_json_best_effort"):
    text = obj.to_json_best_effort(indent=2, sort_keys=True)
  else:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
  write_text_atomic(path, text + "\n")
