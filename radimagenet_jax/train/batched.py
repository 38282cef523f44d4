"""Several runs of one architecture in ONE compiled step: `jax.vmap` over the runs.

The runs of a group differ only in data: their variables and optimizer states, their trainable
masks, learning rates, frozen BatchNorm layers and preprocessing modes. All of them see the same
batch (in_axes None), which is what they would each see alone (same train set, same loader seed,
same dropout keys `fold_in(rng, step)`). Everything carrying a leading run axis K:

  states      a `TrainState` whose leaves are stacked over runs (`stack`, `take`)
  RunsData    trainable (bool per parameter leaf), lr (float32), bn_frozen flags
  bad_step    int32 (K,): NO_BAD_STEP while a run is healthy, else the 1-based step at which its loss
              or parameters became non-finite; from then on the run's state stops changing

How the alone run's semantics carry over (`train_step` vs `steps.train_step`): a frozen parameter
enters the forward pass as ``where(mask, p, stop_gradient(p))`` (zero gradient) and its update is
discarded by ``where(mask, p + u, p)`` (bit-identical); the optimizer is the unmasked chain whose
learning rate is the run's traced value (`optimizer`), so Adam on the trainable parameters is the
alone run's arithmetic; a frozen BatchNorm layer reads the `bn_frozen` collection
(`models.batchnorm.BN_FROZEN`). The alone run's optimizer keeps no state for frozen parameters
(`optim.freeze`); `to_alone_opt_state` / `from_alone_opt_state` convert, so the checkpoints of a
batched run are those of the run alone.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from radimagenet_jax import distributed
from radimagenet_jax.data import augment_device
from radimagenet_jax.data.preprocess import preprocess
from radimagenet_jax.models.batchnorm import BN_FROZEN
from radimagenet_jax.models import fast_ops
from radimagenet_jax.train import optim, steps

NO_BAD_STEP = steps.NO_BAD_STEP


@flax.struct.dataclass
class RunsData:
  trainable: Any      # bool pytree like the params, each leaf (K,)
  lr: jax.Array       # float32 (K,)
  bn_frozen: Any      # {layer: {"frozen": bool (K,)}}, or {} (no BatchNorm layer frozen anywhere)


def stack(trees: Sequence[Any]):
  """One pytree whose leaves have a leading run axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@jax.jit
def take(tree, i):
  """Run ``i`` of a stacked pytree (one dispatch)."""
  return jax.tree.map(lambda x: x[i], tree)


def bn_frozen_flags(batch_stats, frozen_bn: Sequence[str]) -> dict:
  """{layer: {"frozen": bool}} for every BatchNorm layer of ``batch_stats``; ``frozen_bn`` as the
  models' field (layer names, or ('*',) for all)."""
  return {layer: {"frozen": np.bool_("*" in frozen_bn or layer in frozen_bn)}
          for layer in batch_stats}


def runs_data(masks: Sequence[Any], lrs: Sequence[float], batch_stats, frozen_bns) -> RunsData:
  """Stacks per-run masks (bool pytrees; None = all train), learning rates and frozen BatchNorm
  layers (tuples as the models' `frozen_bn`) into a `RunsData` of host arrays."""
  flags = [bn_frozen_flags(batch_stats, f) for f in frozen_bns]
  any_frozen = any(bool(v["frozen"]) for f in flags for v in f.values())
  ref = next(m for m in masks if m is not None) if any(m is not None for m in masks) else None
  masks = [m if m is not None else jax.tree.map(lambda _: True, ref) for m in masks]
  return RunsData(
      trainable=jax.tree.map(lambda *xs: np.asarray(xs, np.bool_), *masks),
      lr=np.asarray(lrs, np.float32),
      bn_frozen=jax.tree.map(lambda *xs: np.asarray(xs, np.bool_), *flags) if any_frozen else {})


class _WithLR:
  """A view of ``config`` whose learning_rate is ``lr`` (a float or a traced value)."""

  def __init__(self, config, lr):
    self._config, self.learning_rate = config, lr

  def __getattr__(self, name):
    return getattr(self._config, name)


def optimizer(config, lr, total_steps: int, warmup_steps: int) -> optax.GradientTransformation:
  """The config's optimizer and schedule with peak learning rate ``lr``, unmasked."""
  view = _WithLR(config, lr)
  return optim.create_optimizer(view, optim.create_learning_rate_fn(view, total_steps,
                                                                    warmup_steps))


# ---- The alone run's (masked) optimizer state <-> the batched (full) one --------------------------
_ALONE_PREFIX = ".inner_states['trainable'].inner_state"


def _by_path(tree) -> dict:
  return {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def to_alone_opt_state(full, alone_template):
  """The alone run's `optim.freeze` state holding ``full``'s values (frozen leaves dropped)."""
  values = _by_path(full)
  paths, treedef = jax.tree_util.tree_flatten_with_path(alone_template)
  leaves = []
  for path, _ in paths:
    key = jax.tree_util.keystr(path)
    if not key.startswith(_ALONE_PREFIX):
      raise ValueError(f"unexpected optimizer state entry {key!r}; expected optim.freeze's state")
    leaves.append(values[key[len(_ALONE_PREFIX):]])
  return jax.tree_util.tree_unflatten(treedef, leaves)


def from_alone_opt_state(alone, full_template):
  """``full_template`` with the values of the alone run's state; frozen leaves zero (what the
  batched step keeps there: a frozen parameter's gradient is exactly zero)."""
  values = {k[len(_ALONE_PREFIX):]: v for k, v in _by_path(alone).items()}
  return jax.tree_util.tree_map_with_path(
      lambda p, t: values.get(jax.tree_util.keystr(p), jnp.zeros_like(t)), full_template)


def _traced_plain(fn):
  """``fn`` traced with the plain `lax` convolutions (`fast_ops.forced(False)`).

  On XLA:CPU the alone step writes 1x1 convolutions as `dot_general` (models/fast_ops.py); under
  `jax.vmap` those become batched products with another summation order. The values agree to
  float32 rounding, but training-mode BatchNorm at the tests' tiny batches amplifies rounding (the
  gradient of a conv bias right before a BatchNorm is zero up to rounding: measured relative
  differences of 2e-3 on kernels and O(1) on those biases for ResNet50, batch 4, 32 px), while
  the vmapped plain convolutions agree with the alone run to 4e-5. On a GPU the plain ops are the
  default anyway."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with fast_ops.forced(False):
      return fn(*args, **kwargs)
  return wrapped


# ---- Steps ------------------------------------------------------------------------------------
def _run_inputs(batch, modes: tuple):
  """(inputs, vmap axis): the batch's images (warped first when it carries on-device augmentation,
  as `steps._inputs`) preprocessed once per distinct mode; stacked per run when the runs' modes
  differ, else shared."""
  images = augment_device.apply_from_batch(batch)
  if len(set(modes)) == 1:
    return (images if modes[0] is None else preprocess(images, modes[0])), None
  per_mode = {m: images if m is None else preprocess(images, m) for m in set(modes)}
  return jnp.stack([per_mode[m] for m in modes]), 0


def _tree_finite(tree):
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def train_step(states, metrics, bad_step, batch, data: RunsData, *, model, config, lengths,
               modes):
  """One update of every run on the shared ``batch``; returns (states, metrics, bad_step)."""
  images, image_axis = _run_inputs(batch, modes)
  labels = batch["label"]

  def one(state, metrics, bad, trainable, lr, bn_frozen, x):
    tx = optimizer(config, lr, *lengths)
    dropout_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      params = jax.tree.map(lambda p, t: jnp.where(t, p, jax.lax.stop_gradient(p)), params,
                            trainable)
      variables = {"params": params, "batch_stats": state.batch_stats}
      if bn_frozen:
        variables[BN_FROZEN] = bn_frozen
      logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                    rngs={"dropout": dropout_rng})
      return steps.cross_entropy(logits, labels).mean(), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u, t: jnp.where(t, p + u, p), state.params, updates,
                          trainable)
    finite = jnp.isfinite(loss) & _tree_finite(params)
    keep = (bad == NO_BAD_STEP) & finite
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)
    new_state = state.replace(step=state.step + 1, params=pick(params, state.params),
                              batch_stats=pick(batch_stats, state.batch_stats),
                              opt_state=pick(opt_state, state.opt_state))
    bad = jnp.where((bad == NO_BAD_STEP) & ~finite, state.step + 1, bad)
    return (new_state, steps.add_train_metrics(metrics, loss, logits, labels, finite, state.step),
            bad)

  return jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, image_axis))(
      states, metrics, bad_step, data.trainable, data.lr, data.bn_frozen, images)


def eval_step(variables, metrics, batch, *, model, modes):
  """`steps.eval_step` of every run on the shared (padded) eval ``batch``."""
  images, axis = _run_inputs(batch, modes)
  one = lambda v, m, x: steps.eval_step(v, m, dict(batch, image=x), model=model)
  return jax.vmap(one, in_axes=(0, 0, axis))(variables, metrics, images)


def predict_step(variables, batch, *, model, modes):
  """`steps.predict_step` of every run: (K, B, C) probabilities."""
  images, axis = _run_inputs(batch, modes)
  one = lambda v, x: steps.predict_step(v, dict(batch, image=x), model=model)
  return jax.vmap(one, in_axes=(0, axis))(variables, images)


def compile_train_step(model, config, lengths: tuple[int, int], modes: tuple, mesh):
  """jit of `train_step`: runs replicated, the batch split over 'data'; states and metrics donated."""
  rep, data = distributed.replicated(mesh), distributed.data_sharded(mesh)
  fn = _traced_plain(functools.partial(train_step, model=model, config=config,
                                      lengths=tuple(lengths), modes=tuple(modes)))
  return jax.jit(fn, in_shardings=(rep, rep, rep, data, rep), out_shardings=(rep, rep, rep),
                 donate_argnums=(0, 1))


def compile_eval_step(model, modes: tuple, mesh):
  rep, data = distributed.replicated(mesh), distributed.data_sharded(mesh)
  return jax.jit(_traced_plain(functools.partial(eval_step, model=model, modes=tuple(modes))),
                 in_shardings=(rep, rep, data), out_shardings=rep, donate_argnums=(1,))


def init_train_metrics(k: int):
  return stack([steps.init_train_metrics()] * k)


def init_eval_metrics(k: int, num_classes: int):
  return stack([steps.init_eval_metrics(num_classes)] * k)


@jax.jit
def all_finite(tree) -> jax.Array:
  """(K,) bool: every leaf of run k's slice of ``tree`` is finite."""
  return jax.vmap(_tree_finite)(tree)


def summarize(metrics, k: int) -> list[dict]:
  """Fetched stacked metric sums -> one `steps.summarize` dict per run."""
  host = jax.device_get(metrics)
  return [steps.summarize(jax.tree.map(lambda x: x[i], host)) for i in range(k)]
