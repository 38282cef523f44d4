"""radimagenet_jax._host_malloc: when the settings apply, what they set (mallopt stubbed), and that
the step commands apply them unless switched off. The page faults they save are measured in
benchmarks/host_malloc_faults.py."""
from __future__ import annotations

import platform

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


def test_apply_sets_the_intended_mallopt_values_and_dispatch(monkeypatch):
  """The mechanism, with glibc's mallopt stubbed (its settings cannot be read back): the main
  arena never mmaps large blocks nor trims, and steps run on the calling thread. (That the freed
  step buffers are then reused, without page faults, is measured in
  benchmarks/host_malloc_faults.py, not asserted here.)"""
  import jax
  calls = []
  monkeypatch.setattr(hm, "_mallopt", lambda: lambda option, value: calls.append((option, value)) or 1)
  monkeypatch.setattr(hm, "_backends_started", lambda: False)
  monkeypatch.setattr(hm, "applied", False)
  before = jax.config.read("jax_cpu_enable_async_dispatch")
  try:
    assert hm.apply({}) is (platform.libc_ver()[0] == "glibc")
    if calls:
      # glibc <malloc.h>: M_MMAP_MAX = -4, M_TRIM_THRESHOLD = -1; -1 as size_t is SIZE_MAX.
      assert calls == [(-4, 0), (-1, -1)]
      assert jax.config.read("jax_cpu_enable_async_dispatch") is False
      assert hm.applied
  finally:
    jax.config.update("jax_cpu_enable_async_dispatch", before)


def test_apply_changes_no_dispatch_when_mallopt_refuses(monkeypatch):
  import jax
  monkeypatch.setattr(hm, "_mallopt", lambda: lambda option, value: 0)   # glibc's failure
  monkeypatch.setattr(hm, "_backends_started", lambda: False)
  monkeypatch.setattr(hm, "applied", False)
  before = jax.config.read("jax_cpu_enable_async_dispatch")
  assert hm.apply({}, ) is False
  assert jax.config.read("jax_cpu_enable_async_dispatch") == before and not hm.applied
  monkeypatch.setattr(hm, "_mallopt", lambda: None)                     # no mallopt at all
  assert hm.apply({}) is False


@pytest.mark.parametrize("command,switch,expected", [
    ("pretrain", None, True), ("sweep", "on", True), ("evaluate", None, True),
    ("gradcam", None, True), ("pretrain", "off", False), ("export", None, False)])
def test_step_commands_apply_the_options_unless_off(monkeypatch, command, switch, expected):
  from radimagenet_jax import _cpu_tuning, cli
  calls = []
  monkeypatch.setattr(hm, "apply", lambda environ=None: calls.append(True))
  monkeypatch.setattr(_cpu_tuning, "_decided", set())          # this process: not decided yet
  monkeypatch.setattr(_cpu_tuning, "_applied", {})
  monkeypatch.setattr(_cpu_tuning, "default_platform", lambda environ=None: "cpu")
  monkeypatch.setattr(hm, "_backends_started", lambda: False)
  monkeypatch.setattr(_cpu_tuning._xla_cpu_flags, "apply", lambda environ=None: False)
  if switch is None:
    monkeypatch.delenv(hm.SWITCH_ENV, raising=False)
  else:
    monkeypatch.setenv(hm.SWITCH_ENV, switch)
  with pytest.raises(SystemExit):
    cli.main([command, "--help"])
  assert calls == ([True] if expected else [])
