"""Every name a package docstring lists exists: the `__init__.py` docstrings of radimagenet_jax,
its subpackages and tfds_builders are the map a newcomer reads first.

Checked, in each package's docstring:
  * `file.py` names and `folder/` names: files and folders of the package;
  * a backticked name followed by ':' or ' (' (how the docstrings introduce their modules):
    a submodule or an attribute of the package;
  * backticked dotted paths (`loop.fit`, `rij.models.create(...)`, `radimagenet_jax.data.pipeline`)
    whose first part is ours (a submodule or attribute of the package, a package of
    radimagenet_jax, `rij`): every later part is an attribute or a submodule;
  * `docs/<page>.md` and `README.md` references: files of the repository.
"""
from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = sorted(
    name for root in ("radimagenet_jax", "tfds_builders")
    for name in [root] + [i.name for i in pkgutil.walk_packages(
        importlib.import_module(root).__path__, root + ".") if i.ispkg]
    if name != "radimagenet_jax.configs")   # the packaged copy of configs/: not a code package

BACKTICKED = re.compile(r"`([^`\n]+)`")
INTRODUCED = re.compile(r"`([A-Za-z_]\w*)`(?=:| \()")
FILES = re.compile(r"(?<![\w/.-])([A-Za-z_]\w*\.py)\b")
FOLDERS = re.compile(r"`([A-Za-z_]\w*)/`")
DOC_PATHS = re.compile(r"\b((?:docs/[\w-]+|README)\.md)\b")
DOTTED = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(.*\))?$")


def _docstring(package: str) -> str:
  path = os.path.join(ROOT, *package.split("."), "__init__.py")
  return ast.get_docstring(ast.parse(open(path).read())) or ""


def _has(obj, name: str):
  """``obj.name`` as an attribute or, for a package, a submodule (imported); else None."""
  if hasattr(obj, name):
    return getattr(obj, name)
  if hasattr(obj, "__path__"):
    try:
      return importlib.import_module(f"{obj.__name__}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{obj.__name__}.{name}":
        raise
  return None


def _first(package, name: str):
  """What the first part of a dotted name means in ``package``'s docstring, or None (not ours)."""
  if name in ("rij", "radimagenet_jax"):
    return importlib.import_module("radimagenet_jax")
  if name == "tfds_builders":
    return importlib.import_module("tfds_builders")
  found = _has(package, name)
  if found is None and package.__name__.startswith("radimagenet_jax"):
    found = _has(importlib.import_module("radimagenet_jax"), name)   # a sibling package
  return found


def stale_names(package_name: str) -> list[str]:
  package = importlib.import_module(package_name)
  folder = os.path.dirname(package.__file__)
  doc = _docstring(package_name)
  missing = []
  for f in FILES.findall(doc):
    if not os.path.exists(os.path.join(folder, f)):
      missing.append(f)
  for d in FOLDERS.findall(doc):
    if not os.path.isdir(os.path.join(folder, d)):
      missing.append(d + "/")
  for p in DOC_PATHS.findall(doc):
    if not os.path.exists(os.path.join(ROOT, p)):
      missing.append(p)
  for name in INTRODUCED.findall(doc):
    if _has(package, name) is None:
      missing.append(name)
  for token in BACKTICKED.findall(doc):
    m = DOTTED.match(token.strip())
    if not m:
      continue
    head, *rest = m.group(1).split(".")
    if rest[-1] in ("py", "md", "h5", "json", "csv", "onnx", "keras"):
      continue   # a file name (checked above when it is a module file)
    obj = _first(package, head)
    if obj is None:
      continue   # not a name of ours (e.g. Keras's `model.save`)
    for part in rest:
      obj = _has(obj, part)
      if obj is None:
        missing.append(token)
        break
  return missing


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_a_package_docstring_lists_exists(package):
  assert _docstring(package), f"{package} has no docstring"
  assert stale_names(package) == [], package


def test_the_check_catches_stale_names(monkeypatch):
  """The stale names issue 29 found in train/__init__.py, put back, are reported."""
  stale = ('Modules: `config` (fields), `evaluation` (metrics).\n\n'
           '    summary = loop.train_and_evaluate(config, workdir)\n'
           '`loop.evaluate`, `rij.train.checkpoint`, batches.py, docs/FIDELITY.md')
  monkeypatch.setitem(globals(), "_docstring", lambda _: stale)
  assert sorted(stale_names("radimagenet_jax.train")) == sorted(
      ["batches.py", "docs/FIDELITY.md", "evaluation", "loop.evaluate", "rij.train.checkpoint"])
