"""augment_on_device: the jitted warp equals the host warp (augment.apply_transform, the oracle),
through the loader and through the train step; bad settings are one-line errors."""
import os

import jax
import numpy as np
import pytest

from radimagenet_jax.data import augment as aug
from radimagenet_jax.data import augment_device, pipeline
from radimagenet_jax.data.preprocess import preprocess
from radimagenet_jax.train import steps

# Measured max |device - host| on uniform-noise 0..255 pixels (the worst case: neighbours differ by
# up to 255) at these sizes: 3e-4..9e-4 (float32 sample coordinates against Pillow's float64).
ATOL = 1e-3
STRONG = aug.AugmentConfig(rotation_range=40, width_shift_range=0.3, height_shift_range=0.2,
                           shear_range=30, zoom_range=(0.6, 1.5), horizontal_flip=True,
                           vertical_flip=True)

warp = jax.jit(augment_device.warp_batch)


def _draw(config, images):
  """(host-augmented images, matrices, flips) with the same per-image generators for both."""
  host, matrices, flips = [], [], []
  for i, image in enumerate(images):
    host.append(aug.random_transform(image, config, np.random.default_rng(i)))
    m, f = aug.transform_data(config, image.shape, np.random.default_rng(i))
    matrices.append(m)
    flips.append(f)
  return np.stack(host), np.stack(matrices), np.stack(flips)


@pytest.mark.parametrize("shape", [(16, 16, 1), (12, 20, 3), (20, 12, 1)])
@pytest.mark.parametrize("config", [aug.PRESETS["paper"], aug.PRESETS["paper_noflip"], STRONG],
                         ids=["paper", "paper_noflip", "strong"])
def test_warp_batch_equals_the_host_transform_for_drawn_parameters(shape, config):
  images = np.random.default_rng(7).integers(0, 256, (12,) + shape, dtype=np.uint8)
  host, matrices, flips = _draw(config, images)
  assert matrices.dtype == np.float32 and matrices.shape == (12, 2, 3) and flips.shape == (12, 2)
  out = np.asarray(warp(images, matrices, flips))
  assert out.dtype == np.float32 and out.shape == images.shape
  np.testing.assert_allclose(out, host, rtol=0, atol=ATOL)
  assert np.abs(host - images).max() > 50          # the transforms did move pixels
  if config.horizontal_flip:
    assert flips[:, 0].any() and not flips[:, 0].all()
  if config.vertical_flip:
    assert flips[:, 1].any() and not flips[:, 1].all()


@pytest.mark.parametrize("params", [
    {"shear": 25.0, "zx": 0.7, "zy": 1.3},                             # shear + anisotropic zoom
    {"theta": 33.0, "tx": 2.5, "ty": -4.0, "zx": 1.2, "zy": 0.8},
    {"flip_horizontal": True, "flip_vertical": True},                  # flips only: exact
    {"shear": -15.0, "zx": 1.4, "zy": 1.4, "flip_horizontal": True},
])
def test_warp_batch_equals_apply_transform_on_non_square_images(params):
  image = np.random.default_rng(1).uniform(0, 255, (14, 22, 3)).astype(np.float32)
  host = aug.apply_transform(image, params)
  matrix = aug.affine_matrix(params, 14, 22)
  matrix = np.eye(3) if matrix is None else matrix
  flips = [[params.get("flip_horizontal", False), params.get("flip_vertical", False)]]
  out = np.asarray(warp(image[None], matrix[None, :2].astype(np.float32), np.array(flips)))[0]
  np.testing.assert_allclose(out, host, rtol=0, atol=ATOL)
  if set(params) <= {"flip_horizontal", "flip_vertical"}:
    np.testing.assert_array_equal(out, host)


def test_identity_transform_returns_the_pixels_exactly():
  images = np.random.default_rng(2).integers(0, 256, (3, 9, 11, 1), dtype=np.uint8)
  matrices = np.tile(np.eye(2, 3, dtype=np.float32), (3, 1, 1))
  out = np.asarray(warp(images, matrices, np.zeros((3, 2), bool)))
  np.testing.assert_array_equal(out, images.astype(np.float32))


def test_explicit_gather_formulation_gives_the_same_values():
  images = np.random.default_rng(3).integers(0, 256, (6, 18, 14, 3), dtype=np.uint8)
  _, matrices, flips = _draw(STRONG, images)
  a = np.asarray(warp(images, matrices, flips))
  b = np.asarray(jax.jit(augment_device.warp_batch_gathers)(images, matrices, flips))
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


# ---- Through the loader and the train step -----------------------------------------------------

def _records(n=16, size=(10, 13), rgb=False):
  rng = np.random.default_rng(0)
  shape = size + ((3,) if rgb else (1,))
  return [{"image": rng.integers(0, 256, shape, dtype=np.uint8), "label": i % 3}
          for i in range(n)]


@pytest.mark.parametrize("augment, rgb, workers", [
    ("paper", False, 0), ("paper_noflip", True, 0), ("strong", False, 1)])
def test_loader_with_augment_on_device_gives_the_host_augmented_batches(augment, rgb, workers):
  config = dict(STRONG.__dict__) if augment == "strong" else augment
  kwargs = dict(batch_size=4, image_size=(12, 18), seed=3, num_epochs=1, augment=config,
                preprocess_on_device=True, preprocess_mode="radimagenet", worker_count=workers)
  records = _records(rgb=rgb)
  host = list(pipeline.make_loader(records, augment_on_device="off", **kwargs))
  device = list(pipeline.make_loader(records, augment_on_device="on", **kwargs))
  assert len(host) == len(device) == 4
  inputs = jax.jit(steps._inputs, static_argnums=1)
  for h, d in zip(host, device):
    assert set(h) == {"image", "label"}
    assert set(d) == {"image", "label", "aug_matrix", "aug_flip"}
    assert d["image"].dtype == np.uint8 and d["image"].shape == (4, 12, 18, 3 if rgb else 1)
    assert d["aug_matrix"].shape == (4, 2, 3) and d["aug_flip"].dtype == bool
    np.testing.assert_array_equal(d["label"], h["label"])
    warped = np.asarray(warp(d["image"], d["aug_matrix"], d["aug_flip"]))
    np.testing.assert_allclose(warped, h["image"], rtol=0, atol=ATOL)
    # The train step's input: warp, then the preprocessing, on the device.
    np.testing.assert_allclose(np.asarray(inputs(d, "radimagenet")),
                               preprocess(h["image"], "radimagenet"), rtol=0, atol=ATOL / 255)
  flips = np.concatenate([d["aug_flip"][:, 0] for d in device])
  assert flips.any() == (augment != "paper_noflip")


def test_auto_is_off_on_the_cpu_and_no_augmentation_ships_no_fields():
  records = _records(n=4)
  kwargs = dict(batch_size=4, image_size=8, num_epochs=1, preprocess_on_device=True)
  assert jax.default_backend() == "cpu"
  auto = next(iter(pipeline.make_loader(records, augment="paper", augment_on_device="auto",
                                        **kwargs)))
  assert set(auto) == {"image", "label"} and auto["image"].dtype == np.float32
  plain = next(iter(pipeline.make_loader(records, augment="none", augment_on_device=True,
                                         **kwargs)))
  assert set(plain) == {"image", "label"} and plain["image"].dtype == np.uint8


@pytest.mark.parametrize("kwargs, message", [
    (dict(augment_on_device="yes"), r"augment_on_device='yes' is not valid; expected one of "
                                    r"auto, on, off"),
    (dict(augment_on_device="on", preprocess_on_device=False), r"needs preprocess_on_device"),
    (dict(augment_on_device=True, extra_keys=("mask",)), r"does not transform masks \['mask'\]"),
    (dict(augment_on_device="on", augment=dict(aug.PRESETS["paper"].__dict__,
                                               interpolation_order=0)),
     r"got interpolation_order=0, fill_mode='nearest'"),
    (dict(augment_on_device="on", augment={"zoom_range": 0.2, "fill_mode": "reflect"}),
     r"fill_mode='reflect'; use augment_on_device=False"),
])
def test_bad_augment_on_device_settings_are_one_line_errors(kwargs, message):
  records = [dict(r, mask=np.zeros((10, 13, 1), np.uint8)) for r in _records(n=4)]
  args = dict(batch_size=4, image_size=8, augment="paper", preprocess_on_device=True)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message) as info:
    pipeline.make_loader(records, **args)
  assert "\n" not in str(info.value)


def test_config_field_is_checked_and_may_change_on_resume():
  from radimagenet_jax.train import config as config_lib
  c = config_lib.base_config()
  assert c.augment_on_device == "auto"
  config_lib.validate(c)
  c.augment_on_device = "gpu"
  with pytest.raises(ValueError, match=r"^config.augment_on_device='gpu' is not valid; choices: "
                                       r"auto, on, off.$"):
    config_lib.validate(c)
  assert "augment_on_device" in config_lib.RESUMABLE_CHANGES  # older config.json files lack it


def test_training_with_augment_on_device_matches_host_augmentation(tmp_path, monkeypatch):
  """Two steps of the real loop ('paper' augmentation; 8 CPU devices): the same parameters to
  rounding."""
  from radimagenet_jax import checkpoints as ckpt_lib
  from radimagenet_jax import pretrain as pretrain_lib
  from radimagenet_jax.models import registry
  from tests import test_train
  registry._ensure_loaded()  # test_train's tiny_setup: the tiny CNN and the in-memory dataset
  monkeypatch.setitem(registry._REGISTRY, test_train.TinyCNN.spec_name, test_train.TinyCNN)
  monkeypatch.setattr(pretrain_lib, "_open", test_train._fake_open)
  warped = []   # the mechanism: the "on" steps warp on the device (traced), the "off" ones not
  real_warp = augment_device.warp_batch
  monkeypatch.setattr(augment_device, "warp_batch",
                      lambda *a: warped.append(mode) or real_warp(*a))
  params = {}
  for mode in ("off", "on"):
    # SGD: Adam would turn the conv bias's zero-up-to-rounding gradient (BatchNorm follows) into
    # +-learning_rate steps either way.
    config = test_train._config(num_train_steps=2, checkpoint_every=2, log_every=1,
                                optimizer="sgd", learning_rate=0.05, augment_on_device=mode)
    pretrain_lib.train_and_evaluate(config, str(tmp_path / mode))
    params[mode] = ckpt_lib.load_variables(str(tmp_path / mode))["params"]
  flat = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                                      params["off"], params["on"]))
  assert set(warped) == {"on"}
  # The inputs differ by float rounding only; bit-identical results would pass too.
  assert max(flat) < 1e-5
  assert os.path.exists(tmp_path / "on" / "summary.json")
