"""glibc malloc settings that keep XLA:CPU's per-step buffers mapped (opt-in, for training).

XLA:CPU allocates each run of a compiled step's temporary buffer (2.3 GB for ResNet50's train step
at 224 px, batch 16) with ``posix_memalign`` on one of its worker threads. glibc serves such a
block from a fresh ``mmap`` (a thread's arena cannot hold it) and unmaps it on ``free``, so every
step page-faults and zeroes gigabytes again: 590,000 page faults per ResNet50 step, 12-28% of
the step's time (README "Performance on CPU"). With one arena, no ``mmap`` for large blocks and no
trimming, freed blocks stay in the heap and the next step reuses them: no page faults after the
first step, at the price of the process keeping its peak heap (as TensorFlow's allocator does).

``apply`` (``radimagenet_jax.tune_host_malloc``) calls ``mallopt`` (M_ARENA_MAX=1, M_MMAP_MAX=0,
M_TRIM_THRESHOLD=max). It is opt-in: the training commands (``pretrain``, ``finetune``, ``sweep``)
call it before JAX starts its threads when ``RADIMAGENET_JAX_HOST_MALLOC=on``. One arena also
serialises the many allocations of XLA's multi-threaded compiler and of Eigen's convolutions: on
the 2-core machine compiles took 10-40% longer, DenseNet121's train step at 224 px went from 3.1 to
4.2-5.6 s and some inference steps were slower (InceptionV3 at 299 px 1.15x), while the train
steps of ResNet50 (1.16x), InceptionV3 (1.14x) and Inception-ResNet-v2 (1.38x) gained.
``apply`` itself changes nothing when
  * the C library is not glibc (macOS, musl): ``mallopt`` is not called,
  * ``GLIBC_TUNABLES`` sets ``glibc.malloc`` options or a ``MALLOC_*_`` variable is set (the
    user's choice wins),
  * ``RADIMAGENET_JAX_FAST_OPS=off`` (the switch for all CPU speed settings, models/fast_ops.py).
Threads that allocated before the call keep their arenas, so call it before creating JAX arrays.
"""
from __future__ import annotations

import ctypes
import os
import platform

from radimagenet_jax._xla_cpu_flags import fast_ops_setting

# glibc <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SWITCH_ENV = "RADIMAGENET_JAX_HOST_MALLOC"   # 'on': the training commands call apply()
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))   # -1: SIZE_MAX, never trim
_MALLOC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
               "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def wanted(environ=os.environ, libc: str | None = None) -> bool:
  """Whether ``apply`` sets the options (see the module docstring)."""
  if fast_ops_setting(environ) == "off":
    return False
  if "glibc.malloc" in environ.get("GLIBC_TUNABLES", "") or any(k in environ for k in _MALLOC_ENV):
    return False
  if libc is None:
    libc = platform.libc_ver()[0] if platform.system() == "Linux" else ""
  return libc == "glibc"


def requested(environ=os.environ) -> bool:
  """Whether the user asked the training commands for these options (``SWITCH_ENV=on``)."""
  value = environ.get(SWITCH_ENV, "off").strip().lower()
  if value not in ("on", "off"):
    raise ValueError(f"{SWITCH_ENV}={value!r}: expected 'on' or 'off'")
  return value == "on"


def apply(environ=os.environ) -> bool:
  """Sets ``SETTINGS`` with ``mallopt`` when ``wanted``; returns whether every call succeeded."""
  if not wanted(environ):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(option, value) == 1 for option, value in SETTINGS)
