"""The real images radimagenet_demo is made of, found on disk inside installed PyPI packages.

- nilearn ships the MNI152 ICBM 2009a nonlinear symmetric T1 template (a skull-stripped 1 mm brain
  MRI, 197x233x189) as `nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`;
  it is located with importlib.resources and read with nibabel (`readers.read_nifti`), never through
  nilearn's fetchers (no network).
- pydicom ships `pydicom/data/test_files/*.dcm` and pydicom-data (import name `data_store`) ships
  `data_store/data/*.dcm`: de-identified CT, MR, radiographs, ultrasound and nuclear medicine images
  in many transfer syntaxes. They are read from those folders directly: `pydicom.data.
  get_testdata_files` is not used because it may download files.

Images are turned into uint8 here (CT: a fixed HU window; everything else: 1st-99.5th percentile
stretch; colour: ITU-R 601 luma), then cropped and resized by the builder.
"""
from __future__ import annotations

import dataclasses
import importlib
import os

import numpy as np

from radimagenet_jax.data.build import readers

DEMO_EXTRA = "pip install 'radimagenet-jax[demo]'"
MNI_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_PATIENT = "MNI152-ICBM2009a-sym"


class MissingSourceError(ImportError):
  """A package that holds demo source images is not installed."""


def require(module: str, pip_name: str):
  """Imports `module` or raises MissingSourceError naming the package to install."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingSourceError(
        f"radimagenet_demo reads its images from the '{pip_name}' package, which is not "
        f"installed ({e}). Install the demo extra: {DEMO_EXTRA} (or pip install {pip_name}).") from e


def mni_t1_path() -> str:
  """Path of the MNI152 T1 template inside the installed nilearn package."""
  require("nibabel", "nibabel")
  require("nilearn", "nilearn")
  import importlib.resources as resources
  path = resources.files("nilearn") / "datasets" / "data" / MNI_FILE
  if not path.is_file():
    raise MissingSourceError(f"{path} not found: this nilearn version does not ship {MNI_FILE}; "
                             f"reinstall with {DEMO_EXTRA}.")
  return os.fspath(path)


def dicom_dirs() -> dict[str, str]:
  """{'pydicom': .../pydicom/data/test_files, 'pydicom-data': .../data_store/data}."""
  pydicom = require("pydicom", "pydicom")
  data_store = require("data_store", "pydicom-data")
  for plugin, pip_name in (("libjpeg", "pylibjpeg-libjpeg"), ("openjpeg", "pylibjpeg-openjpeg"),
                           ("rle", "pylibjpeg-rle")):
    require(plugin, pip_name)  # The compressed sources below need the three decoders.
  return {"pydicom": os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files"),
          "pydicom-data": os.path.join(os.path.dirname(data_store.__file__), "data")}


@dataclasses.dataclass(frozen=True)
class DicomSource:
  """One DICOM file used by the 'pretrain' config."""
  label: str         # RadImageNet-style modality/anatomy/class.
  package: str       # 'pydicom' or 'pydicom-data'.
  filename: str
  patient_id: str    # The file's PatientID (or a stand-in when it has none).
  syntax: str        # Transfer syntax, for the description.
  window: tuple[float, float] | None = None  # CT (center, width) in HU; None: percentile stretch.
  frames: tuple[int, ...] = (0,)             # Frames used from a multi-frame file.


# Where a file exists in several transfer syntaxes, the compressed copy is used on purpose: the
# demo exercises the real decoders. 10 classes; image counts per class are in the description.
DICOM_SOURCES = (
    DicomSource("CT/head/axial", "pydicom-data", "693_J2KR.dcm", "CQ500-CT-310",
                "JPEG 2000 lossless", (40, 80)),
    DicomSource("CT/head/axial", "pydicom", "J2K_pixelrep_mismatch.dcm", "JXD191021006",
                "JPEG 2000 lossless", (40, 80)),
    DicomSource("CT/spine/axial", "pydicom", "CT_small.dcm", "1CT1", "Explicit VR LE",
                (300, 1500)),
    DicomSource("CT/spine/axial", "pydicom-data", "bad_sequence.dcm", "b2cbe507f250",
                "JPEG lossless P14", (300, 1500)),
    DicomSource("CT/abd/pancreas", "pydicom-data", "explicit_VR-UN.dcm", "PANCREAS_0001",
                "JPEG 2000 lossless", (40, 400)),
    DicomSource("MR/shoulder/coronal", "pydicom-data", "MR2_J2KR.dcm", "5MR2",
                "JPEG 2000 lossless"),
    DicomSource("MR/abd/axial", "pydicom-data", "MR-SIEMENS-DICOM-WithOverlays.dcm", "021234567",
                "Explicit VR LE"),
    DicomSource("CR/chest/frontal", "pydicom-data", "RG1_J2KR.dcm", "9RG1", "JPEG 2000 lossless"),
    DicomSource("CR/extremity/tibia", "pydicom-data", "RG3_J2KR.dcm", "11RG3",
                "JPEG 2000 lossless"),
    DicomSource("US/heart/echo", "pydicom", "examples_ybr_color.dcm", "204",
                "JPEG baseline, 30 frames", frames=(0, 6, 12, 18, 24)),
    DicomSource("US/heart/echo", "pydicom-data", "color3d_jpeg_baseline.dcm", "204",
                "JPEG baseline, 120 frames", frames=(0, 30, 60, 90)),
    DicomSource("US/heart/echo", "pydicom-data", "JPGLosslessP14SV1_1s_1f_8b.dcm", "echo-P14SV1",
                "JPEG lossless P14"),
    DicomSource("US/other/noncardiac", "pydicom-data", "US1_J2KR.dcm", "13US1",
                "JPEG 2000 lossless (YBR_RCT)"),
    DicomSource("US/other/noncardiac", "pydicom-data", "OBXXXX1A_rle.dcm", "11-05-25-142825",
                "RLE lossless, palette colour"),
    DicomSource("US/other/noncardiac", "pydicom-data", "gdcm-US-ALOKA-16.dcm", "98279",
                "Implicit VR LE, palette colour"),
    DicomSource("NM/wholebody/bone", "pydicom-data", "JPEG-LL.dcm", "8NM1", "JPEG lossless P14"),
)

# Files with pixel data that the demo does not use, and why (listed in the description).
NOT_USED = (
    ("uncompressed / other-syntax copies of a used image (693_UNC*, MR2_*, RG1_*, RG3_*, US1_*, "
     "OBXXXX1A*, JPEG2000*.dcm, ...)", "same pixels as the file used"),
    ("JPEG-lossy.dcm, JPEG2000-embedded-sequence-delimiter.dcm",
     "deliberately malformed codestreams that no installed decoder reads"),
    ("MR_truncated.dcm, badVR.dcm, meta_missing_tsyntax.dcm, nested_priv_SQ.dcm",
     "truncated or invalid pixel description"),
    ("SC_*, vlut_04, mlut_18, image_dfl, GDCMJ2K_TextGBR, JPEGLSNearLossless_*, charset_files/*",
     "synthetic test patterns, not medical images"),
    ("dicomdirtests/*, rtdose*, MR_small*, emri_small*", "16x16 / 10x10 / 64x64 images, too small or "
     "dose grids"),
    ("liver*.dcm (SEG), eCT_Supplemental.dcm", "segmentation masks / spectral CT maps, not images"),
)


def dicom_path(src: DicomSource) -> str:
  return os.path.join(dicom_dirs()[src.package], src.filename)


def to_uint8(arr: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
  """float image (H, W) or (H, W, 3) -> uint8 grayscale (H, W)."""
  arr = np.asarray(arr, dtype=np.float64)
  if arr.ndim == 3:  # RGB -> luma (ITU-R 601), as PIL's convert('L').
    arr = arr @ np.array([0.299, 0.587, 0.114])
  if window is not None:
    return readers.window(arr, *window)
  lo, hi = np.percentile(arr, [1.0, 99.5])
  if hi <= lo:
    hi = lo + 1.0
  return np.round(np.clip((arr - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def read_dicom_images(src: DicomSource) -> list[np.ndarray]:
  """The uint8 grayscale images (one per used frame) of a DICOM source; ReaderError if unusable."""
  path = dicom_path(src)
  out = []
  for f in src.frames:
    arr = readers.read_dicom(path, frame=f if src.frames != (0,) else None)
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] != 3):
      arr = arr[0]  # A multi-frame file read whole: first frame.
    out.append(to_uint8(arr, src.window))
  return out


def read_mni() -> np.ndarray:
  """The MNI152 T1 template as uint8 (197, 233, 189) in RAS+ (template values are 0..255)."""
  vol = readers.read_nifti(mni_t1_path())
  return np.round(np.clip(vol, 0, 255)).astype(np.uint8)


def mni_slice(vol: np.ndarray, plane: str, index: int) -> np.ndarray:
  """A 2D slice in radiological display orientation (anterior/superior at the top), zero-padded to
  a square."""
  if plane == "axial":
    img = vol[:, :, index].T[::-1]       # rows: anterior -> posterior, cols: left -> right.
  elif plane == "coronal":
    img = vol[:, index, :].T[::-1]       # rows: superior -> inferior.
  elif plane == "sagittal":
    img = vol[index, :, :].T[::-1, ::-1]  # rows: superior -> inferior, cols: anterior -> posterior.
  else:
    raise ValueError(f"plane={plane!r}; expected axial, coronal or sagittal")
  return pad_square(np.ascontiguousarray(img))


def pad_square(img: np.ndarray) -> np.ndarray:
  h, w = img.shape
  n = max(h, w)
  out = np.zeros((n, n), img.dtype)
  out[(n - h) // 2:(n - h) // 2 + h, (n - w) // 2:(n - w) // 2 + w] = img
  return out
