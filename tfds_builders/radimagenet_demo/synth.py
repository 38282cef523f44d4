"""Seeded image operations of radimagenet_demo: crop/resize/intensity jitter and synthetic lesions.

Everything takes a `numpy.random.Generator` made from (seed, config, split, index), so an example's
pixels depend only on those numbers: building twice gives the same bytes.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def crop_resize(img: np.ndarray, rng: np.random.Generator, size: int,
                scale: tuple[float, float] = (0.75, 1.0)) -> np.ndarray:
  """A random square crop (side = U(scale) x the short side, random position) resized to size^2."""
  h, w = img.shape
  side = rng.uniform(*scale) * min(h, w)
  y0 = rng.uniform(0, h - side)
  x0 = rng.uniform(0, w - side)
  out = Image.fromarray(img).resize((size, size), Image.BILINEAR,
                                    box=(x0, y0, x0 + side, y0 + side))
  return np.asarray(out, dtype=np.uint8)


def jitter_intensity(img: np.ndarray, rng: np.random.Generator, noise: tuple[float, float] = (0, 4),
                     ) -> np.ndarray:
  """Gamma U(0.8, 1.25), contrast U(0.9, 1.1), brightness U(-10, 10), Gaussian noise sd U(noise)."""
  x = img.astype(np.float64) / 255.0
  x = x ** rng.uniform(0.8, 1.25)
  x = x * rng.uniform(0.9, 1.1) * 255.0 + rng.uniform(-10, 10)
  x = x + rng.normal(0.0, rng.uniform(*noise), size=x.shape)
  return np.round(np.clip(x, 0, 255)).astype(np.uint8)


def smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
  """Gaussian-smoothed white noise rescaled to unit standard deviation."""
  n = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="reflect")
  return n / (n.std() + 1e-12)


def anatomy_mask(img: np.ndarray, threshold: float = 20.0) -> np.ndarray:
  """Foreground (brain) mask of a skull-stripped slice: smoothed intensity > threshold, holes filled,
  largest connected component."""
  fg = ndimage.gaussian_filter(img.astype(np.float64), 1.0) > threshold
  fg = ndimage.binary_fill_holes(fg)
  labels, n = ndimage.label(fg)
  if n == 0:
    return fg
  sizes = ndimage.sum(fg, labels, index=np.arange(1, n + 1))
  return labels == (int(np.argmax(sizes)) + 1)


def insert_lesion(img: np.ndarray, rng: np.random.Generator, *, radius=(2.5, 12.0),
                  contrast=(0.08, 0.50), hypo_fraction: float = 0.4):
  """Adds one synthetic lesion inside the anatomy of a uint8 slice.

  The lesion is an ellipse with radii U(radius) px, random orientation and a boundary made
  irregular by smooth noise; its edge is sharp or diffuse (soft ramp over 10-70 % of the radius),
  its inside textured (multiplicative smooth noise, 0-50 %), and it is brighter or (with probability
  hypo_fraction) darker than the tissue by U(contrast) x the mean tissue intensity. Its centre is
  drawn inside the anatomy mask eroded by the lesion's smaller radius, and the stored mask is clipped
  to the anatomy.

  Returns:
    (image uint8, mask bool, info dict with 'contrast' (signed, relative) and 'area' (pixels)),
    or None when the slice has too little anatomy to hold the lesion.
  """
  h, w = img.shape
  anatomy = anatomy_mask(img)
  a, b = sorted(rng.uniform(*radius, size=2))
  inner = ndimage.binary_erosion(anatomy, iterations=int(np.ceil(a)) + 1)
  ys, xs = np.nonzero(inner)
  if len(ys) == 0:
    return None
  k = rng.integers(len(ys))
  cy, cx = ys[k] + rng.uniform(-0.5, 0.5), xs[k] + rng.uniform(-0.5, 0.5)
  theta = rng.uniform(0, np.pi)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
  v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
  d = np.sqrt((u / b) ** 2 + (v / a) ** 2)
  d = d * (1.0 + rng.uniform(0.0, 0.35) * smooth_noise(rng, (h, w), max(a / 2, 1.0)))
  edge = rng.uniform(0.1, 0.7)
  alpha = np.clip((1.0 - d) / edge, 0.0, 1.0) * anatomy
  texture = 1.0 + rng.uniform(0.0, 0.5) * smooth_noise(rng, (h, w), rng.uniform(0.7, 2.0))
  sign = -1.0 if rng.uniform() < hypo_fraction else 1.0
  rel = sign * rng.uniform(*contrast)
  tissue = float(img[anatomy].mean())
  out = img.astype(np.float64) + alpha * rel * tissue * texture
  mask = (alpha >= 0.5) & anatomy
  if not mask.any():
    return None
  return (np.round(np.clip(out, 0, 255)).astype(np.uint8), mask,
          {"contrast": rel, "area": int(mask.sum())})
