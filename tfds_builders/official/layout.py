"""Writes synthetic trees in the official repository's layout (tests, the build benchmark).

    layout.write_tree(root, "acl", exams=498, slices=2)   # root/acl/images, root/acl/dataframe

Exam e (label `yes` for odd e) has ``slices`` PNG slices named as the official ones
(`0007_sagittal_12.000000.png`); fold t (1..5) tests the exams with e % 5 == t - 1, validates on
those of the next fold and trains on the rest; rows are written in a shuffled order. The file and
column names and the label spellings are those of the official CSVs (official.APPS).
"""
from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image

from tfds_builders.official import official


def image_name(task: str, exam: int, k: int) -> str:
  if task == "thyroid":
    return f"images/{exam}_{k + 1}.jpg"
  if task == "breast":
    return f"images/{'malignant' if exam % 2 else 'benign'} ({exam}).png"
  return f"images/{exam:04d}_sagittal_{k + 10}.000000.png"


def write_tree(root, task: str = "acl", exams: int = 10, slices: int = 2, size: int = 24,
               seed: int = 0) -> dict[tuple[str, int], list[tuple[str, str]]]:
  """Writes ``root/<task>/{images,dataframe}``; returns {(set, fold): [(path, label), ...]} as
  written (CSV row order)."""
  _, path_col, label_col, spellings, _, _ = official.APPS[task]
  rng = np.random.default_rng(seed)
  base = os.path.join(os.fspath(root), task)
  os.makedirs(os.path.join(base, "images"), exist_ok=True)
  os.makedirs(os.path.join(base, "dataframe"), exist_ok=True)
  rows_of = {}
  for e in range(exams):
    label = spellings[e % 2]
    rows_of[e] = []
    for k in range(1 if task == "breast" else slices):
      rel = image_name(task, e, k)
      pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(base, rel),
                                   **({"quality": 95} if rel.endswith(".jpg") else {}))
      rows_of[e].append((rel, label))
  written = {}
  for t in range(1, official.NUM_FOLDS + 1):
    sets = {"test": [e for e in range(exams) if e % 5 == t - 1],
            "val": [e for e in range(exams) if e % 5 == t % 5]}
    sets["train"] = [e for e in range(exams) if e not in sets["test"] + sets["val"]]
    for split, members in sets.items():
      rows = [r for e in members for r in rows_of[e]]
      rows = [rows[i] for i in rng.permutation(len(rows))]
      write_csv(os.path.join(base, "dataframe", official.csv_name(task, split, t)),
                (path_col, label_col), rows)
      written[split, t] = rows
  return written


def write_csv(path, header, rows) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
