"""``rij.tune_cpu()``: the package's XLA:CPU settings, applied by an explicit call, never at import.

Two process-wide settings make the steps faster on the CPU backend (benchmarks/CPU.md):
  * the XLA flag of ``_xla_cpu_flags`` (convolutions on Eigen, not YNNPACK), read by XLA when JAX
    starts its first backend;
  * ``_host_malloc`` (steps on the calling thread, glibc keeps their buffers mapped).
Both change the whole process (and the flag, through ``XLA_FLAGS``, its subprocesses), so a
library must not set them behind its user's back: the ``radimagenet-jax`` commands and the step
benchmarks call ``tune_cpu()`` at start, and a script may (docs/performance.md).

``tune_cpu`` applies them only where they help: when JAX will run on its CPU backend. That is
decided without starting a backend (starting one would read ``XLA_FLAGS`` before the flag is set):
``JAX_PLATFORMS`` (or ``jax.config.jax_platforms``) naming another platform first, or an installed
accelerator plugin (CUDA, ROCm, TPU) with its device present, means an accelerator; so does an
already started backend that is not the CPU. Nothing is applied once JAX has started (too late
for both). The call is idempotent: later calls apply nothing again and return the same record.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys
from typing import Callable, Mapping

from radimagenet_jax import _host_malloc, _xla_cpu_flags

# Accelerator PJRT plugins (module name prefix -> the device files whose presence makes JAX pick it).
_PLUGINS = {"jax_cuda": ("/dev/nvidiactl", "/dev/nvidia[0-9]*"),
            "jax_rocm": ("/dev/kfd",),
            "libtpu": ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*")}
_PLUGIN_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                   "jax_rocm7_plugin", "libtpu")

_applied: dict[str, str] = {}     # what this process got, by setting
_decided: set[str] = set()        # the settings already decided (applied or not)


def _installed_plugins() -> list[str]:
  found = [m for m in _PLUGIN_MODULES if importlib.util.find_spec(m) is not None]
  try:   # JAX's namespace for PJRT plugins (jax_plugins.xla_cuda12, ...)
    import jax_plugins  # pylint: disable=g-import-not-at-top
    import pkgutil  # pylint: disable=g-import-not-at-top
    found += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
  except ImportError:
    pass
  return found


def _device_present(prefix: str, environ: Mapping[str, str]) -> bool:
  if prefix == "jax_cuda" and environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
    return False
  return any(glob.glob(pattern) for pattern in _PLUGINS[prefix])


def _plugin_kind(name: str) -> str | None:
  name = name.replace("xla_", "jax_")   # jax_plugins.xla_cuda12 -> jax_cuda12
  return next((p for p in _PLUGINS if name.startswith(p)), None)


def _started_platform() -> str | None:
  """JAX's default backend when it has started one, else None (starts nothing)."""
  if not _host_malloc._backends_started():  # pylint: disable=protected-access
    return None
  import jax  # pylint: disable=g-import-not-at-top
  return jax.default_backend()


def _configured_platforms() -> str:
  """``jax.config.jax_platforms`` when JAX is imported (a script may have set it), else ''."""
  jax = sys.modules.get("jax")
  return (getattr(jax.config, "jax_platforms", None) or "") if jax is not None else ""


def default_platform(environ: Mapping[str, str] = os.environ,
                     plugins: Callable[[], list[str]] = _installed_plugins,
                     device_present: Callable[[str, Mapping[str, str]], bool] = _device_present,
                     started: Callable[[], str | None] = _started_platform,
                     configured: Callable[[], str] = _configured_platforms) -> str:
  """The platform JAX runs on by default ('cpu', 'gpu', 'tpu' or the name asked for), judged
  without starting a backend (see the module docstring)."""
  running = started()
  if running is not None:
    return running
  asked = environ.get("JAX_PLATFORMS", "") or configured()
  if asked:
    first = asked.split(",")[0].strip().lower()
    return "cpu" if first == "cpu" else first
  for name in plugins():
    kind = _plugin_kind(name)
    if kind is not None and device_present(kind, environ):
      return {"jax_cuda": "gpu", "jax_rocm": "gpu", "libtpu": "tpu"}[kind]
  return "cpu"


def tune_cpu(host_malloc: bool = True, environ=os.environ) -> dict[str, str]:
  """Applies the CPU settings where they help; returns what this process got, by setting
  (``{}``: nothing, e.g. on a GPU host). Call it before creating arrays.

  ``host_malloc=False`` leaves malloc and dispatch alone (the XLA flag only);
  ``RADIMAGENET_JAX_FAST_OPS=off`` turns both off, ``RADIMAGENET_JAX_HOST_MALLOC=off`` the second.
  """
  pending = [s for s in ("xla_flags", "host_malloc") if s not in _decided
             and (s == "xla_flags" or host_malloc)]
  if pending and default_platform(environ) == "cpu" and not _host_malloc._backends_started():  # pylint: disable=protected-access
    if "xla_flags" in pending and _xla_cpu_flags.apply(environ):
      _applied["xla_flags"] = _xla_cpu_flags.FLAG
    if "host_malloc" in pending and _host_malloc.apply_unless_off(environ):
      _applied["host_malloc"] = _host_malloc.describe()
  _decided.update(pending)
  return dict(_applied)
