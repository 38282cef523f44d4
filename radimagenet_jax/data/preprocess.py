"""Input preprocessing modes: the one table that maps uint8 pixels to network inputs.

The official RadImageNet fine-tuning code feeds Keras
`ImageDataGenerator(rescale=1./255, preprocessing_function=imagenet_utils.preprocess_input)`.
Keras runs the preprocessing function first (default 'caffe' mode: RGB -> BGR, subtract the ImageNet
BGR mean, no std) and the rescale second, so the RadImageNet weights expect

    x = (BGR(img) - [103.939, 116.779, 123.68]) / 255

That is mode 'radimagenet' (the default). The other modes are the usual ones of other pretrained
weights:

| mode          | formula (img in 0..255, RGB in)                          | channel order |
| ------------- | -------------------------------------------------------- | ------------- |
| radimagenet   | (BGR(img) - [103.939, 116.779, 123.68]) / 255            | BGR           |
| caffe         | BGR(img) - [103.939, 116.779, 123.68]   (Keras default)  | BGR           |
| imagenet      | (img / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225] (torch) | RGB |
| unit          | img / 255                                                | RGB           |
| tf            | img / 127.5 - 1                                          | RGB           |

Grayscale inputs (HxW or HxWx1, or batches of them) are replicated to three channels first, as Keras'
`color_mode='rgb'` does.
"""
from __future__ import annotations

import numpy as np

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)

# mode -> (reverse channels to BGR, pre-scale, mean, std). Output = (flip(img) * scale - mean) / std.
_MODES = {
    "radimagenet": (True, 1.0 / 255.0, np.divide(_CAFFE_MEAN_BGR, 255.0), (1.0, 1.0, 1.0)),
    "caffe": (True, 1.0, _CAFFE_MEAN_BGR, (1.0, 1.0, 1.0)),
    "imagenet": (False, 1.0 / 255.0, _TORCH_MEAN, _TORCH_STD),
    "unit": (False, 1.0 / 255.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "tf": (False, 1.0 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
}
MODES = tuple(_MODES)


def _xp(images):
  """Returns the array module of `images`: jax.numpy for jax arrays/tracers, else numpy."""
  if isinstance(images, np.ndarray) or np.isscalar(images):
    return np
  module = type(images).__module__
  if module.startswith("jax") or module.startswith("jaxlib"):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    return jnp
  return np


def to_rgb(images):
  """Replicates grayscale images (..., H, W) or (..., H, W, 1) to (..., H, W, 3).

  A 2-D array is one HxW image; in any other array the last axis is the channel axis (1 or 3), so a
  batch of grayscale images must be (B, H, W, 1).
  """
  xp = _xp(images)
  images = xp.asarray(images)
  if images.ndim == 2:
    images = images[..., None]
  if images.shape[-1] == 1:
    images = xp.concatenate([images] * 3, axis=-1)
  if images.shape[-1] != 3:
    raise ValueError(f"expected images (H, W), (..., H, W, 1) or (..., H, W, 3) with 1 or 3 "
                     f"channels, got shape {images.shape}")
  return images


def preprocess(images, mode: str = "radimagenet", dtype=None):
  """Maps images with pixel values in 0..255 (uint8 or float) to network inputs.

  Args:
    images: numpy or jax array, RGB (..., H, W, 3) or grayscale (H, W), (..., H, W, 1); a batch axis
      (and any leading axes) is optional.
    mode: one of MODES (see the module docstring for the exact formulas); 'radimagenet' is what the
      RadImageNet weights were trained with.
    dtype: output dtype; default float32.

  Returns:
    An array of the same kind (numpy or jax) with shape (..., H, W, 3).
  """
  if mode not in _MODES:
    raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {list(MODES)}")
  xp = _xp(images)
  dtype = dtype or np.float32
  flip, scale, mean, std = _MODES[mode]
  images = xp.asarray(images)
  if images.ndim == 2:
    images = images[..., None]
  if images.shape[-1] not in (1, 3):
    to_rgb(images)  # raises the error for a wrong channel count
  # (x * scale - mean) / std == x * gain + bias, one multiply-add per output value.
  gain = (scale / np.asarray(std, np.float64)).astype(dtype)
  bias = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(dtype)
  if xp is np:
    # Per output channel on contiguous planes: a broadcast over a trailing axis of 3 runs numpy's
    # inner loop 3 elements at a time, ~8x slower, and this runs per image in the input pipeline.
    planes = images.astype(dtype, copy=False)
    out = np.empty(images.shape[:-1] + (3,), dtype)
    for c in range(3):
      source = 0 if images.shape[-1] == 1 else (2 - c if flip else c)
      out[..., c] = planes[..., source] * gain[c] + bias[c]
    return out
  if flip and images.shape[-1] == 3:
    images = images[..., ::-1]
  return (images.astype(dtype) * xp.asarray(gain) + xp.asarray(bias)).astype(dtype)
