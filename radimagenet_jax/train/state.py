"""The train state: everything a step reads and writes, as one pytree of (replicated) arrays."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from radimagenet_jax import models


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: number of updates applied
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array           # base dropout key (raw uint32 key data); folded with `step` each step

  @property
  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}

  def train_part(self):
    """What checkpoints store next to the (inference) variables: the optimizer state, step, rng
    and the raw BatchNorm running statistics the next step continues from."""
    return {"opt_state": self.opt_state, "step": self.step, "rng": self.rng,
            "batch_stats": self.batch_stats}

  def replace_from(self, variables, train_part):
    return self.replace(params=variables["params"], batch_stats=train_part["batch_stats"],
                        opt_state=train_part["opt_state"], step=train_part["step"],
                        rng=train_part["rng"])


def bn_bias_corrected(batch_stats, step: int, momentum: float = 0.99):
  """Running BatchNorm statistics with the bias of their initial values removed.

  Keras-style running averages start at mean 0 / var 1 and move by ``1 - momentum`` per step, so
  after ``step`` steps from scratch they still weigh the initial values by ``momentum**step``
  (0.99**120 = 0.30): a short run evaluates with statistics that are mostly made up. Dividing that
  weight out (as Adam does for its moments) gives the exponential average of the batch statistics
  actually seen. A no-op for long runs (0.99**2000 < 2e-9); only valid when training started from
  initialised (not loaded) statistics.
  """
  weight = momentum ** int(step)
  if step <= 0 or weight < 1e-12:
    return batch_stats
  def correct(path, x):
    name = getattr(path[-1], "key", None)
    if name == "mean":
      return x / (1.0 - weight)
    if name == "var":
      return (x - weight) / (1.0 - weight)
    return x
  return jax.tree_util.tree_map_with_path(correct, batch_stats)


def create(model, tx: optax.GradientTransformation, seed: int, image_size: int,
           sharding=None, variables=None, init_law: str = "lecun_normal") -> TrainState:
  """The initial train state, placed with ``sharding`` (replicated on the mesh in training)
  directly by the jitted init, never via host copies.

  ``variables``: starting {'params', 'batch_stats'} (fine-tuning: loaded weights with a fresh
  head); None initialises them randomly from ``seed`` (pretraining), the kernels from
  ``init_law`` (``models.random_init.LAWS``).
  """
  init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))

  if variables is None:
    variables = models.init_variables(model, init_key, image_size, law=init_law)

  def init(given):
    params = given["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=given.get("batch_stats", {}), opt_state=tx.init(params),
                      rng=dropout_key)
  return jax.jit(init, out_shardings=sharding)(variables)
