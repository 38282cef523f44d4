"""The learning-rate schedule, the optimizer named by the config, and freezing through an optax mask.

Freezing (fine-tuning's `freeze` modes) wraps the WHOLE chain: frozen parameters get
`optax.set_to_zero()` (no update, no weight decay, no momentum) and the inner optimizer keeps no
state for them (`optax.multi_transform` masks its inner transformation). `to_frozen_state` /
`from_frozen_state` convert between that state and the unmasked chain's (`train.vmapped`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "adam", "adamw", "keras_adam")
SCHEDULES = ("cosine", "constant")


def create_learning_rate_fn(config, num_train_steps: int, warmup_steps: int):
  """Linear warmup from 0 to ``config.learning_rate`` over ``warmup_steps``, then cosine decay to
  0 at ``num_train_steps`` (or constant)."""
  if config.schedule not in SCHEDULES:
    raise ValueError(f"config.schedule={config.schedule!r}; valid choices: {', '.join(SCHEDULES)}.")
  warmup_steps = min(warmup_steps, max(num_train_steps - 1, 0))
  warmup = optax.linear_schedule(0.0, config.learning_rate, max(warmup_steps, 1))
  if config.schedule == "cosine":
    after = optax.cosine_decay_schedule(config.learning_rate,
                                        max(num_train_steps - warmup_steps, 1))
  else:
    after = optax.constant_schedule(config.learning_rate)
  if warmup_steps == 0:
    return after
  return optax.join_schedules([warmup, after], [warmup_steps])


def _decay_mask(params):
  # Weight decay on kernels only (ndim > 1): not on biases and BatchNorm scale/offset.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config, learning_rate_fn) -> optax.GradientTransformation:
  """SGD+momentum, Adam or AdamW. For sgd/adam, weight_decay is L2 added to the gradient (Keras
  kernel_regularizer-like); for adamw it is decoupled."""
  name, wd = config.optimizer, config.weight_decay
  if name == "sgd":
    tx = optax.sgd(learning_rate_fn, momentum=config.momentum or None, nesterov=False)
  elif name == "adam":
    tx = optax.adam(learning_rate_fn, b1=config.momentum, eps=config.adam_epsilon)
  elif name == "keras_adam":  # the official scripts' Adam (protocol=paper)
    tx = optax.chain(scale_by_keras_adam(config.momentum, 0.999, config.adam_epsilon),
                     optax.scale_by_learning_rate(learning_rate_fn))
  elif name == "adamw":
    return optax.adamw(learning_rate_fn, b1=config.momentum, eps=config.adam_epsilon,
                       weight_decay=wd, mask=_decay_mask)
  else:
    raise ValueError(f"config.optimizer={name!r}; valid choices: {', '.join(OPTIMIZERS)}.")
  if wd:
    tx = optax.chain(optax.add_decayed_weights(wd, mask=_decay_mask), tx)
  return tx


def scale_by_keras_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7
                       ) -> optax.GradientTransformation:
  """Keras's Adam direction: sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps). optax's adam
  adds eps to sqrt(v_hat) instead, i.e. Keras's eps is optax's eps / sqrt(1 - b2^t): the two part
  where gradients are near eps (a conv bias before BatchNorm), which a run against Keras shows."""

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, updates)
    nu = jax.tree.map(lambda v, g: v + (g * g - v) * (1 - b2), state.nu, updates)
    count = state.count + 1
    t = count.astype(jnp.float32)
    alpha = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    out = jax.tree.map(lambda m, v: alpha * m / (jnp.sqrt(v) + eps), mu, nu)
    return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def freeze(tx: optax.GradientTransformation, trainable) -> optax.GradientTransformation:
  """``tx`` for the parameters where the boolean pytree ``trainable`` is True; zero updates and no
  optimizer state for the others. ``trainable=None``: everything trains (``tx`` unchanged)."""
  if trainable is None:
    return tx
  labels = jax.tree.map(lambda t: "trainable" if t else "frozen", trainable)
  return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)


# ---- freeze's state <-> the unmasked chain's -----------------------------------------------------
# `freeze(tx, trainable).init(params)` holds `tx`'s state for the trainable parameters only: the
# same tree as `tx.init(params)` inside ``inner_states['trainable'].inner_state``, with
# `optax.MaskedNode` where a parameter is frozen. K runs with different masks in one vmapped step
# (`train.vmapped`) keep `tx`'s full state; their checkpoints hold the run alone's (`freeze`'s).
def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _trainable_part(frozen_state):
  return frozen_state.inner_states["trainable"]


def to_frozen_state(full_state, frozen_template):
  """``frozen_template`` (``freeze(tx, trainable)``'s state, or ``tx``'s when nothing is frozen)
  holding the values of ``full_state`` (``tx``'s), frozen parameters' entries left out."""
  if not hasattr(frozen_template, "inner_states"):   # freeze(tx, None) is tx
    return full_state
  part = _trainable_part(frozen_template)
  inner = jax.tree.map(lambda t, v: t if _is_masked(t) else v, part.inner_state, full_state,
                       is_leaf=_is_masked)
  return frozen_template._replace(inner_states=dict(
      frozen_template.inner_states, trainable=part._replace(inner_state=inner)))


def from_frozen_state(frozen_state, full_template):
  """``full_template`` (``tx``'s state) with the values of ``frozen_state`` (``freeze``'s); the
  entries of frozen parameters are zeros (what ``tx`` keeps for a parameter whose gradient is
  always exactly zero)."""
  if not hasattr(frozen_state, "inner_states"):
    return frozen_state
  return jax.tree.map(lambda v, t: jnp.zeros_like(t) if _is_masked(v) else v,
                      _trainable_part(frozen_state).inner_state, full_template,
                      is_leaf=_is_masked)
