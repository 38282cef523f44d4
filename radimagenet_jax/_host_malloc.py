"""Keep XLA:CPU's per-run step buffers mapped between steps (on by default for the commands).

XLA:CPU allocates each run of a compiled step's temporary buffer (2.3 GB for ResNet50's train step
at 224 px, batch 16; about 3.8 GB for Inception-ResNet-v2's at 299 px) with ``posix_memalign`` on
the thread that runs the program. With JAX's default asynchronous dispatch that is one of the CPU
client's worker threads, whose glibc arena cannot hold such a block: glibc serves it from a fresh
``mmap`` and unmaps it on ``free``, so every step page-faults and zeroes gigabytes again (590,000
page faults per ResNet50 step, 927,000 per Inception-ResNet-v2 step; benchmarks/CPU.md).

``apply`` (``radimagenet_jax.tune_host_malloc``) makes the step run on the calling thread
(``jax_cpu_enable_async_dispatch=False``, which JAX honours for single-device programs) and tells
glibc's main arena, the calling thread's, not to ``mmap`` large blocks nor trim its heap
(``mallopt``: M_MMAP_MAX=0, M_TRIM_THRESHOLD=max). The freed buffer then stays in the heap and the
next step reuses it: no page faults after the first step, at the price of the process keeping its
peak heap (as TensorFlow's allocator does). The other threads keep their own arenas, so XLA's
multi-threaded compiler and Eigen's convolutions allocate as before (an earlier version forced
one arena for all threads, which slowed compiles and DenseNet121).

Nothing calls it at import: ``rij.tune_cpu()`` (``_cpu_tuning``) does, on the CPU backend only, and
the commands that run steps (``cli._STEP_COMMANDS``) and the step benchmarks call that at start,
unless ``RADIMAGENET_JAX_HOST_MALLOC=off`` (``apply_unless_off``). ``apply`` changes nothing, and
returns False, when
  * the C library is not glibc (macOS, musl),
  * ``GLIBC_TUNABLES`` sets ``glibc.malloc`` options, a ``MALLOC_*`` variable is set, or
    ``JAX_CPU_ENABLE_ASYNC_DISPATCH`` is set (the user's choice wins),
  * ``RADIMAGENET_JAX_FAST_OPS=off`` (the switch for all CPU speed settings, models/fast_ops.py),
  * JAX has already started its backends (the dispatch setting is read when the CPU client is
    created; call it before creating arrays).
Several CPU devices in one process (``--xla_force_host_platform_device_count``) run their programs
on worker threads whatever the setting; there it only costs nothing.
"""
from __future__ import annotations

import ctypes
import os
import platform

from radimagenet_jax._xla_cpu_flags import fast_ops_setting

# glibc <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
SWITCH_ENV = "RADIMAGENET_JAX_HOST_MALLOC"   # 'off': the commands leave malloc and dispatch alone
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))   # -1: SIZE_MAX, never trim
_DISPATCH_ENV = "JAX_CPU_ENABLE_ASYNC_DISPATCH"
_MALLOC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
               "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def wanted(environ=os.environ, libc: str | None = None) -> bool:
  """Whether ``apply`` sets the options, judged from the environment (see the module docstring)."""
  if fast_ops_setting(environ) == "off":
    return False
  if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
    return False
  if any(k in environ for k in _MALLOC_ENV + (_DISPATCH_ENV,)):
    return False
  if libc is None:
    libc = platform.libc_ver()[0] if platform.system() == "Linux" else ""
  return libc == "glibc"


def requested(environ=os.environ) -> bool:
  """Whether the commands should call ``apply`` (``SWITCH_ENV``: 'on', the default, or 'off')."""
  value = environ.get(SWITCH_ENV, "on").strip().lower() or "on"
  if value not in ("on", "off"):
    raise ValueError(f"{SWITCH_ENV}={value!r}: expected 'on' or 'off'")
  return value == "on"


applied = False   # whether ``apply`` set the options in this process (mallopt cannot be read back)


def describe() -> str:
  """The settings ``apply`` makes, in words (``tune_cpu``'s record)."""
  return ("mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=max) on the main arena; "
          "jax_cpu_enable_async_dispatch=False")


def _mallopt():
  """glibc's ``mallopt`` (a seam for tests: they stub it), or None."""
  try:
    fn = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return None
  fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return fn


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):   # another JAX layout: assume not started
    return False


def apply(environ=os.environ) -> bool:
  """Runs single-device programs on the calling thread and sets ``SETTINGS`` with ``mallopt``
  when ``wanted`` and JAX has not started; returns whether it did."""
  global applied
  if not wanted(environ) or _backends_started():
    return False
  mallopt = _mallopt()
  if mallopt is None or not all(mallopt(option, value) == 1 for option, value in SETTINGS):
    return False
  import jax
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  applied = True
  return True


def apply_unless_off(environ=os.environ) -> bool:
  """What the commands that run steps do at start: ``apply`` unless ``SWITCH_ENV=off``."""
  return requested(environ) and apply(environ)
