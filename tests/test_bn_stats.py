"""BatchNorm statistics report (radimagenet_jax.models.bn_stats): rows, flags and formatting."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import radimagenet_jax as rij
from radimagenet_jax.models import bn_stats


@functools.lru_cache(maxsize=None)
def fresh_bn_variables(name):
  """The BatchNorm variables of a freshly initialised model. Only they are returned, so the jitted
  init compiles without the convolutions and their random kernels (seconds, not a minute)."""
  spec = rij.models.get_spec(name)
  model = spec.module_cls(num_classes=2)
  bn = {l.name for l in rij.models.keras_layers(name) if l.kind == "BatchNormalization"}

  def init(rng):
    v = model.init({"params": rng}, jnp.zeros((1, spec.min_size, spec.min_size, 3)), train=False)
    return {"params": {k: p for k, p in v["params"].items() if k in bn},
            "batch_stats": v["batch_stats"]}
  return jax.tree.map(np.asarray, jax.jit(init)(jax.random.key(0)))


def copy(tree):
  return jax.tree.map(np.array, tree)


@pytest.mark.parametrize("name,count,gamma", [("resnet50", 53, True), ("inception_v3", 94, False)])
def test_fresh_variables_are_all_uninitialised(name, count, gamma):
  rows = bn_stats.batchnorm_report(fresh_bn_variables(name), name)
  table = rij.models.keras_layers(name)
  assert [r["index"] for r in rows] == [i for i, l in enumerate(table)
                                        if l.kind == "BatchNormalization"]
  assert len(rows) == count and all(r["flags"] == ["uninitialised"] for r in rows)
  first = rows[0]
  assert (first["name"], first["mean_min"], first["mean_max"], first["var_min"],
          first["var_max"], first["beta_min"], first["beta_max"]) == (table[first["index"]].name,
                                                                      0, 0, 1, 1, 0, 0)
  assert (first["gamma_min"], first["gamma_max"]) == ((1, 1) if gamma else (None, None))
  text = bn_stats.format_batchnorm_report(rows)
  assert text.splitlines()[-1] == (f"{count} BatchNorm layers, {count} flagged (uninitialised: "
                                   f"{count}, extreme variance: 0, non-finite: 0)")
  assert len(text.splitlines()) == count + 2


def test_planted_flags():
  variables = copy(fresh_bn_variables("resnet50"))
  stats, params = variables["batch_stats"], variables["params"]
  rng = np.random.default_rng(0)
  for layer in stats:                                  # trained-looking statistics everywhere
    stats[layer]["mean"] = rng.normal(0, 0.5, stats[layer]["mean"].shape).astype(np.float32)
    stats[layer]["var"] = rng.uniform(0.1, 3, stats[layer]["var"].shape).astype(np.float32)
  stats["conv1_bn"]["mean"][:] = 0.0                   # planted: never updated
  stats["conv1_bn"]["var"][:] = 1.0
  stats["conv2_block1_1_bn"]["var"][3] = 2e4           # above VAR_MAX
  stats["conv3_block2_2_bn"]["var"][0] = 1e-9          # below VAR_MIN
  params["conv4_block1_0_bn"]["bias"][5] = np.nan
  stats["conv5_block3_3_bn"]["var"][7] = np.inf        # non-finite and extreme
  rows = bn_stats.batchnorm_report(variables, "resnet50")
  flagged = {r["name"]: r["flags"] for r in rows if r["flags"]}
  assert flagged == {"conv1_bn": ["uninitialised"],
                     "conv2_block1_1_bn": ["extreme variance"],
                     "conv3_block2_2_bn": ["extreme variance"],
                     "conv4_block1_0_bn": ["non-finite"],
                     "conv5_block3_3_bn": ["extreme variance", "non-finite"]}
  row = next(r for r in rows if r["name"] == "conv2_block1_1_bn")
  assert row["var_max"] == pytest.approx(2e4) and row["channels"] == 64
  text = bn_stats.format_batchnorm_report(rows, only_flagged=True)
  lines = text.splitlines()
  assert lines[0].split() == ["#", "layer", "ch", "moving", "mean", "moving", "variance", "gamma",
                              "beta", "flags"]
  assert [line.split()[1] for line in lines[1:-1]] == list(flagged)
  assert lines[-1] == ("53 BatchNorm layers, 5 flagged (uninitialised: 1, extreme variance: 3, "
                       "non-finite: 2)")
  assert "2e+04" in lines[2] and "extreme variance" in lines[2]


def test_nothing_flagged_and_missing_variable():
  variables = copy(fresh_bn_variables("inception_v3"))
  for layer in variables["batch_stats"].values():
    layer["var"][:] = 0.5
  rows = bn_stats.batchnorm_report(variables, "inception_v3")
  assert not any(r["flags"] for r in rows)
  assert bn_stats.format_batchnorm_report(rows, only_flagged=True) == (
      "94 BatchNorm layers, 0 flagged (uninitialised: 0, extreme variance: 0, non-finite: 0)")
  del variables["batch_stats"]["mixed5_branch7x7_2_bn"]
  with pytest.raises(ValueError, match="variables lack batch_stats/mixed5_branch7x7_2_bn/mean"):
    bn_stats.batchnorm_report(variables, "inception_v3")
  with pytest.raises(ValueError, match="valid choices"):
    bn_stats.batchnorm_report(variables, "vgg16")
