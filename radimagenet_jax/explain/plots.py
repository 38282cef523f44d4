"""Grad-CAM pictures with matplotlib (Agg backend, no display needed).

``overlay``: one image with its heat map (a standard colormap, 'jet' by default) and the
ground-truth mask outline. ``panel``: the paper's Figure 5 layout, one row per image, columns
(image + mask outline, model A's map, model B's map), each map titled with its Dice.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def display_image(image) -> np.ndarray:
  """A grey [0, 1] picture of a (H, W, 3) image in any preprocessing mode.

  Every preprocessing mode is a per-channel affine map of the pixels, so the channel mean, min-max
  scaled, recovers a greyscale image exactly (and a colour image's luminance approximately).
  """
  x = np.asarray(image, np.float32)
  g = x.mean(axis=-1) if x.ndim == 3 else x
  lo, hi = float(g.min()), float(g.max())
  return (g - lo) / (hi - lo) if hi > lo else np.zeros_like(g)


def _draw(ax, image, cam=None, mask=None, title=None, cmap="jet", alpha=0.4):
  ax.imshow(display_image(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
  if cam is not None:
    ax.imshow(np.asarray(cam), cmap=cmap, vmin=0, vmax=1, alpha=alpha, interpolation="bilinear")
  if mask is not None and np.any(mask):
    ax.contour(np.asarray(mask, np.float32), levels=[0.5], colors="lime", linewidths=1.0)
  if title:
    ax.set_title(title, fontsize=8)
  ax.set_axis_off()


def overlay(image, cam, mask=None, path=None, title=None, cmap="jet", alpha=0.4):
  """One image with its heat map and mask outline; saved as PNG when ``path`` is given.

  Returns the matplotlib Figure (closed after saving when a path is given).
  """
  fig, ax = plt.subplots(figsize=(3, 3), dpi=100)
  _draw(ax, image, cam, mask, title, cmap, alpha)
  fig.tight_layout()
  return _save(fig, path)


def panel(images, masks, cams_a, cams_b, names=("model A", "model B"), dice_a=None, dice_b=None,
          row_titles=None, path=None, cmap="jet", alpha=0.4):
  """Figure-5-like panel: rows = images; columns = image + mask, model A's map, model B's map."""
  n = len(images)
  fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), dpi=100, squeeze=False)
  for i in range(n):
    mask = None if masks is None else masks[i]
    _draw(axes[i, 0], images[i], None, mask, row_titles[i] if row_titles else "image + mask")
    for col, cams, dice, name in ((1, cams_a, dice_a, names[0]), (2, cams_b, dice_b, names[1])):
      title = name if dice is None else f"{name}  Dice {float(dice[i]):.2f}"
      _draw(axes[i, col], images[i], cams[i], mask, title, cmap, alpha)
  fig.tight_layout()
  return _save(fig, path)


def _save(fig, path):
  if path is not None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
  return fig
