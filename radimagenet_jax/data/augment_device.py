"""The ImageDataGenerator warp of augment.py as a jnp function, for the jitted train step.

With `make_loader(augment_on_device=True)` the worker processes still draw every augmentation's
random parameters (`augment.random_params`, the same numpy draws, so a seed gives the same
transforms), but instead of warping they ship, per image, the uint8 pixels plus

- `aug_matrix` float32 (2, 3): the output -> input map in (row, col) pixel coordinates of the
  resized image that Keras hands to scipy (`augment.affine_matrix`, Keras' x/y axis swap
  included; the identity when the drawn transform is the identity): output pixel (r, c) reads
  input `M[:, :2] @ (r, c) + M[:, 2]`;
- `aug_flip` bool (2,): (horizontal, vertical) flips, applied after the warp as Keras does;

and `warp_batch` applies them inside the step, before the preprocessing. It is Keras'
`apply_transform` with order 1 (bilinear) and fill_mode 'nearest' (edge replication), the setting of
every preset; `check_supported` refuses other orders and fill modes with one line (the host path
handles them). The flips are folded into the sampling grid: output (r, c) of a horizontally
flipped image samples where output (r, W - 1 - c) of the unflipped warp would.

The coordinates are float32 elementwise products (no matmul, so no TF32 on GPUs): on 0..255 pixels
the result equals the host warp (float64 coordinates in Pillow) to 6e-4 on uniform-noise images of
12-20 px (tests/test_augment_device.py asserts 1e-3), 7e-3 at 224 px (the worst case: float32
resolves a coordinate near 224 to 1.5e-5 px and neighbouring noise pixels differ by up to 255) and
9e-4 at 224 px on the benchmark's smooth blob + noise images.

The sampling is `jax.scipy.ndimage.map_coordinates(order=1, mode='nearest')` (scipy's edge
replication: both neighbours of a point outside clamp to the edge pixel), under `vmap` over the
images and channels. On XLA:CPU (2 shared cores, 256x224x224x1, the two alternating) it took 46 ms
per batch (median; best 38) against 50 ms (best 46) for explicit batched gathers
(`warp_batch_gathers`, `pixels[b, r, c]`), and gathers from a flattened image (`take_along_axis`)
were ~1.5x slower; benchmarks/input_pipeline.py times both.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from radimagenet_jax.data import augment as augment_lib

MATRIX_KEY = augment_lib.MATRIX_KEY
FLIP_KEY = augment_lib.FLIP_KEY
transform_data = augment_lib.transform_data


def check_supported(config: augment_lib.AugmentConfig) -> None:
  """Raises a one-line ValueError when the device warp cannot reproduce `config`'s transform."""
  if config.interpolation_order != 1 or config.fill_mode != "nearest":
    raise ValueError(
        f"augment_on_device supports interpolation_order=1 with fill_mode='nearest' (every "
        f"preset), got interpolation_order={config.interpolation_order!r}, fill_mode="
        f"{config.fill_mode!r}; use augment_on_device=False (the host warp) for these.")


def is_supported(config: augment_lib.AugmentConfig) -> bool:
  try:
    check_supported(config)
  except ValueError:
    return False
  return True


def _source_coordinates(matrices, flips, height: int, width: int):
  """(rows, cols) float32 (B, H, W): where each output pixel samples the input."""
  r = jnp.arange(height, dtype=jnp.float32)[None, :, None]
  c = jnp.arange(width, dtype=jnp.float32)[None, None, :]
  flip_h = flips[:, 0, None, None]
  flip_v = flips[:, 1, None, None]
  r = jnp.where(flip_v, (height - 1) - r, r)      # (B, H, 1)
  c = jnp.where(flip_h, (width - 1) - c, c)       # (B, 1, W)
  m = matrices.astype(jnp.float32)[:, :, :, None, None]   # (B, 2, 3, 1, 1)
  rows = m[:, 0, 0] * r + m[:, 0, 1] * c + m[:, 0, 2]
  cols = m[:, 1, 0] * r + m[:, 1, 1] * c + m[:, 1, 2]
  return rows, cols


def warp_batch(images, matrices, flips):
  """Keras' apply_transform (order 1, fill 'nearest', then the flips) on a batch, on the device.

  Args:
    images: (B, H, W, C) pixels, uint8 or float, 0..255.
    matrices: (B, 2, 3) (or (B, 3, 3)) output -> input maps in (row, col) pixel coordinates.
    flips: (B, 2) bool (horizontal, vertical), applied after the warp.

  Returns:
    float32 (B, H, W, C) in 0..255.
  """
  images = jnp.asarray(images).astype(jnp.float32)
  _, height, width, _ = images.shape
  rows, cols = _source_coordinates(jnp.asarray(matrices)[:, :2], jnp.asarray(flips), height, width)

  def one(image, r, c):  # image (H, W, C); vmap over the channels too
    return jax.vmap(lambda ch: jax.scipy.ndimage.map_coordinates(ch, [r, c], order=1,
                                                                  mode="nearest"),
                    in_axes=-1, out_axes=-1)(image)

  return jax.vmap(one)(images, rows, cols)


def warp_batch_gathers(images, matrices, flips):
  """`warp_batch` as four explicit batched gathers (`pixels[b, r, c]` at the clamped integer
  neighbours) and the bilinear weights: the same values to 1e-4, kept for the benchmark's
  comparison (slower on XLA:CPU)."""
  images = jnp.asarray(images)
  batch, height, width, _ = images.shape
  rows, cols = _source_coordinates(jnp.asarray(matrices)[:, :2], jnp.asarray(flips), height, width)
  r0f, c0f = jnp.floor(rows), jnp.floor(cols)
  wr, wc = (rows - r0f)[..., None], (cols - c0f)[..., None]
  r0, c0 = r0f.astype(jnp.int32), c0f.astype(jnp.int32)
  # fill 'nearest' = edge replication: both neighbours of a point outside clamp to the edge pixel.
  r1, c1 = jnp.clip(r0 + 1, 0, height - 1), jnp.clip(c0 + 1, 0, width - 1)
  r0, c0 = jnp.clip(r0, 0, height - 1), jnp.clip(c0, 0, width - 1)
  b = jnp.arange(batch)[:, None, None]
  pixels = images.astype(jnp.float32)
  top = pixels[b, r0, c0] * (1 - wc) + pixels[b, r0, c1] * wc       # (B, H, W, C) gathers
  bottom = pixels[b, r1, c0] * (1 - wc) + pixels[b, r1, c1] * wc
  return top * (1 - wr) + bottom * wr


def apply_from_batch(batch):
  """The batch's image warped by its `aug_matrix`/`aug_flip` when it carries them, else as is."""
  if MATRIX_KEY not in batch:
    return batch["image"]
  return warp_batch(batch["image"], batch[MATRIX_KEY], batch[FLIP_KEY])
