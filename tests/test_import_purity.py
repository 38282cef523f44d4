"""Importing the package changes nothing global; `rij.tune_cpu()` is the one explicit call that does,
on the CPU backend only, once.

Each check runs in a fresh interpreter (the conftest has already tuned this one). Third-party
libraries are imported first, in the order the package's modules import them, so that what is
compared is what OUR modules do (orbax, for one, configures the root logger through absl on import).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from radimagenet_jax import _cpu_tuning, _xla_cpu_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = ("radimagenet_jax", "tfds_builders")

ALL_MODULES = textwrap.dedent("""
    import importlib, pkgutil
    def all_modules():
      names = []
      for root in %r:
        names.append(root)
        names += [i.name for i in pkgutil.walk_packages(importlib.import_module(root).__path__,
                                                        root + ".")]
      return names
""" % (OURS,))

THIRD_PARTY = ALL_MODULES + textwrap.dedent("""
    import json, sys
    for name in all_modules():
      importlib.import_module(name)
    print(json.dumps([m for m in sys.modules if m.split(".")[0] not in %r]))
""" % (OURS,))

COMPARE = ALL_MODULES + textwrap.dedent("""
    import json, logging, os, sys
    for name in json.load(open(sys.argv[1])):
      try:
        importlib.import_module(name)
      except Exception:   # aliases and private submodules that only import in their context
        pass
    assert not any(m.split(".")[0] in %r for m in sys.modules), "imported before the snapshot"
    import jax

    def logging_state():
      state = {"<root>": [logging.root.level, [repr(h) for h in logging.root.handlers]]}
      for name, lg in logging.root.manager.loggerDict.items():
        if isinstance(lg, logging.Logger):
          state[name] = [lg.level, [repr(h) for h in lg.handlers], lg.propagate, lg.disabled]
      return state

    def snapshot():
      return {"environ": dict(os.environ),
              "jax.config": {k: repr(v) for k, v in jax.config.values.items()},
              "logging": logging_state()}

    before = snapshot()
    names = all_modules()
    for name in names:
      importlib.import_module(name)
    after = snapshot()
    changed = {}
    for part in before:
      for key in set(before[part]) | set(after[part]):
        was, now = before[part].get(key), after[part].get(key)
        # A logger our modules create (logging.getLogger(__name__)) is new, and unconfigured.
        if part == "logging" and was is None and now[:2] == [0, []] and now[2:] == [True, False]:
          continue
        if was != now:
          changed[f"{part}: {key}"] = [was, now]
    from radimagenet_jax import _host_malloc
    print(json.dumps({"modules": names, "changed": changed,
                      "host_malloc_applied": _host_malloc.applied}))
""" % (OURS,))


def _python(code, *args, env=None):
  full = dict(os.environ if env is None else env)
  full["PYTHONPATH"] = ROOT
  out = subprocess.run([sys.executable, "-c", code, *args], env=full, capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_every_module_changes_no_environment_config_logging_or_malloc(tmp_path):
  third_party = tmp_path / "third_party.json"
  env = _clean_env()   # as a user's process: the conftest's XLA:CPU flag not set
  third_party.write_text(json.dumps(_python(THIRD_PARTY, env=env)))
  result = _python(COMPARE, str(third_party), env=env)
  assert len(result["modules"]) > 100   # the walk found the whole package, tfds_builders too
  assert "radimagenet_jax.train.loop" in result["modules"]
  assert result["changed"] == {}
  assert result["host_malloc_applied"] is False


TUNE = textwrap.dedent("""
    import json, os, sys
    import radimagenet_jax as rij
    from radimagenet_jax import _host_malloc
    first = rij.tune_cpu()
    flags = os.environ.get("XLA_FLAGS", "")
    second = rij.tune_cpu()
    import jax
    out = {"first": first, "second": second, "flags": flags,
           "flags_after_second": os.environ.get("XLA_FLAGS", ""),
           "async_dispatch": jax.config.read("jax_cpu_enable_async_dispatch"),
           "host_malloc_applied": _host_malloc.applied}
    if os.environ.get("JAX_PLATFORMS") == "cpu":
      out["backend"] = jax.default_backend()   # starts the backend, after the flag
    print(json.dumps(out))
""")


def _clean_env(**extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "GLIBC_TUNABLES", "JAX_CPU_ENABLE_ASYNC_DISPATCH",
                      "RADIMAGENET_JAX_FAST_OPS", "RADIMAGENET_JAX_HOST_MALLOC")
         and not k.startswith("MALLOC_")}
  env.update(extra)
  return env


def test_tune_cpu_applies_the_cpu_settings_once_on_the_cpu_backend():
  if not _xla_cpu_flags.wanted({}):
    pytest.skip("this jaxlib is not one the XLA flag was checked with")
  result = _python(TUNE, env=_clean_env(JAX_PLATFORMS="cpu"))
  assert result["flags"] == _xla_cpu_flags.FLAG
  assert result["first"]["xla_flags"] == _xla_cpu_flags.FLAG
  assert result["second"] == result["first"]                       # idempotent
  assert result["flags_after_second"] == result["flags"]           # not appended twice
  assert result["backend"] == "cpu"
  glibc = __import__("platform").libc_ver()[0] == "glibc"
  assert ("host_malloc" in result["first"]) is glibc
  assert result["async_dispatch"] is (not glibc) and result["host_malloc_applied"] is glibc


def test_tune_cpu_leaves_an_accelerator_process_alone():
  # JAX_PLATFORMS names an accelerator: nothing is applied, and no backend was started to find out
  # (this machine has no GPU: starting the 'cuda' backend would raise).
  result = _python(TUNE, env=_clean_env(JAX_PLATFORMS="cuda", XLA_FLAGS="--xla_dump_to=/dev/null"))
  assert result["first"] == {} and result["second"] == {}
  assert result["flags"] == result["flags_after_second"] == "--xla_dump_to=/dev/null"
  assert result["async_dispatch"] is True and result["host_malloc_applied"] is False


def test_default_platform_is_read_without_starting_jax():
  never = lambda: None   # noqa: E731  no backend started
  none = lambda: ""      # noqa: E731  jax.config.jax_platforms unset
  cuda = lambda: ["jax_cuda12_plugin"]   # noqa: E731
  plat = lambda env, **kw: _cpu_tuning.default_platform(  # noqa: E731
      env, **dict(dict(plugins=lambda: [], device_present=lambda kind, env: True, started=never,
                       configured=none), **kw))
  assert plat({}) == "cpu"
  assert plat({"JAX_PLATFORMS": "cpu"}, plugins=cuda) == "cpu"
  assert plat({"JAX_PLATFORMS": "tpu,cpu"}) == "tpu"
  assert plat({}, configured=lambda: "cuda") == "cuda"         # jax.config.update by a script
  assert plat({}, plugins=cuda) == "gpu"                        # plugin and device: the GPU
  assert plat({}, plugins=cuda, device_present=lambda kind, env: False) == "cpu"
  assert plat({}, plugins=lambda: ["libtpu"]) == "tpu"
  assert plat({}, plugins=lambda: ["xla_cuda12"]) == "gpu"      # jax_plugins namespace name
  assert plat({"JAX_PLATFORMS": "cpu"}, started=lambda: "gpu") == "gpu"   # already running
  assert not _cpu_tuning._device_present("jax_cuda", {"CUDA_VISIBLE_DEVICES": ""})
