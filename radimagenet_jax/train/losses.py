"""The training losses per example: exact softmax cross-entropy, or the official scripts' Keras one.

docs/fidelity.md "Downstream fine-tuning": the official scripts train a 2-way softmax head with
`keras.losses.BinaryCrossentropy()` on the softmax OUTPUT with one-hot targets. Keras clips the
probabilities to [1e-7, 1 - 1e-7] (in float32, so the upper bound is 1 - 1.19e-7) and averages the
binary cross-entropy over the class axis. With two classes and no clipping that mean is exactly
-log p_true, the softmax cross-entropy; the two part where Keras clips (at a logit gap of 20: 16.03
against the exact 20.0), and the clipped loss has no gradient there. `loss='keras_bce'` is the
official value, `loss='softmax_ce'` the corrected one (configs/finetune.py, docs/finetuning.md).

    per_example = losses.per_example(logits, labels, "keras_bce")   # (batch,) float32
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

LOSSES = ("softmax_ce", "keras_bce")
KERAS_EPSILON = 1e-7  # keras.config.epsilon()


def softmax_ce(logits, labels):
  """Exact softmax cross-entropy from the logits (float32), per example."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def keras_bce(logits, labels):
  """Keras 3's `BinaryCrossentropy()` on softmax(logits) with one-hot labels, per example: the
  probabilities clipped to [eps, 1 - eps] (float32), binary cross-entropy per class, mean over the
  classes. Keras 3 (the test oracle) takes log(p) of the clipped p; tf.keras 2.x, which the official
  scripts ran, took log(p + eps): the two differ only at saturation (docs/paper.md)."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  probs = jnp.clip(probs, KERAS_EPSILON, 1.0 - KERAS_EPSILON)
  target = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  bce = target * jnp.log(probs) + (1.0 - target) * jnp.log(1.0 - probs)
  return -jnp.mean(bce, axis=-1)


_FUNCTIONS = {"softmax_ce": softmax_ce, "keras_bce": keras_bce}


def check(kind: str) -> str:
  if kind not in _FUNCTIONS:
    raise ValueError(f"config.loss={kind!r} is not valid; choices: {', '.join(LOSSES)}.")
  return kind


def per_example(logits, labels, kind: str = "softmax_ce"):
  """The loss of each example, (batch,) float32; ``kind``: one of LOSSES."""
  return _FUNCTIONS[check(kind)](logits, labels)
