"""Minor page faults per run of a compiled step with and without ``rij.tune_host_malloc()``.

    python benchmarks/host_malloc_faults.py

Each setting runs in its own fresh process (the settings are process-wide and must precede JAX's
start): a jitted function with two 64 MB temporaries runs 16 times; the script prints the faults
of the last 8 runs per setting. With glibc's defaults every run maps (and zeroes) its temporaries
afresh, about 16,000 faults of 4 KB per 64 MB; with the settings the heap's pages are reused
(radimagenet_jax/_host_malloc.py). A measurement, not a test: tests/test_host_malloc.py checks
the mechanism (the mallopt values and the dispatch setting).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = textwrap.dedent("""
    import json, resource
    import radimagenet_jax
    applied = radimagenet_jax.tune_host_malloc()
    import jax, jax.numpy as jnp
    x = jnp.ones((16, 1024, 1024), jnp.float32)              # 64 MB: two 64 MB temporaries
    f = jax.jit(lambda x: jnp.sum(jnp.cumsum(x * 2.0, axis=0) * x, axis=(1, 2)))
    faults = []
    for _ in range(16):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      jax.block_until_ready(f(x))
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"applied": applied, "faults": faults[-8:]}))
""")


def probe(**env) -> dict:
  full = {k: v for k, v in os.environ.items()
          if k not in ("GLIBC_TUNABLES", "RADIMAGENET_JAX_FAST_OPS", "JAX_CPU_ENABLE_ASYNC_DISPATCH")
          and not k.startswith("MALLOC_")}
  full.update(env, JAX_PLATFORMS="cpu", XLA_FLAGS="",
              PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True,
                       timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  pages = 64 * 2**20 // 4096
  print(f"one 64 MB temporary = {pages} pages of 4 KB; faults per run, last 8 of 16 runs")
  for name, env in (("tuned", {}), ("glibc defaults", {"RADIMAGENET_JAX_FAST_OPS": "off"})):
    result = probe(**env)
    print(f"{name:>15}: applied={result['applied']} faults={result['faults']}")


if __name__ == "__main__":
  main()
