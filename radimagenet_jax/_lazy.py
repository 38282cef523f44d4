"""The one lazy submodule loader used by the package ``__init__`` files.

Packages import their heavy submodules (grain, TFDS, Orbax, matplotlib) on first attribute access,
so that ``import radimagenet_jax`` and ``radimagenet-jax --help`` stay fast.
"""
from __future__ import annotations

import importlib
from typing import Callable, Iterable, Mapping


def attach(package: str, submodules: Iterable[str] = (),
           aliases: Mapping[str, str] | None = None) -> Callable[[str], object]:
  """Returns a module-level ``__getattr__`` for ``package``.

  ``submodules`` are names below ``package``; ``aliases`` map an attribute to any module path
  (old names kept working after a move, e.g. ``'gradcam': 'radimagenet_jax.explain.gradcam'``).
  """
  targets = {name: f"{package}.{name}" for name in submodules}
  targets.update(aliases or {})

  def __getattr__(name: str):
    if name in targets:
      return importlib.import_module(targets[name])
    raise AttributeError(f"module {package!r} has no attribute {name!r}")
  return __getattr__
