"""Time `radimagenet-jax build official/acl` on an ACL-sized synthetic tree in the official layout.

  python benchmarks/official_build.py [--images 1022] [--size 256] [--root /tmp/official_bench]

Writes `<root>/manual/acl/{images,dataframe}` (grayscale PNG slices at --size, named, labelled and
folded like the official CSVs: tfds_builders/official/layout.py), then builds it into
`<root>/tfds` with the command's own code path and prints the wall time of the build alone. The
official ACL set has 1,021 curated sagittal slices (256x256 PNGs of the MRNet exams).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=1022, help="images (2 slices per exam)")
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--root", default="/tmp/official_bench")
  args = p.parse_args()
  from radimagenet_jax.data import build
  from tfds_builders.official import layout
  shutil.rmtree(args.root, ignore_errors=True)
  t0 = time.perf_counter()
  layout.write_tree(os.path.join(args.root, "manual"), "acl", exams=args.images // 2, slices=2,
                    size=args.size)
  print(f"wrote {args.images // 2 * 2} PNGs of {args.size}x{args.size} in "
        f"{time.perf_counter() - t0:.1f} s")
  t0 = time.perf_counter()
  build.build("official/acl", data_dir=os.path.join(args.root, "tfds"),
              manual_dir=os.path.join(args.root, "manual"), progress=True)
  print(f"build wall time: {time.perf_counter() - t0:.1f} s (os.cpu_count()={os.cpu_count()})")


if __name__ == "__main__":
  main()
