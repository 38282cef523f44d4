"""models.random_init: random variables drawn on the host, with the laws the layers declare,
against Flax's own initialisers and model.init as oracles."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radimagenet_jax import models
from radimagenet_jax.models import layers, random_init, registry


@pytest.mark.parametrize("shape", [(3, 3, 16, 32), (1, 1, 64, 8), (7, 7, 3, 64), (2048, 5)])
def test_kernel_std_is_flax_lecun_normals_scale(shape):
  key = jax.random.key(7)
  flax_values = layers.KERNEL_INIT(key, shape, jnp.float32)
  ours = jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) * random_init.kernel_std(shape)
  np.testing.assert_allclose(ours, flax_values, rtol=1e-6, atol=1e-7)


def _by_path(tree):
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_resnet50_matches_model_init_in_structure_constants_and_law():
  model = registry.get_spec("resnet50").module_cls(num_classes=3)
  ours = _by_path(models.init_variables(model, jax.random.key(0), 32))
  oracle = _by_path(registry.variables_only(registry._jitted_init(model, 32)(jax.random.key(0))))  # pylint: disable=protected-access
  assert ours.keys() == oracle.keys()
  for path, want in oracle.items():
    got = ours[path]
    assert got.shape == want.shape and got.dtype == want.dtype, path
    if path.endswith("['kernel']"):
      bound = 2.0 * random_init.kernel_std(want.shape) * (1 + 1e-6)
      assert float(jnp.max(jnp.abs(got))) <= bound, path
      if want.size >= 4096:  # the two draws have the same spread
        np.testing.assert_allclose(float(jnp.std(got)), float(jnp.std(want)), rtol=0.05, err_msg=path)
    else:
      np.testing.assert_array_equal(got, want, err_msg=path)


@pytest.mark.parametrize("name", ["densenet121", "inception_v3", "inception_resnet_v2"])
def test_every_model_is_drawn_on_the_host_with_fan_in_variance(name):
  model = registry.get_spec(name).module_cls(num_classes=2)
  shapes = registry.variable_shapes(model)
  drawn = random_init.draw(shapes, jax.random.key(1))
  assert drawn is not None   # every variable is of a declared kind: no compile
  for path, leaf in _by_path(drawn["params"]).items():
    if path.endswith("['kernel']") and leaf.size >= 8192:
      fan_in = np.prod(leaf.shape[:-1])
      np.testing.assert_allclose(leaf.std(), np.sqrt(1.0 / fan_in), rtol=0.05, err_msg=path)
      assert abs(leaf.mean()) < 0.05 * np.sqrt(1.0 / fan_in) * 10, path


def test_same_key_same_variables_other_key_other_variables():
  model = registry.get_spec("resnet50").module_cls(num_classes=2)
  shapes = registry.variable_shapes(model)
  a, b = random_init.draw(shapes, jax.random.key(5)), random_init.draw(shapes, jax.random.key(5))
  c = random_init.draw(shapes, jax.random.PRNGKey(6))   # raw uint32 keys work too
  ka, kb, kc = (x["params"]["conv1_conv"]["kernel"] for x in (a, b, c))
  np.testing.assert_array_equal(ka, kb)
  assert not np.array_equal(ka, kc)


class _Embedder(nn.Module):
  """A module with a variable random_init does not know ('embedding'): model.init is used."""
  min_size = 1

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Embed(4, 3)(jnp.zeros(x.shape[:1], jnp.int32))


def test_unknown_variable_kinds_fall_back_to_model_init():
  model = _Embedder()
  assert random_init.draw(registry.variable_shapes(model, 2), jax.random.key(0)) is None
  got = models.init_variables(model, jax.random.key(0), 2)
  want = model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                    jnp.zeros((1, 2, 2, 3)))
  # model.init's own law and key; jitted here, eager there: equal up to float rounding (1 ulp
  # apart in jax 0.12's normal sampler)
  np.testing.assert_allclose(got["params"]["Embed_0"]["embedding"],
                             want["params"]["Embed_0"]["embedding"], rtol=1e-6, atol=0)


def test_a_parameter_does_not_depend_on_which_others_exist():
  """The backbone of a model with and without its head is the same for one key."""
  shapes = {n: registry.variable_shapes(registry.get_spec("densenet121").module_cls(num_classes=n))
            for n in (0, 3)}
  a, b = (random_init.draw(shapes[n], jax.random.key(2)) for n in (0, 3))
  assert "predictions" in b["params"] and "predictions" not in a["params"]
  for path, leaf in _by_path(a["params"]).items():
    np.testing.assert_array_equal(leaf, _by_path(b["params"])[path], err_msg=path)


@pytest.mark.parametrize("shape", [(3, 3, 16, 32), (1, 1, 64, 8), (2048, 5)])
def test_glorot_limit_is_keras_and_flax_glorot_uniform(shape):
  key = jax.random.key(3)
  flax_values = nn.initializers.glorot_uniform()(key, shape, jnp.float32)
  ours = jax.random.uniform(key, shape, jnp.float32, -1.0) * random_init.glorot_limit(shape)
  np.testing.assert_allclose(ours, flax_values, rtol=1e-6, atol=1e-7)


def test_glorot_law_through_the_train_state_and_the_config():
  import types
  from radimagenet_jax.train import config as config_lib, optim, state as state_lib
  model = registry.get_spec("resnet50").module_cls(num_classes=2)
  cfg = types.SimpleNamespace(optimizer="sgd", learning_rate=0.1, momentum=0.9, adam_epsilon=1e-7,
                              weight_decay=0.0, schedule="constant")
  tx = optim.create_optimizer(cfg, optim.create_learning_rate_fn(cfg, 10, 0))
  state = state_lib.create(model, tx, 0, 32, init_law="glorot_uniform")
  for name in ("conv1_conv", "conv4_block1_2_conv", "predictions"):
    kernel = np.asarray(state.params[name]["kernel"])
    limit = random_init.glorot_limit(kernel.shape)
    assert np.abs(kernel).max() <= limit
    if kernel.size >= 8192:   # uniform: std = limit / sqrt(3)
      np.testing.assert_allclose(kernel.std(), limit / np.sqrt(3), rtol=0.05, err_msg=name)
  c = config_lib.base_config()
  c.init_law = "he_normal"
  with pytest.raises(ValueError, match="init_law"):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="init law 'he_normal': expected one of lecun_normal, glorot"):
    models.init_variables(model, jax.random.key(0), 32, law="he_normal")
