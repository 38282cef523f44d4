"""Preprocessing modes against the docs/fidelity.md formula and Keras' imagenet_utils.preprocess_input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import radimagenet_jax as rij
from radimagenet_jax.data.preprocess import MODES


@pytest.fixture(scope="module")
def rgb():
  return np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)


def _keras_preprocess(x, mode):
  from keras.applications import imagenet_utils
  return np.asarray(imagenet_utils.preprocess_input(x.astype(np.float32).copy(), mode=mode,
                                                    data_format="channels_last"))


def test_radimagenet_mode_is_fidelity_formula(rgb):
  # docs/fidelity.md: x = (BGR(img) - [103.939, 116.779, 123.68]) / 255, no std.
  img = rgb.astype(np.float64)
  expected = (img[..., ::-1] - np.array([103.939, 116.779, 123.68])) / 255.0
  got = rij.data.preprocess(rgb)
  assert got.dtype == np.float32 and got.shape == rgb.shape
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_radimagenet_mode_is_keras_caffe_then_rescale(rgb):
  # What the official ImageDataGenerator does: preprocessing_function first, then rescale=1/255.
  expected = _keras_preprocess(rgb, "caffe") * (1.0 / 255)
  np.testing.assert_allclose(rij.data.preprocess(rgb, "radimagenet"), expected, atol=1e-6)


@pytest.mark.parametrize("mode,keras_mode", [("caffe", "caffe"), ("imagenet", "torch"),
                                             ("tf", "tf")])
def test_modes_match_keras_preprocess_input(rgb, mode, keras_mode):
  np.testing.assert_allclose(rij.data.preprocess(rgb, mode), _keras_preprocess(rgb, keras_mode),
                             atol=1e-4)


def test_unit_mode(rgb):
  np.testing.assert_allclose(rij.data.preprocess(rgb, "unit"), rgb / 255.0, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_grayscale_is_replicated_to_three_channels(mode):
  gray = np.random.default_rng(1).integers(0, 256, (6, 4), dtype=np.uint8)
  rgb = np.repeat(gray[..., None], 3, axis=-1)
  expected = rij.data.preprocess(rgb, mode)
  np.testing.assert_array_equal(rij.data.preprocess(gray, mode), expected)
  np.testing.assert_array_equal(rij.data.preprocess(gray[..., None], mode), expected)
  batch = np.stack([gray, gray])[..., None]
  np.testing.assert_array_equal(rij.data.preprocess(batch, mode), np.stack([expected] * 2))


@pytest.mark.parametrize("mode", MODES)
def test_jax_and_float_inputs_match_numpy_uint8(rgb, mode):
  expected = rij.data.preprocess(rgb, mode)
  got_jax = rij.data.preprocess(jnp.asarray(rgb), mode)
  assert isinstance(got_jax, jax.Array) and got_jax.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got_jax), expected, atol=1e-6)
  got_jit = jax.jit(lambda x: rij.data.preprocess(x, mode))(jnp.asarray(rgb, jnp.float32))
  np.testing.assert_allclose(np.asarray(got_jit), expected, atol=1e-6)
  np.testing.assert_allclose(rij.data.preprocess(rgb.astype(np.float64), mode), expected,
                             atol=1e-6)


def test_unknown_mode_lists_the_valid_modes(rgb):
  with pytest.raises(ValueError, match="unknown preprocessing mode 'torch'.*radimagenet.*imagenet"):
    rij.data.preprocess(rgb, "torch")


def test_wrong_channel_count_is_rejected():
  with pytest.raises(ValueError, match="1 or 3 channels"):
    rij.data.preprocess(np.zeros((4, 4, 2), np.uint8))
