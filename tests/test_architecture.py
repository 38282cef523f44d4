"""The package's architecture: imports point one way (README "Layout"), with one documented
exception, and nothing generic is installed at the top level of site-packages."""
import ast
import configparser
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "radimagenet_jax"
# The one import against the layering, inside a function: models.create(weights="file.h5") loads
# Keras files through keras_io, which builds on the model tables.
ALLOWED = {("radimagenet_jax.models.registry", "radimagenet_jax.keras_io")}
# Layers from low to high (README); a module may import its own layer and the ones below it.
LAYERS = [("checkpoints", "distributed", "config_arg", "_lazy", "_files",
           "_xla_cpu_flags", "_host_malloc", "_cpu_tuning", "_collections"), ("models",), ("keras_io",),
          ("data",), ("train",), ("pretrain", "finetune", "evaluate", "explain", "export",
                                  "config_files", "loading"), ("cli",)]


def _modules():
  mods = {}
  for d, dirs, files in os.walk(os.path.join(ROOT, PKG)):  # not into the configs symlink
    dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(d, x)) and x != "__pycache__"]
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        mods[name.removesuffix(".__init__")] = path
  return mods


def _edges(mods):
  def resolve(name):
    while name and name not in mods:
      name = name.rpartition(".")[0]
    return name or None

  edges = {m: set() for m in mods}
  for m, path in mods.items():
    package = m if path.endswith("__init__.py") else m.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path).read())):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(parts + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
      for n in names:
        target = resolve(n) if n.startswith(PKG) else None
        # A package's own __init__ (its parent) is not an edge back up.
        if target and target != m and not m.startswith(target + "."):
          edges[m].add(target)
  return edges


def _layer(module):
  top = module.split(".")[1] if "." in module else ""
  for i, names in enumerate(LAYERS):
    if top in names:
      return i
  raise AssertionError(f"{module}: in no layer of the README's order; add it to LAYERS")


def test_imports_point_from_low_to_high_layers():
  edges = _edges(_modules())
  upward = sorted((a, b) for a, targets in edges.items() for b in targets
                  if "." in a and "." in b and _layer(b) > _layer(a) and (a, b) not in ALLOWED)
  assert upward == []


def test_no_import_cycles_beyond_the_documented_one():
  edges = _edges(_modules())
  for a, b in ALLOWED:
    edges[a].discard(b)
  index, low, stack, on, cycles = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in edges[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        cycles.append(sorted(comp))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  assert cycles == []


def test_the_allowed_lazy_import_exists_and_is_inside_a_function():
  # If the exception disappears, remove it from ALLOWED (and the README) instead of keeping it.
  source = open(os.path.join(ROOT, PKG, "models", "registry.py")).read()
  tree = ast.parse(source)
  top_level = {a.module for a in tree.body if isinstance(a, ast.ImportFrom)}
  assert "radimagenet_jax" not in top_level or "keras_io" not in source.split("def create")[0]
  assert "from radimagenet_jax import keras_io" in source.split("def create")[1]


def test_no_generic_top_level_package_is_installed():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  include = cfg["options.packages.find"]["include"].split()
  tops = {name.split(".")[0] for name in include}
  assert tops == {"radimagenet_jax", "tfds_builders"}
  # The configs travel inside the package (radimagenet_jax/configs -> ../configs).
  assert os.path.isfile(os.path.join(ROOT, PKG, "configs", "finetune.py"))


@pytest.mark.parametrize("package", ["models", "keras_io", "data", "train", "finetune",
                                     "evaluate", "explain", "export"])
def test_every_package_says_what_lives_there(package):
  doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, PKG, package, "__init__.py")).read()))
  assert doc and len(doc) > 80
