"""ImageDataGenerator-equivalent augmentation: closed forms and Keras' own apply_transform."""
import numpy as np
import pytest

from radimagenet_jax.data import augment as aug


@pytest.fixture(scope="module")
def image():
  return np.random.default_rng(0).uniform(0, 255, (16, 16, 3)).astype(np.float32)


def _keras_generator(**kwargs):
  from keras.src.legacy.preprocessing.image import ImageDataGenerator
  return ImageDataGenerator(**kwargs)


def test_horizontal_flip_is_reversed_columns(image):
  out = aug.apply_transform(image, {"flip_horizontal": True})
  np.testing.assert_array_equal(out, image[:, ::-1])
  np.testing.assert_array_equal(aug.apply_transform(image, {"flip_vertical": True}), image[::-1])


def test_unit_zoom_without_rotation_is_identity(image):
  np.testing.assert_array_equal(aug.apply_transform(image, {"zx": 1.0, "zy": 1.0}), image)
  # An explicit identity matrix through scipy (non-zero but cancelling parameters) too.
  out = aug.apply_transform(image, {"theta": 0.0, "tx": 1e-12, "zx": 1.0, "zy": 1.0})
  np.testing.assert_allclose(out, image, atol=1e-3)


@pytest.mark.parametrize("shift", [3, -2])
def test_integer_shift_is_roll_with_edge_fill(image, shift):
  # Output pixel (i, j) reads input (i + ty, j + tx) (Keras' axis swap: 'tx' moves columns).
  out = aug.apply_transform(image, {"tx": float(shift)})
  cols = np.clip(np.arange(16) + shift, 0, 15)
  np.testing.assert_allclose(out, image[:, cols], atol=1e-4)
  out = aug.apply_transform(image, {"ty": float(shift)})
  rows = np.clip(np.arange(16) + shift, 0, 15)
  np.testing.assert_allclose(out, image[rows], atol=1e-4)


def test_rotation_by_90_degrees_is_rot90(image):
  # Positive theta turns the picture counter-clockwise, as np.rot90 with k=1 does.
  out = aug.apply_transform(image, {"theta": 90.0})
  np.testing.assert_allclose(out, np.rot90(image, k=1, axes=(0, 1)), atol=1e-3)
  out = aug.apply_transform(image, {"theta": -90.0})
  np.testing.assert_allclose(out, np.rot90(image, k=-1, axes=(0, 1)), atol=1e-3)


def test_zoom_by_two_samples_every_other_pixel_about_the_centre():
  # zx = zy = 2 maps output (i, j) to input 2 * (i - c) + c with c = 7.5 (centre of 16 pixels).
  ramp = np.tile(np.arange(16, dtype=np.float32), (16, 1))  # value = column index
  out = aug.apply_transform(ramp, {"zx": 2.0, "zy": 2.0})
  expected = np.clip(2 * (np.arange(16) - 7.5) + 7.5, 0, 15)
  np.testing.assert_allclose(out, np.tile(expected, (16, 1)), atol=1e-4)


@pytest.mark.parametrize("shape", [(20, 20, 3), (18, 24, 1), (24, 18, 3)])
def test_matches_keras_image_data_generator_apply_transform(shape):
  gen = _keras_generator(rotation_range=30, width_shift_range=0.2, height_shift_range=0.2,
                         shear_range=20, zoom_range=0.3, horizontal_flip=True, fill_mode="nearest")
  config = aug.get_config(dict(rotation_range=30, width_shift_range=0.2, height_shift_range=0.2,
                               shear_range=20, zoom_range=0.3, horizontal_flip=True))
  rng = np.random.default_rng(1)
  for _ in range(4):
    x = rng.uniform(0, 255, shape).astype(np.float32)
    params = aug.random_params(config, shape, rng)
    expected = gen.apply_transform(x.copy(), dict(params))
    np.testing.assert_allclose(aug.apply_transform(x, params), expected, atol=1e-4)


def test_parameter_distributions_match_keras_units():
  config = aug.PRESETS["paper"]
  rng = np.random.default_rng(0)
  draws = [aug.random_params(config, (100, 200, 1), rng) for _ in range(2000)]
  theta = np.array([d["theta"] for d in draws])
  tx = np.array([d["tx"] for d in draws])
  ty = np.array([d["ty"] for d in draws])
  zx = np.array([d["zx"] for d in draws])
  zy = np.array([d["zy"] for d in draws])
  shear = np.array([d["shear"] for d in draws])
  assert -10 <= theta.min() < -9.5 and 9.5 < theta.max() <= 10
  assert 9.5 < np.abs(tx).max() <= 10.0  # 0.1 * 100 rows
  assert 19 < np.abs(ty).max() <= 20.0  # 0.1 * 200 cols
  assert 0.099 < np.abs(shear).max() <= 0.1  # degrees
  assert 0.9 <= zx.min() < 0.91 and 1.09 < zx.max() <= 1.1
  assert abs(np.corrcoef(zx, zy)[0, 1]) < 0.1  # drawn independently
  assert 0.45 < np.mean([d["flip_horizontal"] for d in draws]) < 0.55
  noflip = [aug.random_params(aug.PRESETS["paper_noflip"], (10, 10), rng) for _ in range(200)]
  assert all(d["theta"] == 0 and not d["flip_horizontal"] for d in noflip)
  assert all(d == {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0,
                   "flip_horizontal": False, "flip_vertical": False}
             for d in [aug.random_params(aug.PRESETS["none"], (10, 10), rng)])


def test_same_seed_same_transform_and_mask_follows_image():
  img = np.random.default_rng(3).uniform(0, 255, (32, 32)).astype(np.float32)
  mask = np.zeros((32, 32, 1), np.uint8)
  mask[8:20, 10:24] = 1
  # An image equal to 255 * mask must transform (at order 0) exactly like the mask.
  a_img, a_mask = aug.random_transform(img, "paper", np.random.default_rng(7), mask=mask)
  b_img, b_mask = aug.random_transform(img, "paper", np.random.default_rng(7), mask=mask)
  np.testing.assert_array_equal(a_img, b_img)
  np.testing.assert_array_equal(a_mask, b_mask)
  assert a_mask.dtype == np.uint8 and set(np.unique(a_mask)) <= {0, 1}
  params = aug.random_params(aug.PRESETS["paper"], img.shape, np.random.default_rng(7))
  expected = aug.apply_transform(mask[..., 0].astype(np.float32) * 255, params, order=0)
  np.testing.assert_array_equal(a_mask[..., 0] * 255, expected)
  c_img = aug.random_transform(img, "paper", np.random.default_rng(8))
  assert not np.array_equal(a_img, c_img)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="unknown augmentation preset 'flip'.*paper_noflip"):
    aug.get_config("flip")
  with pytest.raises(ValueError, match="unknown augmentation arguments \\['rotation'\\]"):
    aug.get_config({"rotation": 3})
  with pytest.raises(ValueError, match="fill_mode 'edge'"):
    aug.get_config({"fill_mode": "edge"})


@pytest.mark.parametrize("params", [
    {"theta": 45.0, "tx": 9.0, "ty": -7.5, "zx": 0.5, "zy": 1.7},
    {"theta": -170.0, "shear": 30.0, "zx": 2.5, "zy": 2.5},
    {"tx": 40.0, "ty": 33.3},  # entirely outside: every pixel is an edge pixel
])
def test_fast_bilinear_path_equals_scipy_nearest_fill(params):
  import scipy.ndimage
  x = np.random.default_rng(5).uniform(0, 255, (21, 17)).astype(np.float32)
  matrix = aug.affine_matrix(params, 21, 17)
  expected = scipy.ndimage.affine_transform(x, matrix[:2, :2], matrix[:2, 2], order=1,
                                            mode="nearest")
  np.testing.assert_allclose(aug.apply_transform(x, params), expected, atol=1e-4)
