"""Random variables of a model's shapes, for tests that need a model without training or Keras.

Shared by the Grad-CAM tests (CAM equality on every registered model, the `gradcam` command's
checkpoint and Keras-file runs).
"""
import jax
import jax.numpy as jnp
import numpy as np


def random_variables(model, x, seed=0):
  """Random variables of the model's shapes without compiling its init (jax.eval_shape only):
  kernels N(0, 1/fan_in), non-trivial BatchNorm scale/offset/statistics."""
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x[:1]))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    leaf = path[-1].key
    if leaf == "kernel":
      return rng.normal(0, np.sqrt(1.0 / np.prod(s.shape[:-1])), s.shape)
    if leaf in ("scale", "var"):
      return rng.uniform(0.5, 1.5, s.shape)
    return rng.normal(0, 0.1, s.shape)     # bias, mean

  variables = {k: shapes[k] for k in ("params", "batch_stats") if k in shapes}
  return jax.tree_util.tree_map_with_path(lambda p, s: jnp.asarray(fill(p, s), jnp.float32),
                                          variables)
