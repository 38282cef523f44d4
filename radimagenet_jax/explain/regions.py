"""Turning Grad-CAM maps into predicted lesion regions, and Dice / IoU against ground-truth masks.

The paper: "pixels of the CAM (scaled to 0-255) above 180 count as the predicted lesion". It does not
say ``>`` or ``>=``, nor whether the map is resized before thresholding. Our choices (config options
restore the others):

* Scaling: ``floor(255 * map)``, as ``np.uint8(255 * heatmap)`` in the Keras Grad-CAM example, so the
  comparison is between integers and ``>`` vs ``>=`` is a real difference (``> 180`` keeps
  ``255 * map >= 181``, ``>= 180`` keeps ``255 * map >= 180``).
* Comparison: ``>`` (the paper's word "above"); option ``'>='``.
* Order: ``'resize_then_threshold'`` (default): the map is resized (bilinear) to the image size
  first, as it is drawn over the image, then thresholded. ``'threshold_then_resize'``: the map at the
  layer's resolution (scaled by its own maximum) is thresholded, then the binary region is resized
  to the image with nearest neighbour (blocky regions).
* Empty ground-truth masks (e.g. BUSI 'normal' images): Dice = IoU = 1 if the prediction is empty
  too, else 0. They are flagged so that summaries can count them separately (see stats / run).
* Masks whose size differs from the image are resized with nearest neighbour and flagged.
"""
from __future__ import annotations

import numpy as np

COMPARISONS = (">", ">=")
ORDERS = ("resize_then_threshold", "threshold_then_resize")


def to_uint8_scale(maps) -> np.ndarray:
  """[0, 1] maps -> integers 0..255 by truncation (np.uint8(255 * map))."""
  # float64, so that a float32 map of exactly k/255 scales back to k, not k - 1e-5.
  m = np.clip(np.asarray(maps, np.float64), 0.0, 1.0)
  return np.floor(255.0 * m).astype(np.uint8)


def threshold(maps, level: int = 180, comparison: str = ">") -> np.ndarray:
  """Boolean predicted regions: ``floor(255 * map) > level`` (or ``>=``)."""
  if comparison not in COMPARISONS:
    raise ValueError(f"comparison={comparison!r}; expected one of {COMPARISONS}.")
  scaled = to_uint8_scale(maps)
  return scaled > level if comparison == ">" else scaled >= level


def resize_nearest(masks, size) -> np.ndarray:
  """Nearest-neighbour resize of (..., h, w) arrays to (..., H, W), pixel centres aligned
  (the half-pixel convention of jax.image.resize(method='nearest') and PIL)."""
  masks = np.asarray(masks)
  h, w = masks.shape[-2:]
  out_h, out_w = size
  rows = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1)
  cols = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1)
  return masks[..., rows[:, None], cols[None, :]]


def predicted_regions(maps=None, cams=None, level: int = 180, comparison: str = ">",
                      order: str = "resize_then_threshold", size=None) -> np.ndarray:
  """Predicted lesion regions (B, H, W) from Grad-CAM output.

  Args:
    maps: (B, H, W) maps at the image resolution (``GradCamResult.maps``); used by the default order.
    cams: (B, h, w) maps at the layer's resolution (``GradCamResult.cams``); used by
      'threshold_then_resize', together with ``size`` = (H, W).
  """
  if order == "resize_then_threshold":
    return threshold(maps, level, comparison)
  if order == "threshold_then_resize":
    if size is None:
      size = np.asarray(maps).shape[-2:]
    return resize_nearest(threshold(cams, level, comparison), size)
  raise ValueError(f"order={order!r}; expected one of {ORDERS}.")


def prepare_masks(masks, size):
  """Ground-truth masks -> boolean (B, H, W) at the image size, and a per-mask 'resized' flag.

  Accepts (B, h, w) or (B, h, w, 1) arrays (or a list of such masks of different sizes) with values
  {0, 1} or {0, 255}; any non-zero pixel is lesion.
  """
  out, resized = [], []
  for m in list(masks):
    m = np.asarray(m)
    if m.ndim == 3 and m.shape[-1] == 1:
      m = m[..., 0]
    if m.ndim != 2:
      raise ValueError(f"mask has shape {m.shape}; expected (height, width) or (height, width, 1).")
    flag = tuple(m.shape) != tuple(size)
    out.append(resize_nearest(m, size) > 0 if flag else m > 0)
    resized.append(flag)
  return np.stack(out), np.asarray(resized, bool)


def dice_iou(pred, truth):
  """Per-image Dice and IoU of boolean (B, H, W) regions, and the 'ground truth empty' flag.

  Dice = 2|P & G| / (|P| + |G|), IoU = |P & G| / |P | G|. An empty ground truth gives 1.0 when
  the prediction is empty too and 0.0 otherwise (both scores).
  """
  pred = np.asarray(pred, bool)
  truth = np.asarray(truth, bool)
  if pred.shape != truth.shape:
    raise ValueError(f"prediction shape {pred.shape} differs from mask shape {truth.shape}.")
  axes = tuple(range(1, pred.ndim))
  inter = np.sum(pred & truth, axis=axes).astype(np.float64)
  p = np.sum(pred, axis=axes).astype(np.float64)
  g = np.sum(truth, axis=axes).astype(np.float64)
  union = p + g - inter
  empty_truth = g == 0
  both_empty = union == 0
  dice = np.where(both_empty, 1.0, 2.0 * inter / np.where(both_empty, 1.0, p + g))
  iou = np.where(both_empty, 1.0, inter / np.where(both_empty, 1.0, union))
  return dice, iou, empty_truth
