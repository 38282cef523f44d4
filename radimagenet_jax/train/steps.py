"""The jitted train and eval steps over the ('data',) mesh: the ONE train step (`train.vmapped`
runs K of them under ``jax.vmap``).

Parameters and optimizer state are replicated (``P()``), the batch is split over 'data' (``P('data')``).
jit/GSPMD inserts the cross-device reductions, so the loss mean and the BatchNorm batch statistics
are over the GLOBAL batch on any number of devices and processes (synchronised BatchNorm).
Metrics are summed into device-resident accumulators; the host fetches them every N steps.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from radimagenet_jax import distributed
from radimagenet_jax.data import augment_device
from radimagenet_jax.data.preprocess import preprocess
from radimagenet_jax.models.batchnorm import BN_FROZEN
from radimagenet_jax.train import losses
from radimagenet_jax.train.state import TrainState

NO_BAD_STEP = jnp.iinfo(jnp.int32).max   # first_bad_step when every loss so far was finite


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _correct(logits, labels, k):
  """1 where the label is among the top-k logits (k capped at the class count)."""
  k = min(k, logits.shape[-1])
  topk = jax.lax.top_k(logits, k)[1]
  return jnp.any(topk == labels[:, None], axis=-1)


def init_train_metrics():
  return {"loss_sum": jnp.zeros((), jnp.float32), "correct1": jnp.zeros((), jnp.int32),
          "correct5": jnp.zeros((), jnp.int32), "count": jnp.zeros((), jnp.int32),
          "steps": jnp.zeros((), jnp.int32),
          "first_bad_step": jnp.asarray(NO_BAD_STEP, jnp.int32)}


def init_eval_metrics(num_classes: int):
  return {"loss_sum": jnp.zeros((), jnp.float32), "correct1": jnp.zeros((), jnp.int32),
          "correct5": jnp.zeros((), jnp.int32), "count": jnp.zeros((), jnp.int32),
          "confusion": jnp.zeros((num_classes, num_classes), jnp.int32)}


def _inputs(batch, preprocess_mode):
  """The network input: pixels preprocessed here, on the device (the loader ships uint8 /
  single-channel pixels, see pipeline.make_loader(preprocess_on_device=True)), or as they come
  when preprocess_mode is None (already preprocessed). A batch that carries the augmentation's
  transforms (make_loader(augment_on_device=True): 'aug_matrix', 'aug_flip') is warped first."""
  images = augment_device.apply_from_batch(batch)
  return images if preprocess_mode is None else preprocess(images, preprocess_mode)


def train_step(state: TrainState, metrics, batch, *, model, tx, preprocess_mode=None,
               trainable=None, bn_frozen=None, images=None, loss="softmax_ce"):
  """One update on a global batch; returns (new state, updated metric sums).

  ``trainable``: None (all parameters train) or a boolean pytree like the params. Frozen
  parameters enter the forward pass through ``stop_gradient`` and keep their values whatever
  ``tx`` returns for them (``optim.freeze`` gives them zero updates). With Python / numpy booleans
  (one run) this is decided while tracing: no gradient is computed for frozen parameters at all
  (with ``freeze='head'`` the backbone's backward pass disappears from the compiled step).
  ``bn_frozen``: the BatchNorm layers in inference mode while training, as the model's
  ``bn_frozen`` collection (``bn_frozen_flags``), or None (none frozen).

  The K runs of `train.vmapped` are this function under ``jax.vmap``: there ``trainable`` and
  ``bn_frozen`` are traced booleans, so frozen parameters and layers are selected with
  ``jnp.where`` instead, and ``images`` carries each run's preprocessed input.
  ``loss``: a kind of ``losses.LOSSES``, averaged over the batch's examples (a partial last batch:
  its real examples only).
  """
  # A fresh dropout key per step that depends only on (seed, step): resumed runs draw the same.
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  x = _inputs(batch, preprocess_mode) if images is None else images

  def loss_fn(params):
    if trainable is not None:
      params = jax.tree.map(lambda p, t: _select(t, p, jax.lax.stop_gradient(p)), params,
                            trainable)
    variables = {"params": params, "batch_stats": state.batch_stats}
    if bn_frozen:
      variables[BN_FROZEN] = bn_frozen
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": dropout_rng})
    value = losses.per_example(logits, batch["label"], loss).mean()
    return value, (logits, updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if trainable is not None:
    params = jax.tree.map(lambda t, new, old: _select(t, new, old), trainable, params,
                          state.params)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, add_train_metrics(metrics, loss, logits, batch["label"],
                                      jnp.isfinite(loss), state.step)


def _select(flag, a, b):
  """``a`` where ``flag``, else ``b``: chosen while tracing for a Python / numpy bool, by
  ``jnp.where`` for a traced one."""
  if isinstance(flag, (bool, np.bool_)) or (isinstance(flag, np.ndarray) and flag.ndim == 0):
    return a if flag else b
  return jnp.where(flag, a, b)


def bn_frozen_flags(batch_stats, frozen_bn) -> dict:
  """The ``bn_frozen`` collection: {layer: {"frozen": bool}} for every BatchNorm layer of
  ``batch_stats``; ``frozen_bn``: layer names, or ('*',) for all (`finetune.freeze`); {} when
  none is frozen."""
  flags = {layer: {"frozen": np.bool_("*" in frozen_bn or layer in frozen_bn)}
           for layer in batch_stats}
  return flags if any(v["frozen"] for v in flags.values()) else {}


def add_train_metrics(metrics, loss, logits, labels, finite, step):
  """The train metric sums plus one step's; ``finite`` False marks ``step + 1`` (1-based) bad."""
  n = labels.shape[0]
  bad = jnp.where(finite, NO_BAD_STEP, step + 1)
  return {"loss_sum": metrics["loss_sum"] + loss * n,
          "correct1": metrics["correct1"] + _correct(logits, labels, 1).sum(),
          "correct5": metrics["correct5"] + _correct(logits, labels, 5).sum(),
          "count": metrics["count"] + n, "steps": metrics["steps"] + 1,
          "first_bad_step": jnp.minimum(metrics["first_bad_step"], bad)}


def eval_step(variables, metrics, batch, *, model, preprocess_mode=None, loss="softmax_ce"):
  """Adds one (padded) eval batch to the metric sums; ``batch['mask']`` is 0 for padding."""
  logits = model.apply(variables, _inputs(batch, preprocess_mode), train=False)
  labels, mask = batch["label"], batch["mask"]
  num_classes = metrics["confusion"].shape[0]
  preds = jnp.argmax(logits, -1)
  confusion = (jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * mask[:, None]).T @ \
      jax.nn.one_hot(preds, num_classes, dtype=jnp.int32)
  return {"loss_sum": metrics["loss_sum"] + (losses.per_example(logits, labels, loss) * mask).sum(),
          "correct1": metrics["correct1"] + (_correct(logits, labels, 1) * mask).sum(),
          "correct5": metrics["correct5"] + (_correct(logits, labels, 5) * mask).sum(),
          "count": metrics["count"] + mask.sum(),
          "confusion": metrics["confusion"] + confusion}


def compile_train_step(model, tx, mesh, preprocess_mode=None, trainable=None, bn_frozen=None,
                       loss="softmax_ce", replicate_batch=False):
  """jit of train_step with explicit shardings; state and metrics are donated.
  ``replicate_batch``: the batch is replicated, not split (a partial last batch whose size the
  device count does not divide; the loss and BatchNorm statistics are the same either way)."""
  rep, data = distributed.replicated(mesh), distributed.data_sharded(mesh)
  data = rep if replicate_batch else data
  fn = functools.partial(train_step, model=model, tx=tx, preprocess_mode=preprocess_mode,
                         trainable=trainable, bn_frozen=bn_frozen, loss=loss)
  return jax.jit(fn, in_shardings=(rep, rep, data), out_shardings=(rep, rep),
                 donate_argnums=(0, 1))


@functools.lru_cache(maxsize=8)
def compile_eval_step(model, mesh, preprocess_mode=None, loss="softmax_ce"):
  # Cached per (model, mesh): `evaluate` after `train_and_evaluate` in one process (tests,
  # notebooks) reuses the compiled step. Linen modules and meshes hash by value.
  rep, data = distributed.replicated(mesh), distributed.data_sharded(mesh)
  return jax.jit(functools.partial(eval_step, model=model, preprocess_mode=preprocess_mode,
                                   loss=loss),
                 in_shardings=(rep, rep, data),
                 out_shardings=rep, donate_argnums=(1,))


def predict_step(variables, batch, *, model, preprocess_mode=None):
  """Softmax probabilities (float32) of a global batch, in inference mode."""
  logits = model.apply(variables, _inputs(batch, preprocess_mode), train=False)
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


@functools.lru_cache(maxsize=8)
def compile_predict_step(model, mesh, preprocess_mode=None):
  rep, data = distributed.replicated(mesh), distributed.data_sharded(mesh)
  return jax.jit(functools.partial(predict_step, model=model, preprocess_mode=preprocess_mode),
                 in_shardings=(rep, data), out_shardings=data)


@jax.jit
def all_finite(tree) -> jax.Array:
  """True when every leaf of ``tree`` is finite (one reduction on the device)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def summarize(metrics) -> dict:
  """Fetched metric sums -> means (host floats)."""
  m = jax.device_get(metrics)
  count = max(int(m["count"]), 1)
  out = {"loss": float(m["loss_sum"]) / count, "top1": int(m["correct1"]) / count,
         "top5": int(m["correct5"]) / count, "count": int(m["count"])}
  if "first_bad_step" in m:
    out["first_bad_step"] = None if int(m["first_bad_step"]) == NO_BAD_STEP else int(
        m["first_bad_step"])
  if "confusion" in m:
    out["confusion"] = m["confusion"]
  return out
