"""radimagenet_jax._host_malloc: when the settings apply, and that with them a compiled step's
buffers stop page-faulting after the first runs (and fault on every run without them)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from radimagenet_jax import _host_malloc as hm


def test_switch():
  assert hm.requested({})                              # on by default
  assert hm.requested({"RADIMAGENET_JAX_HOST_MALLOC": "on"})
  assert not hm.requested({"RADIMAGENET_JAX_HOST_MALLOC": " OFF"})
  with pytest.raises(ValueError, match="RADIMAGENET_JAX_HOST_MALLOC='maybe'"):
    hm.requested({"RADIMAGENET_JAX_HOST_MALLOC": "maybe"})


def test_wanted_rules():
  assert hm.wanted({}, libc="glibc")
  assert not hm.wanted({}, libc="")                    # macOS, musl: nothing to set
  assert not hm.wanted({"RADIMAGENET_JAX_FAST_OPS": "off"}, libc="glibc")
  assert hm.wanted({"RADIMAGENET_JAX_FAST_OPS": "on"}, libc="glibc")
  assert not hm.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, libc="glibc")
  assert hm.wanted({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=1"}, libc="glibc")
  assert not hm.wanted({"MALLOC_ARENA_MAX": "2"}, libc="glibc")
  assert not hm.wanted({"MALLOC_TRIM_THRESHOLD_": "0"}, libc="glibc")
  assert not hm.wanted({"JAX_CPU_ENABLE_ASYNC_DISPATCH": "1"}, libc="glibc")


def test_does_nothing_once_jax_has_started():
  import jax
  jax.numpy.zeros(1).block_until_ready()               # this process's backends are up
  before = jax.config.read("jax_cpu_enable_async_dispatch")
  assert hm.apply({}) is False
  assert jax.config.read("jax_cpu_enable_async_dispatch") == before


PROBE = textwrap.dedent("""
    import json, resource
    import radimagenet_jax
    applied = radimagenet_jax.tune_host_malloc()   # what the commands do
    import jax, jax.numpy as jnp
    assert jax.config.read("jax_cpu_enable_async_dispatch") is not applied
    x = jnp.ones((16, 1024, 1024), jnp.float32)              # 64 MB: two 64 MB temporaries
    f = jax.jit(lambda x: jnp.sum(jnp.cumsum(x * 2.0, axis=0) * x, axis=(1, 2)))
    faults = []
    for _ in range(16):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      jax.block_until_ready(f(x))
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps(faults))
""")


def probe_faults(**env):
  full = {k: v for k, v in os.environ.items()
          if k not in ("GLIBC_TUNABLES", "RADIMAGENET_JAX_FAST_OPS", "JAX_CPU_ENABLE_ASYNC_DISPATCH")
          and not k.startswith("MALLOC_")}
  full.update(env, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True,
                       timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc settings")
def test_buffers_stay_mapped_between_runs():
  pages = 64 * 2**20 // 4096                           # one 64 MB temporary, in 4 KB pages
  on = probe_faults()
  off = probe_faults(RADIMAGENET_JAX_FAST_OPS="off")
  assert min(off[-8:]) > pages // 2, off               # glibc's default: fresh pages every run
  assert min(on[-8:]) < pages // 10, on                # the settings: the heap's pages reused


@pytest.mark.parametrize("command,switch,expected", [
    ("pretrain", None, True), ("sweep", "on", True), ("evaluate", None, True),
    ("gradcam", None, True), ("pretrain", "off", False), ("export", None, False)])
def test_step_commands_apply_the_options_unless_off(monkeypatch, command, switch, expected):
  from radimagenet_jax import cli
  calls = []
  monkeypatch.setattr(hm, "apply", lambda environ=None: calls.append(True))
  if switch is None:
    monkeypatch.delenv(hm.SWITCH_ENV, raising=False)
  else:
    monkeypatch.setenv(hm.SWITCH_ENV, switch)
  with pytest.raises(SystemExit):
    cli.main([command, "--help"])
  assert calls == ([True] if expected else [])
