"""`image_folder`: the user's own PNG / JPEG / DICOM / NIfTI images as a patient-split dataset.

Two ways to label the files in `--manual_dir`:

- `labels.csv` at its top (header `path,label[,patient_id]`; paths relative to manual_dir): the
  CSV decides which files are used, their label and their patient. A path that resolves outside
  manual_dir (`..`, absolute, a symlink out of it) is a bad row, never read. Without a `patient_id` column
  every file is its own group (a per-image split: say so when you report results).
- otherwise the folders: `<label>/<file>` or `<label>/<patient_id>/.../<file>`; the first folder
  is the label, the second (when the file sits deeper) is the patient id, else the file name is.

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

import csv
import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from radimagenet_jax.data.build import readers
from tfds_builders import common

WINDOWS = {  # name -> (center, width) in Hounsfield units
    "brain": (40, 80),
    "subdural": (80, 200),
    "bone": (600, 2800),
    "lung": (-600, 1500),
    "abdomen": (40, 400),
    "mediastinum": (50, 350),
}
WINDOW_STACKS = {"ich": ("brain", "subdural", "bone")}
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
DICOM_EXTS = (".dcm", ".dicom")
NIFTI_EXTS = (".nii", ".nii.gz")
LABELS_CSV = "labels.csv"


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


def _kind(path: str) -> str | None:
  low = path.lower()
  if low.endswith(IMAGE_EXTS):
    return "image"
  if low.endswith(DICOM_EXTS):
    return "dicom"
  if low.endswith(NIFTI_EXTS):
    return "nifti"
  return None


class ImageFolder(common.SplitBuilder):
  """The user's own labelled images; see the module docstring for the expected layout."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      ImageFolderConfig(name="default", description="DICOM/NIfTI scaled min..max.")] + [
      ImageFolderConfig(name=w, window=w,
                        description=f"DICOM/NIfTI in the {w} window {WINDOWS[w]}.")
      for w in WINDOWS] + [
      ImageFolderConfig(name="ich", window="ich",
                        description="DICOM/NIfTI as brain / subdural / bone windows in R / G / B.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put your images in --manual_dir, either as <label>/<file> or <label>/<patient_id>/.../<file>
  folders, or anywhere with a labels.csv (header path,label[,patient_id]; paths relative to
  manual_dir). Files: .png .jpg .jpeg (2D), .dcm .dicom (2D DICOM), .nii .nii.gz (volumes, sliced).
  """

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=("The user's own images; " + (self.builder_config.description or "") +
                     " Groups: patients. " + common.split_description(self.builder_config)),
        features=tfds.features.FeaturesDict({
            "image": common.image_feature(3),
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
    csv_path = os.path.join(manual_dir, LABELS_CSV)
    rows = self._rows_from_csv(csv_path) if os.path.exists(csv_path) else self._rows_from_folders(
        manual_dir)
    names = self._class_names or sorted({label for _, label, _ in rows})
    if not self._class_names:
      self._info_names_from(names)
    index = {n: i for i, n in enumerate(names)}
    items = []
    for path, label, group in rows:
      if label not in index:
        self.source_error(path, f"label {label!r} is not in the class list {names}")
        continue
      items.append(common.Item(key=common.rel(path, manual_dir), group=group, label=index[label],
                               data=path))
    return items

  def _rows_from_csv(self, csv_path):
    root = os.path.dirname(csv_path)
    with open(csv_path, newline="") as f:
      reader = csv.DictReader(f)
      missing = {"path", "label"} - set(reader.fieldnames or ())
      if missing:
        raise ValueError(f"{csv_path}: columns {sorted(missing)} missing; expected a header "
                         f"path,label[,patient_id], got {reader.fieldnames}")
      rows = []
      for r in reader:
        path = self.source_path(root, root, r["path"] or "", source=csv_path,
                                where=f"line {reader.line_num}")
        if path is None:
          continue
        if not os.path.isfile(path):
          self.source_error(path, f"named in {LABELS_CSV} but missing")
          continue
        if _kind(path) is None:
          self.source_error(path, "unsupported file type (expected one of "
                            f"{IMAGE_EXTS + DICOM_EXTS + NIFTI_EXTS})")
          continue
        rows.append((path, r["label"].strip(), (r.get("patient_id") or "").strip() or r["path"]))
    return rows

  def _rows_from_folders(self, root):
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
      dirnames.sort()
      for fn in sorted(filenames):
        path = os.path.join(dirpath, fn)
        if _kind(path) is None or fn.startswith("."):
          continue  # README, .DS_Store...: not images
        parts = common.rel(path, root).split("/")
        if len(parts) < 2:
          self.source_error(path, "not inside a <label>/ folder and no labels.csv")
          continue
        group = parts[1] if len(parts) >= 3 else "/".join(parts)
        rows.append((path, parts[0], group))
    return rows

  def _examples(self, item):
    path = item.data
    base = {"label": item.label, "patient_id": item.group, "file_name": item.key}
    kind = _kind(path)
    window = self.builder_config.window
    if kind == "image":
      image = self.read_image_or_error(path, 3)
      if image is not None:
        yield item.key, dict(base, image=common.encode_png(image), slice_index=0)
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
      yield item.key, dict(base, image=common.encode_png(image), slice_index=0)
      return
    if values.ndim == 4 and values.shape[-1] == 1:
      values = values[..., 0]
    if values.ndim != 3:
      self.source_error(path, f"expected a 3D NIfTI volume, got shape {values.shape}")
      return
    scale = (float(values.min()), float(values.max()))
    for i in range(values.shape[self.builder_config.axis]):
      sl = np.take(values, i, axis=self.builder_config.axis)
      image = common.encode_png(apply_window(sl, window, scale))
      yield f"{item.key}#{i:04d}", dict(base, image=image, slice_index=i)
