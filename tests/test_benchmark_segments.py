"""benchmarks/segments.py: its stage names are layers of the models, and a prefix model computes
exactly the full model's activation at its cut (so a segment times what it says)."""
from __future__ import annotations

import jax
import numpy as np

from benchmarks import segments
from radimagenet_jax import models
from radimagenet_jax.models.capture import capture


def test_every_stage_is_a_layer_of_its_model_and_the_last_is_the_feature_layer():
  for name, stages in segments.STAGES.items():
    layers = [l.name for l in models.keras_layers(name)]
    assert all(s in layers for s in stages), (name, [s for s in stages if s not in layers])
    assert [layers.index(s) for s in stages] == sorted(layers.index(s) for s in stages), name
    assert stages[-1] == models.get_spec(name).feature_layer


def test_a_prefix_equals_the_full_models_activation_at_its_cut():
  base = models.get_spec("resnet50").module_cls
  full = base(num_classes=0)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = full.init(jax.random.key(0), x)
  _, taps = capture(full, variables, x, ["conv2_block3_out"])
  prefix = segments._prefix_model(base, "conv2_block3_out")
  sub = {k: {n: v for n, v in variables[k].items() if n.startswith(("conv1", "conv2"))}
         for k in ("params", "batch_stats")}
  out = prefix.apply(sub, x)   # raises if the prefix needs a variable past its cut
  np.testing.assert_array_equal(out, taps["conv2_block3_out"])
