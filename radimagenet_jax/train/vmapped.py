"""K runs of one architecture in ONE compiled step: `steps.train_step` under `jax.vmap`.

`loop.fit_runs` trains them with the same loop as `loop.fit`; what differs is only what this module
vmaps: the step (`train_step`, `eval_step`) and the state (`Vmapped`, whose leaves carry a leading
run axis K). The runs of a group differ only in data: their variables and optimizer states,
trainable masks, learning rates, frozen BatchNorm layers and preprocessing modes (`check_group`).
All of them see the same batch, which is what they would each see alone (same train set, same
loader seed, same dropout keys `fold_in(rng, step)`). Carrying the run axis:

  states      a `TrainState` whose leaves are stacked over runs (`stack`, `take`)
  RunsData    trainable (bool per parameter leaf), lr (float32), bn_frozen flags
  bad_step    int32 (K,): NO_BAD_STEP while a run is healthy, else the 1-based step at which its loss
              or parameters became non-finite; from then on the run's state stops changing

How the alone run's semantics carry over: `steps.train_step` takes the mask and the frozen
BatchNorm layers as traced booleans (``jnp.where`` where the run alone decides while tracing); the
optimizer is the unmasked chain whose learning rate is the run's traced value (`optimizer`), so
Adam on the trainable parameters is the alone run's arithmetic. The alone run's optimizer keeps no
state for frozen parameters (`optim.freeze`); `optim.to_frozen_state` / `from_frozen_state`
convert, so the checkpoints of a batched run are those of the run alone. On XLA:CPU the vmapped
steps trace the models with the plain `lax` convolutions (`_traced_plain`: the measured reason).
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
from radimagenet_jax.models import fast_ops
from radimagenet_jax.train import optim, state as state_lib, steps

NO_BAD_STEP = steps.NO_BAD_STEP
# Config fields that may differ between the runs of a group; every other field must agree.
PER_RUN_FIELDS = ("learning_rate", "preprocess", "init", "freeze")


def check_group(configs: Sequence[Any], tasks: Sequence[Any]) -> None:
  """Raises ValueError naming the first field (other than PER_RUN_FIELDS) that differs, or a
  train set of another size."""
  ref = configs[0].to_dict()
  for c in configs[1:]:
    other = c.to_dict()
    for key in sorted(set(ref) | set(other)):
      if key not in PER_RUN_FIELDS and ref.get(key) != other.get(key):
        raise ValueError(f"runs of one batched group differ in config.{key} ({ref.get(key)!r} vs "
                         f"{other.get(key)!r}); expected only {', '.join(PER_RUN_FIELDS)} to differ")
  if any(len(t.train_source) != len(tasks[0].train_source) for t in tasks):
    raise ValueError("runs of one batched group have train sets of different sizes; expected one "
                     "train set (the same data set, fold, val_fraction and seed)")


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


def runs_data(masks: Sequence[Any], lrs: Sequence[float], batch_stats, frozen_bns) -> RunsData:
  """Stacks per-run masks (bool pytrees; None = all train), learning rates and frozen BatchNorm
  layers (tuples as `loop.Task.frozen_bn`) into a `RunsData` of host arrays."""
  every = {layer: {"frozen": np.bool_(False)} for layer in batch_stats}
  flags = [dict(every, **steps.bn_frozen_flags(batch_stats, f)) for f in frozen_bns]
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
  """`steps.train_step` of every run on the shared ``batch``; returns (states, metrics, bad_step).
  A run whose loss or parameters become non-finite keeps its last finite state."""
  images, image_axis = _run_inputs(batch, modes)

  def one(state, metrics, bad, trainable, lr, bn_frozen, x):
    new, metrics = steps.train_step(state, metrics, batch, model=model,
                                    tx=optimizer(config, lr, *lengths), trainable=trainable,
                                    bn_frozen=bn_frozen, images=x)
    # While the run is healthy, every step since the metrics' reset had a finite loss.
    finite = (metrics["first_bad_step"] == NO_BAD_STEP) & _tree_finite(new.params)
    keep = (bad == NO_BAD_STEP) & finite
    pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(keep, u, v), a, b)  # noqa: E731
    new = new.replace(params=pick(new.params, state.params),
                      batch_stats=pick(new.batch_stats, state.batch_stats),
                      opt_state=pick(new.opt_state, state.opt_state))
    return new, metrics, jnp.where((bad == NO_BAD_STEP) & ~finite, state.step + 1, bad)

  return jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, image_axis))(
      states, metrics, bad_step, data.trainable, data.lr, data.bn_frozen, images)


def eval_step(variables, metrics, batch, *, model, modes):
  """`steps.eval_step` of every run on the shared (padded) eval ``batch``."""
  images, axis = _run_inputs(batch, modes)
  one = lambda v, m, x: steps.eval_step(v, m, dict(batch, image=x), model=model)  # noqa: E731
  return jax.vmap(one, in_axes=(0, 0, axis))(variables, metrics, images)


def _traced_plain(fn):
  """``fn`` traced with the plain `lax` convolutions (`models.fast_ops.forced(False)`).

  On XLA:CPU the run alone writes 1x1 convolutions as `dot_general` (models/fast_ops.py); under
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


# ---- The state the loop drives ----------------------------------------------------------------
class Vmapped:
  """The K runs' stacked state and their vmapped steps, for `loop.fit_runs` (the interface of
  `loop.OneRun`: ``train``, ``bad_steps``, ``train_metrics``, ``finite_params``,
  ``inference_variables``, ``run_variables``, ``train_part``, ``evaluate``)."""

  def __init__(self, model, runs, mesh, lengths: tuple[int, int], start, data_iter):
    config = runs[0].config
    # The paper protocol's Keras semantics (finetune.protocols) run alone only.
    unsupported = [f"{key}={config.get(key)!r}" for key, default in (("loss", "softmax_ce"),
                                                                      ("partial_batch", False))
                   if config.get(key, default) != default]
    if unsupported:
      raise ValueError(f"batched runs do not support {', '.join(unsupported)}; train these runs "
                       "alone (parallel_runs=1).")
    self.k, self.mesh, self.rep = len(runs), mesh, distributed.replicated(mesh)
    self.modes = tuple(r.config.preprocess for r in runs)
    full_tx = optimizer(config, config.learning_rate, *lengths)
    create = lambda variables: state_lib.create(  # noqa: E731
        model, full_tx, config.seed, config.image_size, self.rep, variables=variables,
        init_law=config.init_law)
    fresh, per_run = None, []  # runs from a random init share the seed, hence one drawn state
    for r in runs:
      if r.task.variables is None:
        fresh = fresh if fresh is not None else create(None)
        per_run.append(fresh)
      else:
        per_run.append(create(r.task.variables))
    data = runs_data([r.task.trainable for r in runs], [r.config.learning_rate for r in runs],
                     per_run[0].batch_stats, [r.task.frozen_bn for r in runs])
    # Each run's checkpointed optimizer state is its alone run's (`optim.freeze`): its shapes, once.
    self.alone_opt = [jax.eval_shape(optim.freeze(optim.create_optimizer(r.config, lambda _: 0.0),
                                                  r.task.trainable).init, per_run[i].params)
                      for i, r in enumerate(runs)]
    if start is not None:
      # Imported here: the steps above run without Orbax and grain (benchmarks/sweep.py).
      from radimagenet_jax import checkpoints as ckpt_lib  # pylint: disable=g-import-not-at-top
      for i, r in enumerate(runs):
        template = dict(per_run[i].train_part(), opt_state=jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.rep),
            self.alone_opt[i]))
        variables, train = ckpt_lib.restore(r.mngr, start, variables=per_run[i].variables,
                                            train_state=template,
                                            data_iter=data_iter if i == 0 else None)
        train["opt_state"] = optim.from_frozen_state(train["opt_state"], per_run[i].opt_state)
        per_run[i] = per_run[i].replace_from(variables, train)
    self.states = jax.device_put(stack(per_run), self.rep)
    self.data = jax.device_put(data, self.rep)
    self.train_fn = compile_train_step(model, config, lengths, self.modes, mesh)
    self.eval_fn = compile_eval_step(model, self.modes, mesh)
    self.acc = jax.device_put(init_train_metrics(self.k), self.rep)
    self.bad = jax.device_put(np.full(self.k, NO_BAD_STEP, np.int32), self.rep)

  def step(self) -> int:
    return int(jax.device_get(self.states.step[0]))

  def train(self, batch) -> None:
    """One step of every run on this process's host ``batch`` (whole batches only)."""
    batch = distributed.to_global(batch, self.mesh)
    self.states, self.acc, self.bad = self.train_fn(self.states, self.acc, self.bad, batch,
                                                     self.data)

  def block(self) -> None:
    jax.block_until_ready(self.acc)

  def bad_steps(self) -> list[int | None]:
    return [None if int(b) == NO_BAD_STEP else int(b) for b in np.asarray(jax.device_get(self.bad))]

  def train_metrics(self) -> list[dict]:
    out = summarize(self.acc, self.k)
    self.acc = jax.device_put(init_train_metrics(self.k), self.rep)
    return out

  def finite_params(self) -> list[bool]:
    return [bool(f) for f in np.asarray(jax.device_get(all_finite(self.states.params)))]

  def inference_variables(self, step: int, correct_bn: Sequence[bool]):
    """Every run's variables (stacked), BatchNorm statistics bias-corrected where asked."""
    states = self.states
    if not any(correct_bn):
      return {"params": states.params, "batch_stats": states.batch_stats}
    corrected = state_lib.bn_bias_corrected(states.batch_stats, step)
    flags = np.asarray(correct_bn)
    pick = lambda c, raw: jnp.where(flags.reshape((self.k,) + (1,) * (raw.ndim - 1)), c, raw)  # noqa: E731
    return {"params": states.params, "batch_stats": jax.tree.map(pick, corrected,
                                                                 states.batch_stats)}

  def run_variables(self, variables, i: int):
    return take(variables, i)

  def train_part(self, i: int) -> dict:
    mine = take(self.states, i)
    return dict(mine.train_part(), opt_state=optim.to_frozen_state(mine.opt_state,
                                                                   self.alone_opt[i]))

  def evaluate(self, variables, source, config, num_classes: int) -> list[dict]:
    from radimagenet_jax.train import eval_batches  # pylint: disable=g-import-not-at-top
    acc = jax.device_put(init_eval_metrics(self.k, num_classes), self.rep)
    for batch in eval_batches.eval_batches(
        source, batch_size=config.eval_batch_size or config.batch_size,
        image_size=config.image_size, preprocess_mode=self.modes[0], mesh=self.mesh,
        worker_count=config.worker_count, max_batches=config.eval_steps):
      acc = self.eval_fn(variables, acc, batch)
    return summarize(acc, self.k)
