"""`ddti`: Digital Database of Thyroid Ultrasound Images (Pedraza et al., SPIE 2015), with masks.

Release layout in `--manual_dir` (any folder depth; the XML and its JPEGs side by side):

    <case>.xml      <case><number>, <age>, <sex>, <composition>, <echogenicity>, <margins>,
                    <calcifications>, <tirads>, <reportbacaf>, <reporteco>, and one
                    <mark><image>k</image><svg>[{"points": [{"x":..,"y":..}, ..]}, ..]</svg></mark>
                    per annotated image
    <case>_<k>.jpg  the k-th image of the case

One example per <mark>: the image `<case>_<k>.jpg`, its nodule polygons (the JSON in <svg>)
filled into a mask (1 inside any polygon), and the case's TI-RADS score mapped to a label by the
rule below. Groups: the case number (one patient per case).

TI-RADS -> label (config `tirads4`, the default): 1, 2, 3 -> benign; 4a, 4b, 4c, 5 (and 4) ->
malignant. DDTI gives a TI-RADS category, not a pathology result; categories 4 and up are the ones
that call for fine-needle aspiration, which this rule equates with "malignant" (it gives a ratio
close to the paper's 288 malignant / 61 benign). A case without a TI-RADS score, or with an
unknown one, is a bad source file (skip with on_error='skip').
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw
import tensorflow_datasets as tfds

from tfds_builders import common

BENIGN = ("1", "2", "3")
MALIGNANT = ("4", "4a", "4b", "4c", "5")
CLASSES = ("benign", "malignant")


def tirads_label(score: str) -> int:
  """'2'/'3' -> 0 (benign), '4a'..'5' -> 1 (malignant); ValueError otherwise."""
  s = (score or "").strip().lower()
  if s in BENIGN:
    return 0
  if s in MALIGNANT:
    return 1
  raise ValueError(f"TI-RADS score {score!r} not in {BENIGN + MALIGNANT}")


def polygons_from_svg(text: str) -> list[list[tuple[float, float]]]:
  """The <svg> element's JSON -> list of polygons [(x, y), ...]."""
  if not (text or "").strip():
    return []
  shapes = json.loads(text)
  return [[(float(p["x"]), float(p["y"])) for p in shape.get("points", [])] for shape in shapes]


def polygon_mask(shape, polygons) -> np.ndarray:
  """uint8 mask of `shape` (H, W) with 1 inside (and on the outline of) any polygon."""
  img = Image.new("L", (shape[1], shape[0]), 0)
  draw = ImageDraw.Draw(img)
  for poly in polygons:
    if len(poly) >= 3:
      draw.polygon(poly, fill=1, outline=1)
  return np.asarray(img, np.uint8)


class Ddti(common.SplitBuilder):
  """DDTI thyroid ultrasound: image, nodule mask, TI-RADS-derived label."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [common.RadConfig(
      name="tirads4", description="TI-RADS 1-3 benign, 4a/4b/4c/5 malignant.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  DDTI is published by the Universidad Nacional de Colombia / CIM@LAB (Pedraza L. et al., An open
  access thyroid ultrasound image database, SPIE 9287, 2015): download it from
  http://cimalab.intec.co/applications/thyroid/ and extract it so that --manual_dir (or a folder in
  it) holds the case files <n>.xml and the images <n>_<k>.jpg.
  """

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=("DDTI thyroid ultrasound with nodule masks; " +
                     self.builder_config.description + " Groups: cases. " +
                     common.split_description(self.builder_config)),
        features=tfds.features.FeaturesDict({
            "image": common.image_feature(3),
            "mask": common.mask_feature(),
            "label": common.class_label(CLASSES),
            "tirads": tfds.features.Text(),
            "patient_id": tfds.features.Text(),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="http://cimalab.intec.co/applications/thyroid/",
        citation="Pedraza L, Vargas C, Narvaez F, Duran O, Munoz E, Romero E. An open access "
                 "thyroid ultrasound image database. Proc. SPIE 9287, 2015.",
    )

  def _list_items(self, manual_dir):
    xmls = []
    for dirpath, dirnames, filenames in os.walk(os.fspath(manual_dir)):
      dirnames.sort()
      xmls += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(".xml")]
    if not xmls:
      raise FileNotFoundError(f"No DDTI case files (<n>.xml) in --manual_dir={manual_dir}.\n"
                              f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    items = []
    for xml_path in xmls:
      try:
        root = ET.parse(xml_path).getroot()
        case = (root.findtext("number") or "").strip() or os.path.basename(xml_path)[:-4]
        score = (root.findtext("tirads") or "").strip()
        label = tirads_label(score)
        marks = [((m.findtext("image") or "").strip(), polygons_from_svg(m.findtext("svg")))
                 for m in root.findall("mark")]
      except (ET.ParseError, ValueError, KeyError, TypeError) as e:
        self.source_error(xml_path, f"{type(e).__name__}: {e}")
        continue
      folder = os.path.dirname(xml_path)
      for k, polygons in marks:
        path = self.source_path(manual_dir, folder, f"{case}_{k}.jpg", source=xml_path,
                                where=f"<number> {case!r}, <image> {k!r}")
        if path is None:
          continue
        if not os.path.exists(path):
          self.source_error(path, f"named in {os.path.basename(xml_path)} but missing")
          continue
        items.append(common.Item(key=common.rel(path, manual_dir), group=case, label=label,
                                 data=(path, polygons, score)))
    return items

  def _examples(self, item):
    path, polygons, score = item.data
    image = self.read_image_or_error(path, 3)
    if image is None:
      return
    yield item.key, {
        "image": common.encode_png(image),
        "mask": common.encode_png(polygon_mask(image.shape[:2], polygons)[..., None]),
        "label": item.label,
        "tirads": score,
        "patient_id": item.group,
        "file_name": item.key,
    }
