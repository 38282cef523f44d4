"""What `image_folder` reads from `--manual_dir`: rows (image, label, patient, mask) and the checks.

Two ways to label the files:

- `labels.csv` at the top: header `path,label[,patient_id][,mask]`, paths relative to manual_dir.
  A path listed twice, a blank label, a blank patient id (when the column exists) or a path out of
  manual_dir is a bad row. A blank `mask` cell means "no mask" for that image.
- the folders: `<label>/<file>` or `<label>/<patient_id>/.../<file>`.

Masks without a `mask` column: `<stem>_mask.png` beside the image (`scan1.png` -> `scan1_mask.png`,
as in BUSI); such files are masks, never images. `classes.txt` (one class name a line) at the top
declares the classes: a label outside it is a bad row (a typo such as `lesoin` cannot pass), and
its order is the label index order (the second class is the positive one of a binary task).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import os

from radimagenet_jax.data.build import tfds_base

LABELS_CSV = "labels.csv"
CLASSES_TXT = "classes.txt"
MASK_SUFFIX = "_mask"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
DICOM_EXTS = (".dcm", ".dicom")
NIFTI_EXTS = (".nii", ".nii.gz")
FEW_EXAMPLES = 2  # a class found with this many examples or fewer is named in the summary


@dataclasses.dataclass
class Row:
  path: str
  label: str
  patient: str
  mask: str | None = None   # absolute path of the mask file, None: no mask


def kind(path: str) -> str | None:
  low = path.lower()
  if low.endswith(IMAGE_EXTS):
    return "image"
  if low.endswith(DICOM_EXTS):
    return "dicom"
  if low.endswith(NIFTI_EXTS):
    return "nifti"
  return None


def is_mask_file(path: str) -> bool:
  stem, _ = os.path.splitext(os.path.basename(path))
  return stem.endswith(MASK_SUFFIX) and kind(path) == "image"


def mask_beside(path: str) -> str | None:
  """`<stem>_mask.png` next to a 2D image when it exists (the folder convention), else None."""
  stem, _ = os.path.splitext(path)
  candidate = stem + MASK_SUFFIX + ".png"
  return candidate if kind(path) in ("image", "dicom") and os.path.isfile(candidate) else None


def read_classes(manual_dir: str) -> tuple[str, ...]:
  """The names in `<manual_dir>/classes.txt` (blank lines and `#` comments ignored); () if absent."""
  path = os.path.join(manual_dir, CLASSES_TXT)
  if not os.path.isfile(path):
    return ()
  with open(path) as f:
    names = [line.split("#")[0].strip() for line in f]
  names = [n for n in names if n]
  twice = sorted(n for n, c in collections.Counter(names).items() if c > 1)
  if not names or twice:
    raise ValueError(f"{path}: expected one distinct class name a line, got "
                     f"{'no names' if not names else f'{twice} more than once'}")
  return tuple(names)


def rows_from_csv(builder, csv_path: str) -> list[Row]:
  """The usable rows of labels.csv; bad rows go to `builder.source_error` (named error or skip)."""
  root = os.path.dirname(csv_path)
  with open(csv_path, newline="") as f:
    reader = csv.DictReader(f)
    fields = [n.strip() for n in reader.fieldnames or ()]
    missing = {"path", "label"} - set(fields)
    if missing:
      raise ValueError(f"{csv_path}: columns {sorted(missing)} missing; expected a header "
                       f"path,label[,patient_id][,mask], got {reader.fieldnames}")
    reader.fieldnames = fields
    has_patient, has_mask = "patient_id" in fields, "mask" in fields
    raw = [(reader.line_num, {k: (v or "").strip() for k, v in r.items() if k}) for r in reader]
  first_line: dict[str, list[int]] = collections.defaultdict(list)
  checked = []
  for line, r in raw:
    where = f"line {line}"
    blank = [c for c in ("path", "label") + (("patient_id",) if has_patient else ()) if not r.get(c)]
    if blank:
      builder.source_error(csv_path, f"{where}: {' and '.join(blank)} blank for {r.get('path')!r}; "
                           "expected a value in every row")
      continue
    path = builder.source_path(root, root, r["path"], source=csv_path, where=where)
    if path is None:
      continue
    first_line[os.path.realpath(path)].append(line)
    checked.append((line, r, path))
  rows = []
  for line, r, path in checked:
    lines = first_line[os.path.realpath(path)]
    if len(lines) > 1:
      if line == lines[0]:  # one error (one skip-mode line) per duplicated path
        builder.source_error(path, f"listed {len(lines)} times in {LABELS_CSV} (lines "
                             f"{', '.join(map(str, lines))}); expected each image once, with "
                             "one label and one patient")
      continue
    if not os.path.isfile(path):
      builder.source_error(path, f"named in {LABELS_CSV} but missing")
      continue
    if kind(path) is None:
      builder.source_error(path, "unsupported file type (expected one of "
                           f"{IMAGE_EXTS + DICOM_EXTS + NIFTI_EXTS})")
      continue
    mask = None
    if has_mask and r.get("mask"):
      mask = builder.source_path(root, root, r["mask"], source=csv_path, where=f"line {line}")
      if mask is None:
        continue
      if not os.path.isfile(mask):
        builder.source_error(mask, f"mask of {r['path']!r} (line {line}) named in {LABELS_CSV} "
                             "but missing")
        continue
    elif not has_mask:
      mask = mask_beside(path)
    rows.append(Row(path, r["label"], r.get("patient_id") or r["path"], mask))
  return rows


def rows_from_folders(builder, root: str) -> list[Row]:
  """`<label>/[<patient>/...]<file>` rows; a file (or link) resolving outside `root` is bad."""
  rows = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for fn in sorted(filenames):
      path = os.path.join(dirpath, fn)
      if kind(path) is None or fn.startswith(".") or is_mask_file(path):
        continue  # README, .DS_Store, masks: not images
      if not tfds_base.inside(root, path):
        builder.source_error(path, f"a symlink to {os.path.realpath(path)}, outside --manual_dir "
                             f"{root}; images must stay inside it (copy the file in)")
        continue
      parts = os.path.relpath(path, root).replace(os.sep, "/").split("/")
      if len(parts) < 2:
        builder.source_error(path, "not inside a <label>/ folder and no labels.csv")
        continue
      group = parts[1] if len(parts) >= 3 else "/".join(parts)
      mask = mask_beside(path)
      if mask is not None and not tfds_base.inside(root, mask):
        builder.source_error(mask, f"a symlink outside --manual_dir {root}")
        continue
      rows.append(Row(path, parts[0], group, mask))
  return rows


def summary_lines(rows: list[Row], names, declared: bool) -> list[str]:
  """What the build summary says about the rows: classes with counts, patients, masks."""
  counts = collections.Counter(r.label for r in rows)
  classes = ", ".join(f"{n} {counts.get(n, 0)}" for n in names)
  origin = (f"declared in {CLASSES_TXT}" if declared else
            f"found in the labels; declare them in {CLASSES_TXT} to refuse typos")
  lines = [f"  classes ({origin}): {classes}",
           f"  patients: {len({r.patient for r in rows})} in {len(rows)} source files"]
  few = [n for n in names if 0 < counts.get(n, 0) <= FEW_EXAMPLES]
  if few and not declared:
    lines.append(f"  WARNING: class(es) {few} have {FEW_EXAMPLES} or fewer files: a typo in a label?")
  with_mask = sum(r.mask is not None for r in rows)
  lines.append(f"  masks: {with_mask} found, {len(rows) - with_mask} images without a mask "
               "(stored empty, has_mask false)")
  return lines
