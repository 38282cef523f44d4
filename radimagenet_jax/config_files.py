"""Config files (`configs/*.py`): finding them, and describing them for `--help`.

`--config=configs/finetune.py:busi` is read from the working directory when that path exists, else
from the installed package (`radimagenet_jax/configs` is the repository's `configs/` folder), so the
README's commands work from any directory; a path into any other folder must exist. `describe` prints a config file's usage, variants and
every field with its default, for the command's `--help`.
"""
from __future__ import annotations

import importlib.util
import os

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def resolve(spec: str) -> str:
  """'configs/finetune.py:busi' -> an existing path (+ ':busi'); raises naming what was tried.

  Only a bare name (`finetune.py`, or `configs/finetune.py` as the README writes it) falls back
  to the installed package: a path into another folder that exists nowhere
  (`my_experiments/finetune.py`) is an error, not silently the packaged file of the same name."""
  path, sep, arg = spec.partition(":")
  if os.path.isfile(path):
    return spec
  available = sorted(f for f in os.listdir(PACKAGE_DIR) if f.endswith(".py") and f != "__init__.py") \
      if os.path.isdir(PACKAGE_DIR) else []
  folder = os.path.dirname(os.path.normpath(path))
  if folder not in ("", "configs"):
    raise FileNotFoundError(f"--config={spec}: no file {path!r} (from {os.getcwd()}); only a bare "
                            f"name falls back to the installed package's configs "
                            f"(configs/{', configs/'.join(available)}).")
  packaged = os.path.join(PACKAGE_DIR, os.path.basename(path))
  if os.path.isfile(packaged):
    return packaged + sep + arg
  raise FileNotFoundError(f"--config={spec}: no file {path!r} here nor in the installed package; "
                          f"expected one of configs/{', configs/'.join(available)}.")


def load_module(path: str):
  name = "radimagenet_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def describe(spec: str) -> str:
  """The config file's docstring and its fields with defaults (for the variant in ``spec``)."""
  resolved = resolve(spec)
  path, _, arg = resolved.partition(":")
  module = load_module(path)
  config = module.get_config(arg or None)
  lines = [(module.__doc__ or "").strip(), "", f"Fields of {os.path.basename(path)}"
           + (f":{arg}" if arg else "") + " with their defaults (override with --config.KEY=VALUE):"]
  flat = _flatten(config.to_dict())
  width = max(len(k) for k in flat)
  lines += [f"  {k:<{width}}  {v!r}" for k, v in flat.items()]
  return "\n".join(lines)


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
