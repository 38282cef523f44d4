"""The ``:arg`` of a config file (``--config=configs/FILE.py:ARG``), big_vision style.

ARG is a comma-separated list of variant names and ``key=value`` settings, e.g.
``demo,model=densenet121``. Config files call ``parse`` with the variants and setting keys they
accept; anything else is an error naming the file, the item and the valid choices.
"""
from __future__ import annotations

from typing import Iterable


def parse(arg: str | None, *, variants: Iterable[str], settings: Iterable[str],
          where: str) -> tuple[set[str], dict[str, str]]:
  """'demo,model=densenet121' -> ({'demo'}, {'model': 'densenet121'})."""
  variants, settings = tuple(variants), tuple(settings)
  setting_help = ", ".join(f"{k}=NAME" for k in settings)
  found, values = set(), {}
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    if "=" in item:
      key, value = item.split("=", 1)
      if key not in settings:
        raise ValueError(f"{where}: unknown setting {key!r} in ':{arg}'; valid settings: "
                         f"{setting_help} (other fields: --config.{key}={value}).")
      values[key] = value
    elif item in variants:
      found.add(item)
    else:
      raise ValueError(f"{where}: unknown variant {item!r} in ':{arg}'; valid variants: "
                       f"{', '.join(variants)} and {setting_help}.")
  return found, values
