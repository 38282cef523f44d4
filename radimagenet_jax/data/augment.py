"""Keras ImageDataGenerator random affine augmentation, re-implemented in numpy + scipy.ndimage.

The official RadImageNet fine-tuning scripts augment with Keras' (legacy) `ImageDataGenerator`, on
0..255 float pixels after the nearest-neighbour resize and before preprocessing. This module draws the
same parameters (same distributions, same units) and applies the same transform as
`keras/src/legacy/preprocessing/image.py` (`get_random_transform`, `apply_transform`,
`apply_affine_transform`):

- theta ~ U(-rotation_range, rotation_range) degrees;
- tx ~ U(-height_shift_range, height_shift_range) * rows, ty ~ U(-w, w) * cols (a range >= 1 is in
  pixels, as in Keras);
- shear ~ U(-shear_range, shear_range) in DEGREES (so Keras' `shear_range=0.1` is a tenth of a degree);
- zx, zy drawn independently from U(1 - zoom_range, 1 + zoom_range);
- horizontal (vertical) flip with probability 1/2, applied after the affine warp;
- the 3x3 matrix rotation @ shift @ shear @ zoom, centred, with Keras' x/y axis swap, then
  `scipy.ndimage.affine_transform` per channel with bilinear interpolation (order 1) and fill_mode
  'nearest'. For that default (order 1, 'nearest') we compute the same resampling with Pillow's
  float32 ('F' mode) affine warp on an edge-padded copy, about twice as fast and equal to scipy to
  float32 rounding (~1e-5 on 0..255); other orders and fill modes use scipy.
- Keras' axis swap means that on non-square images the "height" shift moves columns and the
  centring offsets are swapped; we keep that quirk, so results equal Keras' (tested to 1e-4).

Masks (segmentation labels) get the same geometric transform with nearest-neighbour interpolation
(order 0), so they stay binary.

Randomness comes from a `numpy.random.Generator` passed in: the same generator state gives the same
transform (grain's RandomMap hands each record its own seeded generator).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import numpy as np
import PIL.Image
import scipy.ndimage


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """ImageDataGenerator arguments (same names and units as Keras)."""
  rotation_range: float = 0.0
  width_shift_range: float = 0.0
  height_shift_range: float = 0.0
  shear_range: float = 0.0
  zoom_range: float | tuple[float, float] = 0.0
  horizontal_flip: bool = False
  vertical_flip: bool = False
  fill_mode: str = "nearest"
  cval: float = 0.0
  interpolation_order: int = 1

  @property
  def zoom_bounds(self) -> tuple[float, float]:
    if isinstance(self.zoom_range, (int, float)):
      return (1.0 - self.zoom_range, 1.0 + self.zoom_range)
    lo, hi = self.zoom_range
    return (float(lo), float(hi))

  @property
  def is_identity(self) -> bool:
    return (not self.rotation_range and not self.width_shift_range and
            not self.height_shift_range and not self.shear_range and
            self.zoom_bounds == (1.0, 1.0) and not self.horizontal_flip and not self.vertical_flip)


# docs/fidelity.md "Downstream fine-tuning": the per-dataset ImageDataGenerator arguments of the paper.
PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    # thyroid, breast, ACL, meniscus
    "paper": AugmentConfig(rotation_range=10, width_shift_range=0.1, height_shift_range=0.1,
                           shear_range=0.1, zoom_range=0.1, horizontal_flip=True),
    # COVID-19, SARS-CoV-2, pneumonia, hemorrhage: the same without rotation and flip
    "paper_noflip": AugmentConfig(width_shift_range=0.1, height_shift_range=0.1, shear_range=0.1,
                                  zoom_range=0.1),
}

_FILL_MODES = ("nearest", "constant", "reflect", "wrap")


def get_config(augment: str | AugmentConfig | Mapping[str, Any] | None) -> AugmentConfig:
  """Resolves a preset name, an AugmentConfig or a dict of ImageDataGenerator arguments."""
  if augment is None:
    return PRESETS["none"]
  if isinstance(augment, AugmentConfig):
    config = augment
  elif isinstance(augment, str):
    if augment not in PRESETS:
      raise ValueError(f"unknown augmentation preset {augment!r}; expected one of {list(PRESETS)} "
                       "or a dict of ImageDataGenerator arguments")
    config = PRESETS[augment]
  elif isinstance(augment, Mapping):
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    unknown = sorted(set(augment) - fields)
    if unknown:
      raise ValueError(f"unknown augmentation arguments {unknown}; expected some of {sorted(fields)}")
    config = AugmentConfig(**augment)
  else:
    raise TypeError(f"augment must be a preset name, AugmentConfig or dict, got {type(augment)}")
  if config.fill_mode not in _FILL_MODES:
    raise ValueError(f"unknown fill_mode {config.fill_mode!r}; expected one of {list(_FILL_MODES)}")
  return config


def _shift(shift_range: float, size: int, rng: np.random.Generator) -> float:
  if not shift_range:
    return 0.0
  shift = rng.uniform(-shift_range, shift_range)
  return shift * size if shift_range < 1 else shift  # Keras: a fraction below 1, else pixels


def random_params(config: AugmentConfig, shape: tuple[int, ...],
                  rng: np.random.Generator) -> dict[str, float]:
  """Draws Keras transform parameters (get_random_transform's keys) for an image of `shape` (H, W, ...)."""
  rows, cols = shape[0], shape[1]
  theta = rng.uniform(-config.rotation_range, config.rotation_range) if config.rotation_range else 0.
  tx = _shift(config.height_shift_range, rows, rng)
  ty = _shift(config.width_shift_range, cols, rng)
  shear = rng.uniform(-config.shear_range, config.shear_range) if config.shear_range else 0.0
  lo, hi = config.zoom_bounds
  zx, zy = (1.0, 1.0) if lo == hi == 1.0 else tuple(rng.uniform(lo, hi, 2))
  return {"theta": float(theta), "tx": float(tx), "ty": float(ty), "shear": float(shear),
          "zx": float(zx), "zy": float(zy),
          "flip_horizontal": bool(config.horizontal_flip and rng.random() < 0.5),
          "flip_vertical": bool(config.vertical_flip and rng.random() < 0.5)}


def affine_matrix(params: Mapping[str, float], rows: int, cols: int) -> np.ndarray | None:
  """The 3x3 output->input matrix in array (row, col) coordinates that Keras hands to scipy.

  None when the transform is the identity (Keras then skips the interpolation, and so do we).
  """
  theta, tx, ty = params.get("theta", 0), params.get("tx", 0), params.get("ty", 0)
  shear, zx, zy = params.get("shear", 0), params.get("zx", 1), params.get("zy", 1)
  matrix = None

  def compose(m):
    return m if matrix is None else matrix @ m

  if theta != 0:
    t = np.deg2rad(theta)
    matrix = compose(np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]))
  if tx != 0 or ty != 0:
    matrix = compose(np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64))
  if shear != 0:
    s = np.deg2rad(shear)
    matrix = compose(np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]]))
  if zx != 1 or zy != 1:
    matrix = compose(np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]], dtype=np.float64))
  if matrix is None:
    return None
  # transform_matrix_offset_center(matrix, h, w): centre at (h/2 - 0.5, w/2 - 0.5) in matrix coords.
  o_x, o_y = rows / 2 - 0.5, cols / 2 - 0.5
  offset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
  reset = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
  matrix = offset @ matrix @ reset
  # Keras swaps x and y (M' = P M P) because it builds the matrix in (x, y) but indexes (row, col).
  return matrix[[1, 0, 2]][:, [1, 0, 2]]


# make_loader(augment_on_device=True): the per-example transform data the workers ship instead of
# warping (augment_device.warp_batch applies it in the jitted step).
MATRIX_KEY = "aug_matrix"
FLIP_KEY = "aug_flip"
ON_DEVICE_MODES = ("auto", "on", "off")  # make_loader(augment_on_device=...), config field


def transform_data(config: AugmentConfig, shape: tuple[int, ...],
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(aug_matrix float32 (2, 3), aug_flip bool (2,)) for one image of `shape` (H, W, ...), from the
  same draws of `rng` as `random_transform`: the first two rows of `affine_matrix` (output (r, c)
  reads input M[:, :2] @ (r, c) + M[:, 2]; the identity when the transform is) and the
  (horizontal, vertical) flips."""
  params = random_params(config, shape, rng)
  matrix = affine_matrix(params, shape[0], shape[1])
  matrix = np.eye(2, 3) if matrix is None else matrix[:2]
  flips = np.array([params["flip_horizontal"], params["flip_vertical"]], bool)
  return matrix.astype(np.float32), flips


def _warp_bilinear_edge(channel: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """scipy.ndimage.affine_transform(channel, matrix, order=1, mode='nearest') via Pillow.

  scipy reads output pixel (r, c) at input (r', c') = M[:2, :2] @ (r, c) + M[:2, 2]. Pillow's AFFINE
  maps output pixel centres (x + .5, y + .5), x = column, to input (a x + b y + c, d x + e y + f) and
  samples around pixel centres, so a = M11, b = M10, c = M12 + (1 - a - b) / 2 (and likewise d, e, f).
  Pillow fills outside with 0, so the input is first padded by edge replication (scipy's 'nearest')
  wide enough that every sample and its bilinear neighbour fall inside.
  """
  rows, cols = channel.shape
  corners = np.array([[0, 0, 1], [0, cols - 1, 1], [rows - 1, 0, 1], [rows - 1, cols - 1, 1]]).T
  source = matrix[:2] @ corners
  overshoot = max(0.0, -source.min(), source[0].max() - (rows - 1), source[1].max() - (cols - 1))
  pad = int(np.ceil(overshoot)) + 2
  if channel.dtype == np.uint8:  # pad the 1-byte pixels, let Pillow convert to float32 in C
    image = PIL.Image.fromarray(np.pad(channel, pad, mode="edge")).convert("F")
  else:
    image = PIL.Image.fromarray(np.pad(channel.astype(np.float32, copy=False), pad, mode="edge"))
  a, b, d, e = matrix[1, 1], matrix[1, 0], matrix[0, 1], matrix[0, 0]
  c = matrix[1, 2] + pad + 0.5 * (1 - a - b)
  f = matrix[0, 2] + pad + 0.5 * (1 - d - e)
  warped = image.transform(
      (cols, rows), PIL.Image.AFFINE, (a, b, c, d, e, f), resample=PIL.Image.BILINEAR)
  return np.array(warped)  # a writable copy (Pillow's buffer view is read-only)


def apply_transform(image: np.ndarray, params: Mapping[str, float], *, order: int = 1,
                    fill_mode: str = "nearest", cval: float = 0.0,
                    dtype=np.float32) -> np.ndarray:
  """Applies Keras transform parameters to one image (H, W) or (H, W, C); returns `dtype`.

  Equals `ImageDataGenerator(...).apply_transform(image.astype(float32), params)` for the keys
  theta, tx, ty, shear, zx, zy, flip_horizontal, flip_vertical.
  """
  image = np.asarray(image)
  if image.ndim not in (2, 3):
    raise ValueError(f"expected one image (H, W) or (H, W, C), got shape {image.shape}")
  matrix = affine_matrix(params, image.shape[0], image.shape[1])
  if matrix is None:
    out = image.astype(dtype, copy=True)
  else:
    if order == 1 and fill_mode == "nearest":
      warp = functools.partial(_warp_bilinear_edge, matrix=matrix)
    else:
      warp = functools.partial(scipy.ndimage.affine_transform, matrix=matrix[:2, :2],
                               offset=matrix[:2, 2], order=order, mode=fill_mode, cval=cval,
                               output=np.float32 if order == 1 else dtype)
    if image.ndim == 2:
      out = warp(image)
    else:
      out = np.stack([warp(image[..., c]) for c in range(image.shape[2])], axis=-1)  # as Keras
    out = out.astype(dtype, copy=False)
  if params.get("flip_horizontal", False):
    out = out[:, ::-1]
  if params.get("flip_vertical", False):
    out = out[::-1]
  return out


def random_transform(image: np.ndarray, augment: str | AugmentConfig | Mapping[str, Any],
                     rng: np.random.Generator, mask: np.ndarray | None = None):
  """Draws parameters from `rng` and transforms `image` (float32 out); also `mask` if given.

  The mask gets the same geometric transform with nearest-neighbour interpolation and keeps its
  dtype. Returns the image, or (image, mask) when a mask is passed.
  """
  config = get_config(augment)
  if config.is_identity:
    out = np.asarray(image, np.float32)
    return out if mask is None else (out, np.asarray(mask))
  params = random_params(config, np.shape(image), rng)
  out = apply_transform(image, params, order=config.interpolation_order,
                        fill_mode=config.fill_mode, cval=config.cval)
  if mask is None:
    return out
  mask = np.asarray(mask)
  if mask.shape[:2] != out.shape[:2]:
    raise ValueError(f"mask shape {mask.shape} does not match image shape {np.shape(image)}")
  return out, apply_transform(mask, params, order=0, fill_mode=config.fill_mode, cval=0,
                              dtype=mask.dtype)
