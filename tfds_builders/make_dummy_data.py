"""Writes the small, deterministic `dummy_data/` folders of the builders in tfds_builders/.

Each mimics the real release's file names and formats (PNG / JPEG / DICOM / NPY / NIfTI / CSV /
XML) with a handful of tiny images, enough for the tests to check labels, masks and patient-grouped
splits. Run from the repository root after changing it:

    python -m tfds_builders.make_dummy_data            # all datasets
    python -m tfds_builders.make_dummy_data busi mrnet # some
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import zlib

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
H, W = 12, 16  # image size: tiny on purpose


def _rng(key) -> np.random.Generator:
  """A generator seeded by `key` (stable across runs and Python versions, unlike hash())."""
  return np.random.default_rng(zlib.crc32(repr(key).encode()))


def noise(key, shape=(H, W), lo=0, hi=256) -> np.ndarray:
  return _rng(key).integers(lo, hi, size=shape).astype(np.uint8)


def save_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array)).save(path, format="PNG")


def save_jpeg(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array)).save(path, format="JPEG", quality=90)


def save_dicom(path, hu: np.ndarray, patient_id="anon", slope=1.0, intercept=-1024.0, uid="1.2.3"):
  """A minimal CT DICOM: int16 stored values with RescaleSlope/Intercept giving `hu`."""
  import pydicom
  from pydicom.dataset import FileDataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
  meta.MediaStorageSOPInstanceUID = uid
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, uid
  ds.Modality, ds.PatientID = "CT", patient_id
  ds.StudyInstanceUID, ds.SeriesInstanceUID = uid + ".1", uid + ".2"
  stored = np.round((hu - intercept) / slope).astype(np.int16)
  ds.Rows, ds.Columns = stored.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
  ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
  ds.PixelData = stored.tobytes()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ds.save_as(path, enforce_file_format=True)


def save_dicom_uint8(path, pixels: np.ndarray, patient_id: str, uid: str):
  """A radiograph DICOM like RSNA pneumonia's: uint8 MONOCHROME2, no rescale."""
  import pydicom
  from pydicom.dataset import FileDataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
  meta.MediaStorageSOPInstanceUID = uid
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, uid
  ds.Modality, ds.PatientID = "CR", patient_id
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
  ds.PixelData = pixels.astype(np.uint8).tobytes()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ds.save_as(path, enforce_file_format=True)


def save_nifti(path, volume: np.ndarray):
  import nibabel as nib
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(volume, np.eye(4)), path)


def write_csv(path, rows, header=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    if header:
      w.writerow(header)
    w.writerows(rows)


def _fresh(name) -> str:
  d = os.path.join(ROOT, name, "dummy_data")
  shutil.rmtree(d, ignore_errors=True)
  os.makedirs(d)
  return d


def image_folder():
  """Folders <label>/<patient>/<file>: 10 patients, PNG, JPEG, DICOM and one NIfTI volume; one
  PNG has a mask beside it."""
  d = _fresh("image_folder")
  for p in range(10):
    label = "normal" if p % 2 == 0 else "lesion"
    pdir = os.path.join(d, label, f"patient{p:02d}")
    save_png(os.path.join(pdir, "slice_000.png"), noise(("if", p, 0)))
    if p == 1:  # a lesion mask beside its image (the folder convention), 0/255
      mask = np.zeros((H, W), np.uint8)
      mask[3:7, 4:9] = 255
      save_png(os.path.join(pdir, "slice_000_mask.png"), mask)
    if p < 6:
      save_jpeg(os.path.join(pdir, "slice_001.jpg"), noise(("if", p, 1), (H, W, 3)))
    else:
      hu = _rng(("if", p, 2)).integers(-1000, 1500, size=(H, W)).astype(np.float64)
      save_dicom(os.path.join(pdir, "slice_001.dcm"), hu, patient_id=f"patient{p:02d}",
                 uid=f"1.2.826.0.1.3680043.9.{p}")
  vol = _rng(("if", "vol")).integers(-1000, 1000, size=(H, W, 3)).astype(np.int16)
  save_nifti(os.path.join(d, "lesion", "patient09", "volume.nii"), vol)
  with open(os.path.join(d, "README.txt"), "w") as f:
    f.write("Not an image: image_folder ignores it.\n")


def busi():
  """Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (i).png + _mask.png (+ _mask_1.png)."""
  d = os.path.join(_fresh("busi"), "Dataset_BUSI_with_GT")
  counts = {"benign": 5, "malignant": 4, "normal": 3}
  for cls, n in counts.items():
    for i in range(1, n + 1):
      stem = os.path.join(d, cls, f"{cls} ({i})")
      save_png(stem + ".png", noise(("busi", cls, i), (H, W, 3)))
      mask = np.zeros((H, W), np.uint8)
      if cls != "normal":
        mask[2:5, 3:7] = 255
      save_png(stem + "_mask.png", mask)
      if cls == "benign" and i == 2:  # a second lesion in its own mask file: merged by OR
        second = np.zeros((H, W), np.uint8)
        second[8:10, 10:14] = 255
        save_png(stem + "_mask_1.png", second)


RADIMAGENET_FILES = [  # (modality, anatomy, folder label, file stem prefix, count)
    ("CT", "abd", "normal", "abd-normal", 4),
    ("CT", "lung", "Nodule", "lung", 4),
    ("MR", "af", "hematoma", "foot", 4),
    ("US", None, "gb", "usn", 4),
]


def radimagenet():
  """radiology_ai/{CT,MR,US}/... PNGs + RadiologyAI_{train,val,test}.csv, with one identical image
  under two labels and one blank image (the known data problems)."""
  d = _fresh("radimagenet")
  rows = []
  for mod, anat, label, prefix, n in RADIMAGENET_FILES:
    for i in range(n):
      folder = ["radiology_ai", mod] + ([anat] if anat else []) + [label]
      rel = "/".join(folder + [f"{prefix}{i + 1:06d}.png"])
      image = noise(("rin", rel), (H, W, 3))
      if rel.endswith("lung000004.png"):  # same bytes as abd-normal000001.png, another label
        image = noise(("rin", "radiology_ai/CT/abd/normal/abd-normal000001.png"), (H, W, 3))
      if rel.endswith("foot000004.png"):
        image = np.full((H, W, 3), 7, np.uint8)  # blank
      save_png(os.path.join(d, rel), image)
      csv_label = f"{anat}-{label}" if anat else f"us-{label}"
      rows.append((rel, csv_label))
  # Official split: 2 / 1 / 1 images per class.
  for name, idx in (("train", (0, 1)), ("val", (2,)), ("test", (3,))):
    write_csv(os.path.join(d, f"RadiologyAI_{name}.csv"),
              [r for k, r in enumerate(rows) if k % 4 in idx], header=("filename", "label"))


def mrnet():
  """MRNet-v1.0/{train,valid}/{axial,coronal,sagittal}/<exam>.npy + {train,valid}-{acl,meniscus,
  abnormal}.csv (no header)."""
  d = os.path.join(_fresh("mrnet"), "MRNet-v1.0")
  exams = {"train": [f"{i:04d}" for i in range(8)], "valid": ["1130", "1131", "1132"]}
  for split, ids in exams.items():
    for task, offset in (("acl", 0), ("meniscus", 1), ("abnormal", 2)):
      write_csv(os.path.join(d, f"{split}-{task}.csv"),
                [(e, (int(e) + offset) % 2 if task != "abnormal" else 1) for e in ids])
    for e in ids:
      for plane in ("axial", "coronal", "sagittal"):
        os.makedirs(os.path.join(d, split, plane), exist_ok=True)
        n_slices = 2 + int(e) % 2  # volumes differ in depth, as in MRNet
        np.save(os.path.join(d, split, plane, f"{e}.npy"),
                noise(("mrnet", e, plane), (n_slices, H, H)))


def rsna_pneumonia():
  """stage_2_train_labels.csv (one row per box) + stage_2_train_images/<patientId>.dcm (uint8)."""
  d = _fresh("rsna_pneumonia")
  rows = []
  for p in range(10):
    pid = f"{zlib.crc32(f'pneu{p}'.encode()):08x}-{p:04d}-4e49-80ba-63a80b6bddd6"
    save_dicom_uint8(os.path.join(d, "stage_2_train_images", f"{pid}.dcm"),
                     noise(("pn", p), (H, H)), patient_id=pid, uid=f"1.2.826.0.1.3680043.8.{p}")
    if p % 3 == 0:  # two boxes
      rows += [(pid, 1.5, 2.0, 3.0, 4.5, 1), (pid, 8.0, 7.0, 2.0, 2.0, 1)]
    elif p % 3 == 1:
      rows.append((pid, 0.0, 0.0, 5.0, 3.0, 1))
    else:
      rows.append((pid, "", "", "", "", 0))
  write_csv(os.path.join(d, "stage_2_train_labels.csv"), rows,
            header=("patientId", "x", "y", "width", "height", "Target"))


ICH_SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural",
                "any")


def rsna_ich():
  """stage_2_train.csv (ID_<image>_<subtype>,Label) + stage_2_train/ID_<image>.dcm (CT, int16)."""
  d = _fresh("rsna_ich")
  rows = []
  for i in range(12):
    image_id = f"ID_{zlib.crc32(f'ich{i}'.encode()):08x}a"
    patient = f"ID_{zlib.crc32(f'ichp{i // 2}'.encode()):08x}"  # 2 slices per patient
    hu = _rng(("ich", i)).integers(-1024, 3000, size=(H, H)).astype(np.float64)
    save_dicom(os.path.join(d, "stage_2_train", f"{image_id}.dcm"), hu, patient_id=patient,
               uid=f"1.2.826.0.1.3680043.7.{i}")
    sub = [int(i % 4 == k) for k in range(5)] if i % 2 else [0] * 5
    rows += [(f"{image_id}_{s}", v) for s, v in zip(ICH_SUBTYPES, sub + [int(any(sub))])]
  write_csv(os.path.join(d, "stage_2_train.csv"), rows, header=("ID", "Label"))


DDTI_XML = """<?xml version="1.0" encoding="utf-8"?>
<case><number>{case}</number><age>{age}</age><sex>F</sex><composition>solid</composition>\
<echogenicity>hypoechogenicity</echogenicity><margins>well defined</margins>\
<calcifications>non</calcifications><tirads>{tirads}</tirads><reportbacaf></reportbacaf>\
<reporteco></reporteco>{marks}</case>
"""


def ddti():
  """<case>.xml (TI-RADS, <mark><image>k</image><svg>JSON polygons</svg></mark>), <case>_<k>.jpg."""
  d = _fresh("ddti")
  scores = ["2", "3", "4a", "4b", "4c", "5", "3", "5", "4a", "2"]
  for case, score in enumerate(scores, start=1):
    marks = ""
    for k in range(1, 2 + case % 2):
      save_jpeg(os.path.join(d, f"{case}_{k}.jpg"), noise(("ddti", case, k), (H, W, 3)))
      poly = [{"x": 2 + k, "y": 2}, {"x": 9 + k, "y": 3}, {"x": 8 + k, "y": 9},
              {"x": 3 + k, "y": 8}]
      shapes = [{"points": poly, "annotationType": "Freehand"}]
      if case == 3:  # two nodules in one image
        shapes.append({"points": [{"x": 12, "y": 1}, {"x": 15, "y": 1}, {"x": 14, "y": 4}],
                       "annotationType": "Freehand"})
      marks += f"<mark><image>{k}</image><svg>{json.dumps(shapes)}</svg></mark>"
    with open(os.path.join(d, f"{case}.xml"), "w") as f:
      f.write(DDTI_XML.format(case=case, age=30 + case, tirads=score, marks=marks))


def cc_ccii():
  """{NCP,CP,Normal}/<patient_id>/<scan_id>/<slice>.png|jpg."""
  d = _fresh("cc_ccii")
  for c, cls in enumerate(("NCP", "CP", "Normal")):
    for p in range(5):
      patient = str(1000 * (c + 1) + p)
      for s in range(1 + p % 2):
        scan = str(3000 + 10 * p + s)
        for k in range(2):
          path = os.path.join(d, cls, patient, scan, f"{k:04d}")
          image = noise(("cc", cls, p, s, k))
          if p % 2:
            save_jpeg(path + ".jpg", image)
          else:
            save_png(path + ".png", image)


DATASETS = {"image_folder": image_folder, "busi": busi, "radimagenet": radimagenet, "mrnet": mrnet,
            "rsna_pneumonia": rsna_pneumonia, "rsna_ich": rsna_ich, "ddti": ddti,
            "cc_ccii": cc_ccii}


def main(argv):
  for name in argv or DATASETS:
    DATASETS[name]()
    print("wrote", os.path.join(ROOT, name, "dummy_data"))


if __name__ == "__main__":
  main(sys.argv[1:])
