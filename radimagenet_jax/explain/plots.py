"""Grad-CAM pictures with matplotlib (Agg backend, no display needed).

``overlay``: one image with its heat map (a standard colormap, 'jet' by default), the ground-truth
mask outline (lime, solid), the thresholded region's outline (magenta, dashed) and a colour bar.
``panel``: the paper's Figure 5 layout, one row per image, columns (image + mask outline, model A's
map, model B's map), each map titled with its Dice, or "excluded" for an image without a lesion
(an empty mask, left out of the statistics), and an optional caption (label, prediction, its
probability). Both return the Figure; its axes titles are the texts drawn.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from radimagenet_jax import _files  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

MASK_COLOUR, REGION_COLOUR = "lime", "magenta"
EXCLUDED = "excluded (empty mask)"


def display_image(image) -> np.ndarray:
  """A grey [0, 1] picture of a (H, W, 3) image in any preprocessing mode.

  Every preprocessing mode is a per-channel affine map of the pixels, so the channel mean, min-max
  scaled, recovers a greyscale image exactly (and a colour image's luminance approximately).
  """
  x = np.asarray(image, np.float32)
  g = x.mean(axis=-1) if x.ndim == 3 else x
  lo, hi = float(g.min()), float(g.max())
  return (g - lo) / (hi - lo) if hi > lo else np.zeros_like(g)


def score_title(name: str, dice=None, excluded: bool = False) -> str:
  """'A  Dice 0.83', or 'A  excluded (empty mask)' for an image left out of the statistics."""
  if excluded:
    return f"{name}  {EXCLUDED}"
  return name if dice is None else f"{name}  Dice {float(dice):.2f}"


def _outline(ax, array, colour, style):
  """The outline of a binary region; padded, so that a region touching the border (or covering
  the whole image) is closed along the image edge instead of left open (or not drawn)."""
  if array is None or not np.any(array):
    return
  a = np.pad(np.asarray(array, np.float32), 1)
  h, w = a.shape
  ax.contour(np.arange(-1, w - 1), np.arange(-1, h - 1), a, levels=[0.5], colors=colour,
             linewidths=1.0, linestyles=style)
  ax.set_xlim(-0.5, w - 2.5)
  ax.set_ylim(h - 2.5, -0.5)


def _draw(ax, image, cam=None, mask=None, title=None, cmap="jet", alpha=0.4, region=None):
  """Draws one picture; returns the heat map's AxesImage (None without a map)."""
  ax.imshow(display_image(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
  heat = None
  if cam is not None:
    heat = ax.imshow(np.asarray(cam), cmap=cmap, vmin=0, vmax=1, alpha=alpha,
                     interpolation="bilinear")
  _outline(ax, mask, MASK_COLOUR, "solid")
  _outline(ax, region, REGION_COLOUR, "dashed")
  if title:
    ax.set_title(title, fontsize=7)
  ax.set_axis_off()
  return heat


def _legend(fig, with_region: bool):
  handles = [Line2D([], [], color=MASK_COLOUR, lw=1.5, label="lesion mask")]
  if with_region:
    handles.append(Line2D([], [], color=REGION_COLOUR, lw=1.5, ls="--",
                          label="map above threshold"))
  fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)


def overlay(image, cam, mask=None, path=None, title=None, cmap="jet", alpha=0.4, region=None,
            caption=None):
  """One image with its heat map, mask outline, thresholded region outline (``region``) and a
  colour bar; ``caption`` is a second title line (e.g. 'label 1, predicted 1 (p 0.83)'). Saved as
  PNG when ``path`` is given. Returns the matplotlib Figure (closed after saving)."""
  fig, ax = plt.subplots(figsize=(3.8, 3.8), dpi=100, layout="constrained")
  text = "\n".join(t for t in (title, caption) if t)
  heat = _draw(ax, image, cam, mask, text, cmap, alpha, region)
  if heat is not None:
    fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.02, label="Grad-CAM")
  _legend(fig, region is not None)
  fig.get_layout_engine().set(rect=(0, 0.07, 1, 0.93))
  return _save(fig, path)


def panel(images, masks, cams_a, cams_b, names=("model A", "model B"), dice_a=None, dice_b=None,
          row_titles=None, path=None, cmap="jet", alpha=0.4, regions_a=None, regions_b=None,
          captions_a=None, captions_b=None, excluded=None):
  """Figure-5-like panel: rows = images; columns = image + mask, model A's map, model B's map.

  ``row_titles``: one per row (make them unique, e.g. '#index id'); ``excluded[i]``: image i has no
  lesion and is out of the statistics (titled so instead of a Dice); ``regions_*``: thresholded
  regions to outline; ``captions_*``: a second title line per map (prediction, probability).
  """
  n = len(images)
  fig, axes = plt.subplots(n, 3, figsize=(8.6, 2.7 * n + 0.5), dpi=100, squeeze=False,
                           layout="constrained")
  heat = None
  for i in range(n):
    mask = None if masks is None else masks[i]
    out = bool(excluded[i]) if excluded is not None else False
    _draw(axes[i, 0], images[i], None, mask, row_titles[i] if row_titles else "image + mask")
    for col, cams, dice, name, regions, captions in (
        (1, cams_a, dice_a, names[0], regions_a, captions_a),
        (2, cams_b, dice_b, names[1], regions_b, captions_b)):
      title = score_title(name, None if dice is None else dice[i], out)
      if captions is not None and captions[i]:
        title = f"{title}\n{captions[i]}"
      heat = _draw(axes[i, col], images[i], cams[i], mask, title, cmap, alpha,
                   None if regions is None else regions[i])
  if heat is not None:
    fig.colorbar(heat, ax=axes[:, 1:], fraction=0.03, pad=0.02, label="Grad-CAM")
  _legend(fig, regions_a is not None or regions_b is not None)
  fig.get_layout_engine().set(rect=(0, 0.25 / (2.7 * n + 0.5), 1, 1 - 0.25 / (2.7 * n + 0.5)))
  return _save(fig, path)


def titles(fig) -> list[str]:
  """The axes titles of a figure, row by row (what the pictures say, for tests and logs)."""
  return [ax.get_title() for ax in fig.axes if ax.get_title()]


def _save(fig, path):
  if path is not None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _files.atomic_target(path) as tmp:
      fig.savefig(tmp, format="png")
    plt.close(fig)
  return fig
