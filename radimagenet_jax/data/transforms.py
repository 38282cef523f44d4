"""The grain per-record transforms of the input pipeline: decode, resize, augment, finalize.

The per-record work follows the official Keras feeding (docs/fidelity.md "Input preprocessing"): decode,
nearest-neighbour resize (`PIL.Image.NEAREST`, as `keras.utils.load_img` does; 'bilinear' optional),
ImageDataGenerator augmentation on 0..255 float pixels (augment.py), then the preprocessing mode
(preprocess.py). Grayscale images stay one channel through resize and augmentation (3x less work) and
are replicated to three channels by the preprocessing, which is the same result as Keras' RGB loading.
"""
from __future__ import annotations

import dataclasses
import io

import grain
import numpy as np
import PIL.Image

from radimagenet_jax.data import augment as augment_lib
# `radimagenet_jax.data.preprocess` is the re-exported function, so import the name from the module.
from radimagenet_jax.data.preprocess import preprocess

RESIZE_METHODS = {"nearest": PIL.Image.NEAREST, "bilinear": PIL.Image.BILINEAR}


def decode_image(value) -> np.ndarray:
  """Encoded bytes (PNG/JPEG/...) or an array -> uint8 array (H, W) or (H, W, 3)."""
  if isinstance(value, (bytes, bytearray, memoryview)):
    with PIL.Image.open(io.BytesIO(value)) as img:
      if img.mode in ("I;16", "I;16B", "I"):
        raise ValueError(f"16/32-bit image (mode {img.mode}); the pipeline expects 8-bit images")
      if img.mode not in ("L", "RGB"):
        img = img.convert("L" if img.mode in ("1", "LA") else "RGB")
      return np.asarray(img)
  array = np.asarray(value)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
    raise ValueError(f"expected an image (H, W), (H, W, 1) or (H, W, 3), got shape {array.shape}")
  return array


def resize(image: np.ndarray, size: tuple[int, int], method: str = "nearest") -> np.ndarray:
  """Resizes a uint8 (H, W[, C]) array to size=(height, width) with PIL, as keras load_img does."""
  if image.shape[:2] == tuple(size):
    return image
  squeeze = image.ndim == 3 and image.shape[-1] == 1
  pil = PIL.Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((size[1], size[0]), resample=RESIZE_METHODS[method]))
  return out[..., None] if squeeze else out


@dataclasses.dataclass(frozen=True)
class DecodeResize(grain.transforms.Map):
  """Decodes 'image' (and masks) and resizes them; masks always with nearest neighbour."""
  image_size: tuple[int, int]
  method: str = "nearest"
  mask_keys: tuple[str, ...] = ()

  def map(self, record):
    out = dict(record)
    out["image"] = resize(decode_image(record["image"]), self.image_size, self.method)
    for key in self.mask_keys:
      out[key] = resize(decode_image(record[key]), self.image_size, "nearest")
    return out


@dataclasses.dataclass(frozen=True)
class Augment(grain.transforms.RandomMap):
  """The ImageDataGenerator random affine (augment.py); the mask gets the same transform."""
  config: augment_lib.AugmentConfig
  mask_keys: tuple[str, ...] = ()

  def random_map(self, record, rng: np.random.Generator):
    out = dict(record)
    if not self.mask_keys:
      out["image"] = augment_lib.random_transform(record["image"], self.config, rng)
      return out
    params = augment_lib.random_params(self.config, record["image"].shape, rng)
    cfg = self.config
    out["image"] = augment_lib.apply_transform(record["image"], params,
                                               order=cfg.interpolation_order,
                                               fill_mode=cfg.fill_mode, cval=cfg.cval)
    for key in self.mask_keys:
      out[key] = augment_lib.apply_transform(record[key], params, order=0,
                                             fill_mode=cfg.fill_mode, dtype=record[key].dtype)
    return out


@dataclasses.dataclass(frozen=True)
class AugmentParams(grain.transforms.RandomMap):
  """Augment's random draws without the warp: adds 'aug_matrix' float32 (2, 3) and 'aug_flip' bool
  (2,) for the consumer's `augment_device.warp_batch` (make_loader(augment_on_device=True))."""
  config: augment_lib.AugmentConfig

  def random_map(self, record, rng: np.random.Generator):
    out = dict(record)
    out[augment_lib.MATRIX_KEY], out[augment_lib.FLIP_KEY] = augment_lib.transform_data(
        self.config, record["image"].shape, rng)
    return out


@dataclasses.dataclass(frozen=True)
class Finalize(grain.transforms.Map):
  """Preprocessing mode, int32 label, masks as (H, W, 1) uint8, only the requested keys kept.

  With on_device=True the image keeps its pixels (H, W, 1) or (H, W, 3), uint8 or (augmented)
  float32 0..255, and the consumer applies `preprocess` on the accelerator.
  """
  mode: str
  extra_keys: tuple[str, ...] = ()
  mask_keys: tuple[str, ...] = ()
  on_device: bool = False

  def map(self, record):
    if self.on_device:
      image = np.asarray(record["image"])
      image = image[..., None] if image.ndim == 2 else image
    else:
      image = preprocess(record["image"], self.mode)
    out = {"image": image, "label": np.int32(record["label"])}
    for key in (augment_lib.MATRIX_KEY, augment_lib.FLIP_KEY):  # from AugmentParams, if it ran
      if key in record:
        out[key] = record[key]
    for key in self.extra_keys:
      value = record[key]
      if key in self.mask_keys:
        value = np.ascontiguousarray(value).reshape(value.shape[:2] + (1,))
      out[key] = value
    return out

