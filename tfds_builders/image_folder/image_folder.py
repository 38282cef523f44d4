"""`image_folder`: the user's own PNG / JPEG / DICOM / NIfTI images as a patient-split dataset.

Two ways to label the files in `--manual_dir` (details and checks: `listing`):

- `labels.csv` at its top (header `path,label[,patient_id][,mask]`; paths relative to
  manual_dir): the CSV decides which files are used, their label, their patient and their mask. A
  path that resolves outside manual_dir (`..`, absolute, a symlink out of it), a path listed twice
  or a blank label / patient id is a bad row, never read. Without a `patient_id` column every file
  is its own group (a per-image split: say so when you report results).
- otherwise the folders: `<label>/<file>` or `<label>/<patient_id>/.../<file>`; the first folder
  is the label, the second (when the file sits deeper) is the patient id, else the file name is.
  A file that is a symlink out of manual_dir is a bad file.

Masks (lesion segmentations, for Grad-CAM's Dice): the CSV's `mask` column, or else
`<stem>_mask.png` beside the image; stored as `mask` (uint8 HxWx1, 1 = lesion, as busi's) with
`has_mask`; an image without one gets an empty mask and `has_mask` false. A mask of another size
than its image, or with more than two values (0 and one other), is a bad file. `classes.txt`
declares the classes (else the build summary lists the classes found, with counts).

DICOM files are converted to uint8 with the config's CT window (`brain` 40/80, `subdural` 80/200,
`bone` 600/2800, `lung` -600/1500, `abdomen` 40/400, `mediastinum` 50/350, `ich` = the three
brain/subdural/bone windows as RGB channels), or scaled min..max per image (`default`). NIfTI
volumes are reoriented to RAS+ (readers.read_nifti) and sliced along `config.axis` (0 sagittal,
1 coronal, 2 axial = default), windowed the same way or scaled min..max per volume; the volume is
the group
when no patient id is known. PNG/JPEG are taken as they are (gray replicated to 3 channels).

Custom configs (another axis, a fixed class list that rejects unknown labels) go through the
builder API: `ImageFolder(config=ImageFolderConfig(name='sag', axis=0), data_dir=...)`.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from radimagenet_jax.data.build import readers
from tfds_builders import common
from tfds_builders.image_folder import listing

WINDOWS = {  # name -> (center, width) in Hounsfield units
    "brain": (40, 80),
    "subdural": (80, 200),
    "bone": (600, 2800),
    "lung": (-600, 1500),
    "abdomen": (40, 400),
    "mediastinum": (50, 350),
}
WINDOW_STACKS = {"ich": ("brain", "subdural", "bone")}
IMAGE_EXTS, DICOM_EXTS, NIFTI_EXTS = listing.IMAGE_EXTS, listing.DICOM_EXTS, listing.NIFTI_EXTS
LABELS_CSV = listing.LABELS_CSV
_kind = listing.kind


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(common.RadConfig):
  """window: None (min..max), a WINDOWS name or a WINDOW_STACKS name; axis: NIfTI slicing axis;
  class_names: fixed class list (labels outside it are bad source files); empty = from the data."""
  window: str | None = None
  axis: int = 2
  class_names: tuple[str, ...] = ()


def minmax_uint8(x: np.ndarray) -> np.ndarray:
  """Linear map of [min, max] to [0, 255] (a constant image maps to 0)."""
  x = np.asarray(x, np.float64)
  lo, hi = float(np.min(x)), float(np.max(x))
  if hi <= lo:
    return np.zeros(x.shape, np.uint8)
  return np.round((x - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def apply_window(values: np.ndarray, window: str | None, scale_from=None) -> np.ndarray:
  """HU (or any scalar) image -> uint8 HxWx3 with the named window / stack / min..max."""
  if window is None:
    if scale_from is not None:  # volume-wide min..max
      lo, hi = scale_from
      scaled = (np.asarray(values, np.float64) - lo) * (255.0 / max(hi - lo, 1e-12))
      gray = np.zeros(values.shape, np.uint8) if hi <= lo else np.round(scaled).astype(np.uint8)
    else:
      gray = minmax_uint8(values)
    return common.to_channels(gray, 3)
  if window in WINDOW_STACKS:
    return np.stack([readers.window(values, *WINDOWS[w]) for w in WINDOW_STACKS[window]], -1)
  return common.to_channels(readers.window(values, *WINDOWS[window]), 3)


class ImageFolder(common.SplitBuilder):
  """The user's own labelled images; see the module docstring for the expected layout."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "mask and has_mask features; classes.txt; duplicate paths refused."}
  BUILDER_CONFIGS = [
      ImageFolderConfig(name="default", description="DICOM/NIfTI scaled min..max.")] + [
      ImageFolderConfig(name=w, window=w,
                        description=f"DICOM/NIfTI in the {w} window {WINDOWS[w]}.")
      for w in WINDOWS] + [
      ImageFolderConfig(name="ich", window="ich",
                        description="DICOM/NIfTI as brain / subdural / bone windows in R / G / B.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put your images in --manual_dir, either as <label>/<file> or <label>/<patient_id>/.../<file>
  folders, or anywhere with a labels.csv (header path,label[,patient_id][,mask]; paths relative to
  manual_dir). Files: .png .jpg .jpeg (2D), .dcm .dicom (2D DICOM), .nii .nii.gz (volumes, sliced).
  Masks: the mask column, or <stem>_mask.png beside the image. Optional classes.txt: the classes.
  """

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=("The user's own images; " + (self.builder_config.description or "") +
                     " Groups: patients. " + common.split_description(self.builder_config)),
        features=tfds.features.FeaturesDict({
            "image": common.image_feature(3),
            "mask": common.mask_feature(),
            "has_mask": np.bool_,
            "label": common.class_label(self._class_names),
            "patient_id": tfds.features.Text(),
            "file_name": tfds.features.Text(),
            "slice_index": np.int32,
        }),
        supervised_keys=("image", "label"),
    )

  @property
  def _class_names(self):
    # _info runs before the files are listed: the names come from the config when it fixes them;
    # else _list_items sets them from the data at build time, and a builder re-created over a
    # built dataset reads them back from its label.labels.txt.
    if self.builder_config.class_names:
      return list(self.builder_config.class_names)
    return getattr(self, "_found_names", None)

  def _info_names_from(self, names):
    self._found_names = names
    self.info.features["label"].names = names

  def _list_items(self, manual_dir):
    manual_dir = os.fspath(manual_dir)
    declared = self.builder_config.class_names or listing.read_classes(manual_dir)
    csv_path = os.path.join(manual_dir, LABELS_CSV)
    rows = (listing.rows_from_csv(self, csv_path) if os.path.exists(csv_path)
            else listing.rows_from_folders(self, manual_dir))
    names = list(declared) or sorted({r.label for r in rows})
    if not self.builder_config.class_names:
      self._info_names_from(names)
    index = {n: i for i, n in enumerate(names)}
    items = []
    for r in rows:
      if r.label not in index:
        where = self.builder_config.class_names and "the config's class_names" or listing.CLASSES_TXT
        self.source_error(r.path, f"label {r.label!r} is not in the class list {names} ({where})")
        continue
      items.append(common.Item(key=common.rel(r.path, manual_dir), group=r.patient,
                               label=index[r.label], data=(r.path, r.mask)))
    self._summary = listing.summary_lines([r for r in rows if r.label in index], names,
                                          bool(declared))
    self._manual_dir = manual_dir
    return items

  def _assign_splits(self, items):
    folds = self.builder_config.folds
    patients = len({it.group for it in items})
    if folds and patients < folds:  # before scikit-learn says it in its own words
      raise ValueError(
          f"image_folder: {patients} patient(s) in --manual_dir {self._manual_dir} but "
          f"folds={folds}; expected at least {folds} patients (each fold's test set holds whole "
          "patients): add images of more patients, or check the patient_id column")
    return super()._assign_splits(items)

  def build_summary(self) -> list[str]:
    """Lines for the build's printed summary (classes with counts, patients, masks)."""
    lines = list(getattr(self, "_summary", []))
    bad = sum(1 for _, reason in self.skipped_files if reason.startswith("mask"))
    if bad:  # skip mode: masks missing, of the wrong size or not binary; their images dropped
      lines.append(f"  masks skipped (missing, wrong size or not binary): {bad}, with their images; see "
                   "skipped_files.tsv")
    return lines

  def _read_mask(self, path, mask_path, shape):
    """The 0/1 uint8 HxWx1 mask, or None after source_error (unreadable, wrong size, not binary)."""
    mask = self.read_image_or_error(mask_path, 1)
    if mask is None:
      return None
    if mask.shape[:2] != tuple(shape[:2]):
      self.source_error(mask_path, f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its "
                        f"image's {shape[1]}x{shape[0]} ({path}); expected the same size")
      return None
    values = np.unique(mask)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
      shown = ", ".join(str(int(v)) for v in values[:6]) + (", ..." if len(values) > 6 else "")
      self.source_error(mask_path, f"mask is not binary: values {shown}; expected 0 and one other "
                        "value (0/1 or 0/255; save masks as PNG, not JPEG)")
      return None
    return (mask > 0).astype(np.uint8)

  def _with_mask(self, base, path, mask_path, image):
    """``base`` plus image, mask and has_mask; None after a source_error on the mask."""
    if mask_path is None:
      mask = np.zeros(image.shape[:2] + (1,), np.uint8)
    else:
      mask = self._read_mask(path, mask_path, image.shape)
      if mask is None:
        return None
    return dict(base, image=common.encode_png(image), mask=common.encode_png(mask),
                has_mask=mask_path is not None)

  def _examples(self, item):
    path, mask_path = item.data
    base = {"label": item.label, "patient_id": item.group, "file_name": item.key}
    kind = _kind(path)
    window = self.builder_config.window
    if kind == "nifti" and mask_path is not None:
      self.source_error(mask_path, "a mask for a NIfTI volume; masks are read for 2D images only")
      return
    if kind == "image":
      image = self.read_image_or_error(path, 3)
      example = None if image is None else self._with_mask(base, path, mask_path, image)
      if example is not None:
        yield item.key, dict(example, slice_index=0)
      return
    try:
      values = readers.read_dicom(path) if kind == "dicom" else readers.read_nifti(path)
    except readers.ReaderError as e:
      self.source_error(path, e.reason)
      return
    if kind == "dicom":
      if values.ndim == 3 and values.shape[-1] == 3:  # colour (RGB) DICOM: keep as is
        image = values.astype(np.uint8)
      elif values.ndim != 2:
        self.source_error(path, f"expected a 2D DICOM image, got pixel array shape {values.shape}")
        return
      else:
        image = apply_window(values, window)
      example = self._with_mask(base, path, mask_path, image)
      if example is not None:
        yield item.key, dict(example, slice_index=0)
      return
    if values.ndim == 4 and values.shape[-1] == 1:
      values = values[..., 0]
    if values.ndim != 3:
      self.source_error(path, f"expected a 3D NIfTI volume, got shape {values.shape}")
      return
    scale = (float(values.min()), float(values.max()))
    for i in range(values.shape[self.builder_config.axis]):
      sl = np.take(values, i, axis=self.builder_config.axis)
      example = self._with_mask(base, path, None, apply_window(sl, window, scale))
      yield f"{item.key}#{i:04d}", dict(example, slice_index=i)
