r"""Writes a small "own data" folder (PNGs, labels.csv with patient ids and masks, classes.txt).

    python -m tfds_builders.image_folder.make_demo my_images [--count 208] [--data_dir DIR]

The images come from the demo lesion task (`radimagenet_demo/lesion`: MNI152 brain slices with and
without a synthetic lesion, built on first use from data shipped by PyPI packages: the `demo`
extra; nothing is downloaded), so the walkthrough in docs/datasets.md "Your own data" runs
anywhere. The folder looks like a small clinical set:

    my_images/labels.csv        path,label,patient_id,mask
    my_images/classes.txt       absent, present (the order: `present` is the positive class)
    my_images/images/<patient>/<n>.png     128x128 grey PNGs
    my_images/masks/<n>_mask.png           0/255 lesion masks of the `present` images; the
                                           `absent` images have a blank mask cell (no mask)

`count` images are taken class-balanced, in a fixed order (the same folder on every machine); the
patient is the demo's slab (near-identical crops of one slab stay together). Nothing is written
when the folder exists and is not empty.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shutil
import tempfile

import numpy as np
from PIL import Image

DATASET = "radimagenet_demo/lesion"
CLASSES = ("absent", "present")


def _records(data_dir):
  from radimagenet_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  out = []
  for split in ("train", "validation", "test"):
    source = tfds_source.open_source(DATASET, split, data_dir, build=True)
    out.extend(source[i] for i in range(len(source)))
  return out


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def write(out: str, count: int = 208, data_dir=None) -> dict:
  """Writes the folder (atomically: a temporary sibling renamed at the end); returns counts."""
  out = os.path.abspath(os.path.expanduser(os.fspath(out)))
  if os.path.isdir(out) and os.listdir(out):
    raise FileExistsError(f"{out} exists and is not empty; expected a new folder for the demo data")
  if count < 20:
    raise ValueError(f"count={count}: expected at least 20 images (5 folds of patients)")
  records = _records(data_dir)
  by_class = [[r for r in records if int(r["label"]) == c] for c in range(len(CLASSES))]
  per_class = count // 2
  if any(len(rs) < per_class for rs in by_class):
    raise ValueError(f"count={count}: the demo set has {[len(rs) for rs in by_class]} images per "
                     f"class; expected at most {2 * min(len(rs) for rs in by_class)}")
  chosen = [r for rs in by_class for r in rs[:per_class]]
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".partial-", dir=parent)
  try:
    rows = []
    for n, r in enumerate(chosen):
      # 'MNI152_ICBM2009a_sym/axial/slab08' -> 'axial_slab08'
      patient = re.sub(r"[^A-Za-z0-9]+", "_", "/".join(_text(r["patient_id"]).split("/")[-2:]))
      label = CLASSES[int(r["label"])]
      path = f"images/{patient}/{n:04d}.png"
      os.makedirs(os.path.join(tmp, "images", patient), exist_ok=True)
      Image.fromarray(np.asarray(r["image"])[..., 0]).save(os.path.join(tmp, path))
      mask = ""
      if label == "present":
        mask = f"masks/{n:04d}_mask.png"
        os.makedirs(os.path.join(tmp, "masks"), exist_ok=True)
        m = (np.asarray(r["mask"])[..., 0] > 0).astype(np.uint8) * 255
        Image.fromarray(m).save(os.path.join(tmp, mask))
      rows.append((path, label, patient, mask))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "label", "patient_id", "mask"))
    writer.writerows(rows)
    with open(os.path.join(tmp, "labels.csv"), "w") as f:
      f.write(buf.getvalue())
    with open(os.path.join(tmp, "classes.txt"), "w") as f:
      f.write("# one class a line; the second is the positive class of the AUC\n")
      f.write("".join(c + "\n" for c in CLASSES))
    if os.path.isdir(out):
      os.rmdir(out)  # empty (checked above)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {"images": len(rows), "masks": sum(1 for r in rows if r[3]),
          "patients": len({r[2] for r in rows}), "folder": out}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m tfds_builders.image_folder.make_demo",
                              description=__doc__.split("\n")[0])
  p.add_argument("out", help="the folder to write (new or empty)")
  p.add_argument("--count", type=int, default=208, help="number of images (default 208)")
  p.add_argument("--data_dir", default=None, help="TFDS data dir of the demo data")
  args = p.parse_args(argv)
  from radimagenet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.quiet_tfds_notices()  # as the commands: no "OpenCV is not installed" line
  done = write(args.out, args.count, args.data_dir)
  print(f"wrote {done['images']} PNGs of {done['patients']} patients, {done['masks']} masks, "
        f"labels.csv and classes.txt in {done['folder']}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
