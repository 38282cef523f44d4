"""The `gradcam` command's pictures: what each title says, and writing the PNGs.

Every picture names its image uniquely as ``#<index> <id>`` (the split index, then the record's id,
which several images may share: crops of one source image), the true label, each model's predicted
class and its probability, and the Dice, or "excluded (empty mask)" for an image without a lesion
when such images are left out of the statistics (``include_empty_masks=False``; with True the Dice
is shown and marked "(empty mask)"). The thresholded map is outlined next to the mask.
"""
from __future__ import annotations

import os

import numpy as np

from radimagenet_jax import _files
from radimagenet_jax.explain import plots


def image_title(p) -> str:
  """'#12 slab05_crop3': unique per image (the split index), then the record's id."""
  return f"#{p['index']} {p['id']}"


def _name(names, k: int) -> str:
  return names[k] if 0 <= k < len(names) else str(k)


def prediction(p, label: str, names) -> str:
  """'predicted malignant (p 0.83)' for one model on one picture."""
  probs = np.asarray(p["probs"][label])
  k = int(probs.argmax())
  return f"predicted {_name(names, k)} (p {float(probs[k]):.2f})"


def _score(p, label, config):
  """(dice or None, excluded) for a title."""
  if p["empty"] and not config.include_empty_masks:
    return None, True
  return float(p["dice"][label]), False


def overlay_titles(p, label: str, config, names) -> tuple[str, str]:
  """(title, caption) of one model's overlay of one picture."""
  dice, excluded = _score(p, label, config)
  title = plots.score_title(f"{label}  {image_title(p)}", dice, excluded)
  if p["empty"] and not excluded:
    title += " (empty mask)"
  return title, f"label {_name(names, p['label'])}, {prediction(p, label, names)}"


def panel_rows(pictures, config):
  """The panel's rows: images with a lesion first (as the paper's figure), then the others."""
  return sorted(pictures, key=lambda p: p["empty"])[:config.panel_rows]


def write(workdir, config, labels, pictures, names) -> list[str]:
  """Writes overlays/<model>_<index>.png and (two models) panel.png + panel.pdf; returns what was
  written
  (the overlays as one 'overlays/ (N PNG)' entry)."""
  written, n_overlays = [], 0
  for p in pictures[:config.num_overlays]:
    for label in labels:
      title, caption = overlay_titles(p, label, config, names)
      plots.overlay(p["image"], p["maps"][label], p["mask"], cmap=config.colormap, title=title,
                    caption=caption, region=p["region"][label],
                    path=os.path.join(workdir, "overlays", f"{label}_{p['index']:05d}.png"))
      n_overlays += 1
  if n_overlays:
    written.append(f"{os.path.join(workdir, 'overlays')}{os.sep} ({n_overlays} PNG)")
  if len(labels) == 2 and config.panel_rows:
    written += save_panel(panel(config, labels, pictures, names, None),
                          os.path.join(workdir, "panel.png"), f"Grad-CAM {labels[0]} vs {labels[1]}")
  return written


def save_panel(fig, path: str, title: str) -> list[str]:
  """Writes a panel figure as PNG and as vector PDF beside it (Title metadata); closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  written = _files.save_figure(fig, path, title, "radimagenet-jax gradcam")
  plt.close(fig)
  return written


def panel(config, labels, pictures, names, path):
  """The Figure-5-like panel of two models (``labels``) on ``pictures``: written to ``path``, or
  returned as a figure when ``path`` is None."""
  rows = panel_rows(pictures, config)
  a, b = labels
  excluded = [_score(p, a, config)[1] for p in rows]
  return plots.panel([p["image"] for p in rows], [p["mask"] for p in rows],
                     [p["maps"][a] for p in rows], [p["maps"][b] for p in rows], names=(a, b),
                     dice_a=[p["dice"][a] for p in rows], dice_b=[p["dice"][b] for p in rows],
                     row_titles=[f"{image_title(p)}\nlabel {_name(names, p['label'])}"
                                 for p in rows],
                     regions_a=[p["region"][a] for p in rows],
                     regions_b=[p["region"][b] for p in rows],
                     captions_a=[prediction(p, a, names) for p in rows],
                     captions_b=[prediction(p, b, names) for p in rows], excluded=excluded,
                     cmap=config.colormap, path=path)
