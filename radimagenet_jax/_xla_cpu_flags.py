"""XLA:CPU convolutions on Eigen, not YNNPACK: set in ``XLA_FLAGS`` by ``rij.tune_cpu()``.

jaxlib 0.10-0.12's XLA:CPU sends convolutions to YNNPACK by default. Its 3x3 convolutions and their
gradients are slower than Eigen's: with ``--xla_cpu_experimental_ynn_fusion_type=
-individual_convolution`` (YNNPACK keeps the matrix products, Eigen takes the convolutions) the
train step is 1.38x faster for ResNet50 at 224 px and 1.15-1.26x for the other three models at
128 px, inference 1.14x (benchmarks/CPU.md).

XLA reads ``XLA_FLAGS`` once, when JAX starts its first backend, so this must run before that
(importing ``jax`` does not start a backend; creating an array does). Importing the package does
not call it (a library leaves its user's environment alone): ``rij.tune_cpu()`` (``_cpu_tuning``)
does, on the CPU backend only, and the commands call that at start. It changes nothing when
  * ``XLA_FLAGS`` already names ``xla_cpu_experimental_ynn_fusion_type`` (the user's choice wins),
  * ``RADIMAGENET_JAX_FAST_OPS=off`` (the switch for all CPU formulations, models/fast_ops.py),
  * the installed jaxlib is not one this value was checked with (an unknown flag value aborts
    the process at backend start, so it is never guessed).
On a GPU or TPU it would only concern the host CPU backend, so ``tune_cpu`` leaves it out there.
"""
from __future__ import annotations

import importlib.metadata
import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
FAST_OPS_ENV = "RADIMAGENET_JAX_FAST_OPS"   # models/fast_ops.py's switch; 'off' skips FLAG too
# jaxlib versions [low, high) this value was checked with: 0.10.2, 0.11.2 and 0.12.0.1 accept it
# and run convolutions faster with it (benchmarks/CPU.md); widen after checking a release.
_CHECKED = ((0, 10, 2), (0, 13, 0))


def fast_ops_setting(environ=os.environ) -> str:
  """``FAST_OPS_ENV`` as given, lower case ('auto' when unset or empty); 'off' turns off every CPU
  speed setting of the package (this flag, models/fast_ops.py, _host_malloc.py)."""
  return environ.get(FAST_OPS_ENV, "auto").strip().lower() or "auto"


def _version(text: str) -> tuple[int, ...]:
  parts = []
  for piece in text.split(".")[:3]:
    digits = "".join(c for c in piece if c.isdigit())
    parts.append(int(digits) if digits else 0)
  return tuple(parts)


def wanted(environ=os.environ, jaxlib_version: str | None = None) -> bool:
  """Whether ``FLAG`` should be added to ``environ['XLA_FLAGS']`` (see the module docstring)."""
  if "xla_cpu_experimental_ynn_fusion_type" in environ.get("XLA_FLAGS", ""):
    return False
  if fast_ops_setting(environ) == "off":
    return False
  if jaxlib_version is None:
    try:
      jaxlib_version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
      return False
  low, high = _CHECKED
  return low <= _version(jaxlib_version) < high


def apply(environ=os.environ, jaxlib_version: str | None = None) -> bool:
  """Appends ``FLAG`` to ``environ['XLA_FLAGS']`` when ``wanted``; returns whether it did."""
  if not wanted(environ, jaxlib_version):
    return False
  environ["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} {FLAG}".strip()
  return True
