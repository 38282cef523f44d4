"""Readers for the medical image formats the builders meet: DICOM, PNG/JPEG and NIfTI.

Every reader raises `ReaderError` (a ValueError naming the file and the reason) for a file it cannot
use, so that a builder can hand the reason to `RadBuilder.source_error(path, reason)`.

- `read_dicom(path)`: float32 pixels with the Modality LUT / Rescale Slope and Intercept applied (HU
  for CT); compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE) are decoded by the pylibjpeg
  plugins (`pip install 'radimagenet-jax[demo]'`).
- `window(hu, center, width)`: linear window to uint8.
- `read_image(path)`: uint8 HxW (grayscale) or HxWx3 (colour) with PIL.
- `read_nifti(path)`: float32 volume reoriented to RAS+ with nibabel.

`read_dicom` and `read_nifti` refuse, from the header and before any pixel data is decoded, a file
that would decode to more than `MAX_VOXELS` elements (voxels x samples per voxel): a corrupt or
hostile header (65535 x 65535 x 100000 frames, a 30000^3 volume in a 1 KB .nii.gz) would otherwise
allocate or decompress terabytes. 2-D PNG/JPEG are capped by PIL's `Image.MAX_IMAGE_PIXELS`.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

_PLUGINS_HINT = ("install the pylibjpeg decoders: pip install pylibjpeg pylibjpeg-libjpeg "
                 "pylibjpeg-openjpeg pylibjpeg-rle (all in pip install 'radimagenet-jax[demo]')")


class ReaderError(ValueError):
  """A file that a reader cannot use; `reason` is short enough for skipped_files.tsv."""

  def __init__(self, path, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


_MAX_VOXELS_ENV = "RADIMAGENET_JAX_MAX_VOXELS"


def _max_voxels_from_env(default: int = 1 << 30) -> int:
  """The limit in $RADIMAGENET_JAX_MAX_VOXELS (an integer, 0 = no limit), else `default`."""
  value = os.environ.get(_MAX_VOXELS_ENV, "").strip()
  if not value:
    return default
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{_MAX_VOXELS_ENV} must be an integer number of elements (0: no limit), "
                     f"got {value!r}") from None


# Most elements (voxels x samples per voxel) that read_dicom / read_nifti decode from one file;
# 0 or None disables the check. Default 2**30 = 1.07e9: above the largest real volumes (a 512 x 512
# x 2000 CT is 5.2e8, a 1024 x 1024 x 1000 one 1.05e9) while the float32 result stays at 4 GiB
# (DICOM decoding holds the stored integers and a float64 rescaled copy on top of that); 2**31
# would already be 8 GiB of float32 for one file. Raise it by assigning
# `radimagenet_jax.data.build.readers.MAX_VOXELS` (read at each call), or with the environment
# variable RADIMAGENET_JAX_MAX_VOXELS, read once when this module is imported (child processes
# inherit it, which they do not an assignment made in the parent).
MAX_VOXELS: int | None = _max_voxels_from_env()


def _check_size(path, what: str, dims) -> None:
  """ReaderError when the product of the header values `dims` is above MAX_VOXELS."""
  limit = MAX_VOXELS
  total = math.prod(int(d) for d in dims)
  if limit and total > limit:
    raise ReaderError(path, f"{what} = {' x '.join(str(int(d)) for d in dims)} = {total} elements, "
                      f"above the limit of {limit} (refused from the header as a corrupt file or "
                      f"a decompression bomb; raise it with radimagenet_jax.data.build.readers."
                      f"MAX_VOXELS or the environment variable {_MAX_VOXELS_ENV}, 0 = no limit)")


def transfer_syntax(ds) -> str:
  """'<name> (<uid>)' of a pydicom dataset's transfer syntax, or 'unknown'."""
  uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
  return f"{uid.name} ({uid})" if uid is not None else "unknown transfer syntax"


def read_dicom(path, *, frame: int | None = None, invert_monochrome1: bool = True) -> np.ndarray:
  """Reads a DICOM file's pixels as float32, in modality units (Rescale Slope/Intercept applied).

  Args:
    path: the .dcm file.
    frame: for multi-frame files, the frame to read (None: all frames, shape (frames, H, W[, 3])).
    invert_monochrome1: MONOCHROME1 stores "higher = darker" (radiographs); flip it to
      max + min - x so that higher is brighter, as in every other grayscale image.

  Returns:
    float32 (H, W), (H, W, 3) for colour (palette and YBR converted to RGB), or with a leading
    frame axis when frame is None and the file has several frames.

  Raises:
    ReaderError: not DICOM, no pixel data, a transfer syntax no installed decoder handles,
      truncated pixel data (the message names the file and the transfer syntax), or more than
      MAX_VOXELS elements to decode: Rows x Columns x NumberOfFrames x SamplesPerPixel, or
      Rows x Columns x SamplesPerPixel when `frame` is given (checked before decoding).
  """
  import pydicom
  from pydicom import pixels
  path = os.fspath(path)
  try:
    ds = pydicom.dcmread(path)
  except Exception as e:  # pydicom raises InvalidDicomError, OSError, EOFError...
    raise ReaderError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
  if "PixelData" not in ds:
    raise ReaderError(path, "DICOM file holds no pixel data")
  try:  # Unreadable values are left to pydicom, whose pixel_array then fails below.
    rows, cols, samples = (int(ds.get(k) or d) for k, d in
                           (("Rows", 0), ("Columns", 0), ("SamplesPerPixel", 1)))
    frames = int(ds.get("NumberOfFrames") or 1)
  except Exception:
    pass
  else:
    if frame is None:
      _check_size(path, "DICOM Rows x Columns x NumberOfFrames x SamplesPerPixel",
                  (rows, cols, frames, samples))
    else:
      _check_size(path, "DICOM Rows x Columns x SamplesPerPixel (one frame)", (rows, cols, samples))
  syntax = transfer_syntax(ds)
  try:
    arr = pixels.pixel_array(ds, index=frame) if frame is not None else ds.pixel_array
  except Exception as e:
    reason = f"cannot decode pixel data with transfer syntax {syntax}: {type(e).__name__}: "
    reason += " ".join(str(e).split())[:200]
    if ds.file_meta.TransferSyntaxUID.is_compressed and "missing" in str(e).lower():
      reason += f"; {_PLUGINS_HINT}"  # pydicom: "... plugins are missing dependencies".
    raise ReaderError(path, reason) from e
  photometric = str(ds.get("PhotometricInterpretation", "")).upper()
  if photometric == "PALETTE COLOR":
    arr = pixels.apply_color_lut(arr, ds)
  elif ds.get("SamplesPerPixel", 1) == 1:
    arr = pixels.apply_modality_lut(arr, ds)  # Rescale Slope/Intercept or Modality LUT.
  arr = np.asarray(arr, dtype=np.float32)
  if photometric == "MONOCHROME1" and invert_monochrome1:
    arr = arr.max() + arr.min() - arr
  return arr


def window(hu, center: float, width: float) -> np.ndarray:
  """Linear window: center - width/2 -> 0, center + width/2 -> 255, clipped, rounded to uint8."""
  if width <= 0:
    raise ValueError(f"window width must be > 0, got {width}")
  lo = center - width / 2.0
  x = (np.asarray(hu, dtype=np.float64) - lo) / width
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_image(path) -> np.ndarray:
  """Reads a PNG/JPEG/BMP/TIFF as uint8 HxW (grayscale) or HxWx3 (RGB).

  Alpha is dropped; 16-bit grayscale is scaled by 255/65535; palette images become RGB unless their
  palette is gray. An image of more than PIL's `Image.MAX_IMAGE_PIXELS` pixels (a decompression
  bomb: a few bytes on disk that would decode to gigabytes) is a ReaderError, read from the header
  before anything is decoded.
  """
  from PIL import Image, UnidentifiedImageError
  path = os.fspath(path)
  try:
    with warnings.catch_warnings():
      # PIL warns (and decodes) between 1x and 2x MAX_IMAGE_PIXELS, raises above: refuse both.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      img = Image.open(path)
    with img:
      limit = Image.MAX_IMAGE_PIXELS
      if limit and img.width * img.height > limit:
        raise Image.DecompressionBombError(
            f"{img.width}x{img.height} = {img.width * img.height} pixels, above PIL's limit of "
            f"{limit} (Image.MAX_IMAGE_PIXELS)")
      img.load()
      mode = img.mode
      if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if a.max() > 255 or mode.startswith("I;16") else 1.0
        return np.round(np.clip(a * scale, 0, 255)).astype(np.uint8)
      if mode == "F":
        return np.round(np.clip(np.asarray(img), 0, 255)).astype(np.uint8)
      if mode in ("L", "LA", "1"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
      rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
  except Image.DecompressionBombError as e:
    raise ReaderError(path, f"image too large, refused as a possible decompression bomb "
                      f"({e})") from e
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise ReaderError(path, f"not a readable image ({type(e).__name__}: {e})") from e
  if mode == "P" and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
    return np.ascontiguousarray(rgb[..., 0])
  return rgb


def read_nifti(path, *, return_affine: bool = False):
  """Reads a NIfTI (.nii / .nii.gz) volume as float32, reoriented to RAS+ (axis 0 = left->right,
  1 = posterior->anterior, 2 = inferior->superior); optionally with its 4x4 affine.

  A header whose dimensions multiply to more than MAX_VOXELS is a ReaderError, raised before
  anything is decoded (nib.load reads only the header)."""
  import nibabel as nib
  path = os.fspath(path)
  try:
    img = nib.load(path)
    shape = img.header.get_data_shape()
  except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError (truncated gzip)...
    raise ReaderError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from e
  _check_size(path, "NIfTI dim", shape)
  try:  # as_closest_canonical loads the data when it has to reorder axes.
    img = nib.as_closest_canonical(img)
    data = np.asarray(img.get_fdata(dtype=np.float32))
  except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError (truncated gzip)...
    raise ReaderError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from e
  return (data, img.affine) if return_affine else data
