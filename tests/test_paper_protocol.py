"""The paper protocol's training semantics against Keras 3 (the official scripts' framework):
the clipped BCE-on-softmax loss and its gradient, Keras's epoch (ceil(n / batch) steps, a partial
last batch), and a 3-epoch run (Adam, BatchNorm over the partial batch, model selection on the
validation loss) against `keras.Model.fit` from the same weights on the same batches."""
import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radimagenet_jax.data import pipeline
from radimagenet_jax.data.preprocess import preprocess
from radimagenet_jax.finetune import protocols
from radimagenet_jax.models import base as models_base
from radimagenet_jax.train import config as config_lib
from radimagenet_jax.train import loop, losses

keras = pytest.importorskip("keras")
SIZE, N_TRAIN, N_VAL, BATCH, EPOCHS = 12, 10, 6, 4, 3


def _logits():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (12, 2)).astype(np.float32)
  logits[:6] = [[20, 0], [0, 20], [40, -3], [-30, 30], [16.2, 0], [0, 16.0]]  # saturated
  return logits, np.array([0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0], np.int32)


def test_keras_bce_and_its_gradient_equal_keras_binary_crossentropy():
  logits, labels = _logits()
  bce = keras.losses.BinaryCrossentropy()
  onehot = jax.nn.one_hot(labels, 2)
  oracle = lambda z: bce(onehot, jax.nn.softmax(z, axis=-1))  # noqa: E731
  ours = lambda z: losses.per_example(z, labels, "keras_bce").mean()  # noqa: E731
  np.testing.assert_allclose(ours(logits), oracle(logits), rtol=1e-6, atol=1e-6)
  g_ours, g_oracle = jax.grad(ours)(jnp.asarray(logits)), jax.grad(oracle)(jnp.asarray(logits))
  np.testing.assert_allclose(g_ours, g_oracle, rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(g_ours[:4]).max()) == 0.0  # clipped: no gradient where Keras saturates
  # The figures: a logit gap of 20 against the true class, 16.03 vs the exact 20.0.
  gap = jnp.asarray([[20.0, 0.0]])
  assert float(losses.per_example(gap, jnp.asarray([1]), "keras_bce")[0]) == pytest.approx(
      16.03, abs=0.01)
  assert float(losses.per_example(gap, jnp.asarray([1]), "softmax_ce")[0]) == pytest.approx(
      20.0, abs=1e-5)


def _records(n, seed):
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), "label": i % 2}
          for i in range(n)]


_SIZES = []  # batch sizes seen by _BatchSizes (a module list: Keras copies list attributes)


class _BatchSizes(keras.layers.Layer):
  """Identity that records the batch size of each concrete batch (Keras runs eagerly here)."""

  def call(self, x):
    if not isinstance(x, jax.core.Tracer):  # not the symbolic build / trace passes
      _SIZES.append(int(x.shape[0]))
    return x


def test_epochs_and_the_partial_last_batch_match_keras_fit():
  sizes = _SIZES
  model = keras.Sequential([keras.Input((3,)), _BatchSizes(), keras.layers.Dense(2)])
  model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
  x, y = np.zeros((N_TRAIN, 3), np.float32), np.zeros((N_TRAIN, 2), np.float32)
  model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
  records = _records(N_TRAIN, 0)
  loader = pipeline.make_loader(records, batch_size=BATCH, image_size=SIZE, shuffle=True,
                                num_epochs=None, preprocess_mode="unit", partial_batch=True,
                                extra_keys=())
  it = iter(loader)
  batches = [pipeline.real_examples(next(it)) for _ in range(len(sizes))]
  assert [len(b["label"]) for b in batches] == sizes == [4, 4, 2, 4, 4, 2]
  per_epoch = len(sizes) // 2
  for e in range(2):  # each epoch shows every example once
    images = np.concatenate([b["image"] for b in batches[e * per_epoch:(e + 1) * per_epoch]])
    assert len({im.tobytes() for im in images}) == N_TRAIN
  config = config_lib.base_config()
  config.batch_size, config.num_epochs = BATCH, 3.0
  config.partial_batch = True
  assert loop.schedule_lengths(config, N_TRAIN)[:2] == (3, 9)
  config.partial_batch = False
  assert loop.schedule_lengths(config, N_TRAIN)[:2] == (2, 6)


class TinyNet(nn.Module):
  """Conv - BatchNorm - ReLU - GAP - Dense: every layer kind whose training semantics matter.
  The conv has no bias: before a training-mode BatchNorm its gradient is rounding noise, which
  Adam normalises into lr-sized steps whose signs differ between any two frameworks (the moving
  mean then follows them), a float effect, not a training semantic."""
  num_classes: int = 2
  dropout_rate: float = 0.0
  dtype: object = jnp.float32
  frozen_bn: tuple = ()
  spec_name = "paper_protocol_tinynet"
  min_size, default_size, feature_layer, keras_application = 8, SIZE, "conv", None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), padding="VALID", use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, name="bn")(x)
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    return nn.Dense(self.num_classes, name="predictions")(x)


def _keras_tinynet():
  keras.utils.set_random_seed(1)
  inputs = keras.Input((SIZE, SIZE, 3))
  x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
  x = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name="bn")(x)
  x = keras.layers.GlobalAveragePooling2D()(keras.layers.Activation("relu")(x))
  outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
  return keras.Model(inputs, outputs)


def _flax_variables(model):
  (k,), (g, beta, mean, var), (dk, db) = (model.get_layer(n).get_weights()
                                          for n in ("conv", "bn", "predictions"))
  return {"params": {"conv": {"kernel": k}, "bn": {"scale": g, "bias": beta},
                     "predictions": {"kernel": dk, "bias": db}},
          "batch_stats": {"bn": {"mean": mean, "var": var}}}


@pytest.fixture
def tinynet_registered():
  models_base.register(TinyNet)
  yield TinyNet.spec_name
  models_base._REGISTRY.pop(TinyNet.spec_name, None)  # pylint: disable=protected-access


def test_three_epochs_of_the_paper_protocol_match_keras_fit(tmp_path, tinynet_registered):
  # 20 examples in batches of 8 (8 simulated devices): 8, 8 and a partial 4, which the device
  # count does not divide (the loop replicates it).
  batch, train, val = 8, _records(20, 0), _records(N_VAL, 1)
  config = config_lib.base_config()
  config.model, config.dataset, config.preprocess, config.augment = (
      tinynet_registered, "in-memory", "radimagenet", "none")
  config.learning_rate, config.adam_epsilon, config.weight_decay = 0.05, 1e-7, 0.0
  config.schedule, config.warmup_epochs, config.dropout_rate = "constant", 0.0, 0.0
  config.batch_size, config.num_epochs, config.eval_every, config.log_every = batch, 3.0, -1, 3
  config.image_size = SIZE
  config.checkpoint_every, config.progress_bar, config.bn_bias_correction = 0, False, False
  config.partial_batch, config.loss, config.optimizer = (
      protocols.PROTOCOLS["paper"][k] for k in ("partial_batch", "loss", "optimizer"))
  config.augment_on_device = "off"
  keras_model = _keras_tinynet()
  task = loop.Task(train_source=train, eval_source=val, class_names=["a", "b"],
                   variables=_flax_variables(keras_model), select_best=True)
  summary = loop.fit(config, str(tmp_path / "run"), task)

  # Keras on the same batches: the loader the loop used, replayed.
  it = iter(pipeline.make_loader(train, batch_size=batch, image_size=SIZE, shuffle=True,
                                 seed=config.seed, num_epochs=None, preprocess_mode="radimagenet",
                                 partial_batch=True, augment="none"))
  batches = [pipeline.real_examples(next(it)) for _ in range(3 * EPOCHS)]
  assert [len(b["label"]) for b in batches] == [8, 8, 4] * EPOCHS
  keras_model.compile(optimizer=keras.optimizers.Adam(0.05, epsilon=1e-7),
                      loss=keras.losses.BinaryCrossentropy())
  x_val = np.asarray(preprocess(np.stack([r["image"] for r in val]), "radimagenet"))
  y_val = np.eye(2, dtype=np.float32)[[r["label"] for r in val]]
  history = keras_model.fit(((b["image"], np.eye(2, dtype=np.float32)[b["label"]])
                             for b in batches), steps_per_epoch=3, epochs=EPOCHS,
                            validation_data=(x_val, y_val), validation_batch_size=batch,
                            verbose=0).history

  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  train_loss = [r["loss"] for r in rows if r["split"] == "train"]
  val_loss = [r["loss"] for r in rows if r["split"] == "validation"]
  np.testing.assert_allclose(train_loss, history["loss"], rtol=1e-5)
  np.testing.assert_allclose(val_loss, history["val_loss"], rtol=1e-5)
  assert summary["best"]["epoch"] == 1 + int(np.argmin(history["val_loss"]))
