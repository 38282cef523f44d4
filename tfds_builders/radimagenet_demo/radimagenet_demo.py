"""radimagenet_demo: a small RadImageNet-style dataset made of real images that PyPI packages ship.

Build: `radimagenet-jax build radimagenet_demo/pretrain` (and `/lesion`); see README.md next to this
file (the dataset description) for classes, sizes, splits and the lesion synthesis.
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from radimagenet_jax.data.build import readers
from radimagenet_jax.data.build import tfds_base
from tfds_builders.radimagenet_demo import sources
from tfds_builders.radimagenet_demo import synth

SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)

# 'pretrain': MNI slices by plane and level. (plane, slice-index ranges in RAS voxels of the
# 197x233x189 template; brain extent x 26-170, y 27-207, z 0-154).
MNI_CLASSES = {
    "MR/brain/axial_inferior": ("axial", ((20, 60),)),
    "MR/brain/axial_superior": ("axial", ((100, 140),)),
    "MR/brain/coronal_anterior": ("coronal", ((150, 195),)),
    "MR/brain/coronal_posterior": ("coronal", ((40, 85),)),
    "MR/brain/sagittal_lateral": ("sagittal", ((36, 66), (130, 160))),
    "MR/brain/sagittal_midline": ("sagittal", ((88, 108),)),
}
MNI_EXAMPLES_PER_CLASS = 120
DICOM_EXAMPLES_PER_CLASS = 60
PRETRAIN_SIZE = 64
# Split of one volume's slices: 20 contiguous slabs per class/plane, these go to validation/test.
SLAB_COUNT = 20
VAL_SLABS = (2, 9, 16)
TEST_SLABS = (5, 12, 19)

# 'lesion': slices of the brain in three planes; slab split per plane as above.
LESION_PLANES = {"axial": (10, 140), "coronal": (40, 190), "sagittal": (35, 160)}
LESION_SIZE = 128
LESION_EXAMPLES = {"train": 420, "validation": 90, "test": 90}
LESION_MIN_BRAIN_FRACTION = 0.15
# 'lesion' cross-validation: fold i holds every example (of all three splits) whose slab is one of
# the i-th run of SLAB_COUNT / LESION_FOLDS contiguous slabs of its plane (slabs 4i..4i+3).
LESION_FOLDS = 5
SLABS_PER_FOLD = SLAB_COUNT // LESION_FOLDS


@dataclasses.dataclass
class DemoConfig(tfds.core.BuilderConfig):
  seed: int = 0


def class_names() -> list[str]:
  """'pretrain' labels: the MNI classes, then the DICOM classes in DICOM_SOURCES order."""
  names = list(MNI_CLASSES)
  for src in sources.DICOM_SOURCES:
    if src.label not in names:
      names.append(src.label)
  return names


def slab_split(indices) -> dict[str, list[tuple[int, int]]]:
  """Sorted slice indices -> {split: [(slice index, slab number)]} by contiguous slabs."""
  out = {s: [] for s in SPLITS}
  for k, slab in enumerate(np.array_split(np.asarray(sorted(indices)), SLAB_COUNT)):
    split = "validation" if k in VAL_SLABS else "test" if k in TEST_SLABS else "train"
    out[split].extend((int(i), k) for i in slab)
  return out


def split_counts(n: int, at_least_one: bool = False) -> dict[str, int]:
  """n items -> {split: count} with SPLIT_FRACTIONS (validation and test rounded, train the rest;
  with at_least_one, validation and test get >= 1 each)."""
  val, test = round(n * SPLIT_FRACTIONS[1]), round(n * SPLIT_FRACTIONS[2])
  if at_least_one:
    val, test = max(val, 1), max(test, 1)
  return {"train": n - val - test, "validation": val, "test": test}


def grouped_dicom_classes() -> list[str]:
  """DICOM classes with >= 3 distinct source images: split by image, no image in two splits."""
  counts = {}
  for src in sources.DICOM_SOURCES:
    counts[src.label] = counts.get(src.label, 0) + len(src.frames)
  return [label for label, n in counts.items() if n >= 3]


def lesion_fold(source_id: str) -> int:
  """'MNI152/<plane>/slabNN' -> its 'lesion' fold: NN // SLABS_PER_FOLD (contiguous slab runs)."""
  return int(source_id.rsplit("slab", 1)[1]) // SLABS_PER_FOLD


def png(img: np.ndarray) -> bytes:
  """uint8 HxW -> PNG bytes of a HxWx1 image (TFDS without TensorFlow needs encoded images)."""
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=6)
  return buf.getvalue()


class RadimagenetDemo(tfds_base.RadBuilder):
  """Demo data from nilearn's MNI152 template and pydicom's DICOM files (see README.md)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "lesion: masks 0/1 (1 = lesion) as in every builder, was 0/255; "
                            "fold0..fold4 splits grouped by runs of 4 contiguous slabs."}
  BUILDER_CONFIGS = [
      DemoConfig(name="pretrain", seed=20240607, description=(
          f"{len(MNI_CLASSES) + len(set(s.label for s in sources.DICOM_SOURCES))}-class "
          f"RadImageNet-style task, {PRETRAIN_SIZE}x{PRETRAIN_SIZE}x1 uint8.")),
      DemoConfig(name="lesion", seed=20240608, description=(
          f"Synthetic brain lesion present/absent on MNI152 slices, {LESION_SIZE}x{LESION_SIZE}x1 "
          "uint8, with the lesion mask (1 = lesion); train/validation/test by slab, "
          f"fold0..fold{LESION_FOLDS - 1} by runs of {SLABS_PER_FOLD} contiguous slabs.")),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.name == "pretrain":
      features = tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(PRETRAIN_SIZE, PRETRAIN_SIZE, 1)),
          "label": tfds.features.ClassLabel(names=class_names()),
          "patient_id": tfds.features.Text(),
          "source_id": tfds.features.Text(),
      })
    else:
      features = tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(LESION_SIZE, LESION_SIZE, 1)),
          "mask": tfds.features.Image(shape=(LESION_SIZE, LESION_SIZE, 1)),
          "label": tfds.features.ClassLabel(names=["absent", "present"]),
          "patient_id": tfds.features.Text(),
          "source_id": tfds.features.Text(),
          "lesion_area": tfds.features.Scalar(dtype=np.int32),
          "lesion_contrast": tfds.features.Scalar(dtype=np.float32),
      })
    return self.dataset_info_from_configs(
        features=features, supervised_keys=("image", "label"),
        homepage="https://github.com/BMEII-AI/RadImageNet")

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is on disk already, inside installed packages.
    vol = sources.read_mni()
    if self.builder_config.name == "lesion":
      # Made once, written twice: in train/validation/test and in the slab-grouped folds.
      made = {s: list(self._lesion_examples(s, vol)) for s in SPLITS}
      folds = {f"fold{f}": [(k, ex) for s in SPLITS for k, ex in made[s]
                            if lesion_fold(ex["source_id"]) == f] for f in range(LESION_FOLDS)}
      return {name: iter(examples) for name, examples in {**made, **folds}.items()}
    dicom = self._read_dicom_sources()
    return {s: self._generate_examples(s, vol, dicom) for s in SPLITS}

  def _generate_examples(self, split, vol, dicom):
    yield from self._pretrain_examples(split, vol, dicom)

  # ----------------------------------------------------------------------------- pretrain
  def _read_dicom_sources(self) -> dict[str, list[tuple[str, str, np.ndarray]]]:
    """{label: [(patient_id, source_id, uint8 image)]}; unreadable files go to source_error."""
    out = {}
    for src in sources.DICOM_SOURCES:
      out.setdefault(src.label, [])
      try:
        images = sources.read_dicom_images(src)
      except readers.ReaderError as e:
        self.source_error(e.path, e.reason)
        continue
      for frame, img in zip(src.frames, images):
        out[src.label].append((src.patient_id, f"{src.filename}#frame{frame}", img))
    for label, imgs in out.items():
      if not imgs:
        self.source_error(label, "no readable source image left for this class")
    return out

  def _pretrain_examples(self, split, vol, dicom):
    names = class_names()
    seed = self.builder_config.seed
    sid = SPLITS.index(split)
    for label, (plane, ranges) in MNI_CLASSES.items():
      c = names.index(label)
      slices = slab_split([i for lo, hi in ranges for i in range(lo, hi + 1)])[split]
      for i in range(split_counts(MNI_EXAMPLES_PER_CLASS)[split]):
        index, slab = slices[i % len(slices)]
        rng = np.random.default_rng([seed, c, sid, i])
        img = synth.crop_resize(sources.mni_slice(vol, plane, index), rng, PRETRAIN_SIZE,
                                scale=(0.8, 1.0))
        img = synth.jitter_intensity(img, rng)
        yield f"{split}/{c:02d}/{i:04d}", {
            "image": png(img), "label": c, "patient_id": sources.MNI_PATIENT,
            "source_id": f"MNI152/{plane}/{label.rsplit('/', 1)[1]}/slab{slab:02d}"}
    grouped = grouped_dicom_classes()
    for label, imgs in dicom.items():
      c = names.index(label)
      if not imgs:
        continue
      if label in grouped:  # Each source image in exactly one split.
        order = np.random.default_rng([seed, c]).permutation(len(imgs))
        n = split_counts(len(imgs), at_least_one=True)
        bounds = {"train": (0, n["train"]), "validation": (n["train"], n["train"] + n["validation"]),
                  "test": (n["train"] + n["validation"], len(imgs))}[split]
        pool = [imgs[j] for j in sorted(order[bounds[0]:bounds[1]])]
      else:  # Too few sources: crops of the same images in every split (see README).
        pool = imgs
      for i in range(split_counts(DICOM_EXAMPLES_PER_CLASS)[split]):
        patient, source_id, src_img = pool[i % len(pool)]
        rng = np.random.default_rng([seed, c, sid, i])
        img = synth.crop_resize(src_img, rng, PRETRAIN_SIZE, scale=(0.6, 1.0))
        img = synth.jitter_intensity(img, rng)
        yield f"{split}/{c:02d}/{i:04d}", {
            "image": png(img), "label": c, "patient_id": patient,
            "source_id": source_id}

  # ----------------------------------------------------------------------------- lesion
  def lesion_slices(self, vol, split) -> list[tuple[str, int, int]]:
    """[(plane, index, slab)] of the split: slab split per plane, slices with enough brain."""
    out = []
    for plane, (lo, hi) in LESION_PLANES.items():
      for index, slab in slab_split(range(lo, hi + 1))[split]:
        if (sources.mni_slice(vol, plane, index) > 20).mean() >= LESION_MIN_BRAIN_FRACTION:
          out.append((plane, index, slab))
    return out

  def _lesion_examples(self, split, vol):
    seed = self.builder_config.seed
    sid = SPLITS.index(split)
    slices = self.lesion_slices(vol, split)
    for i in range(LESION_EXAMPLES[split]):
      rng = np.random.default_rng([seed, sid, i])
      label = i % 2  # Balanced: odd examples carry a lesion.
      while True:  # A positive retries on another slice when the anatomy is too small for it.
        plane, index, slab = slices[rng.integers(len(slices))]
        img = synth.crop_resize(sources.mni_slice(vol, plane, index), rng, LESION_SIZE,
                                scale=(0.85, 1.0))
        mask = np.zeros_like(img, dtype=bool)
        info = {"contrast": 0.0, "area": 0}
        if not label:
          break
        made = synth.insert_lesion(img, rng)
        if made is not None:
          img, mask, info = made
          break
      img = synth.jitter_intensity(img, rng, noise=(1.0, 5.0))
      yield f"{split}/{i:05d}", {
          "image": png(img),
          "mask": png(mask.astype(np.uint8)),  # 1 = lesion, as in every builder
          # The unit that keeps near-identical crops together stands in for the patient (the whole
          # set comes from one template): the slab, so every split and fold is patient-disjoint.
          "label": label, "patient_id": f"{sources.MNI_PATIENT}/{plane}/slab{slab:02d}",
          "source_id": f"MNI152/{plane}/slab{slab:02d}",
          "lesion_area": np.int32(info["area"]),
          "lesion_contrast": np.float32(info["contrast"]),
      }
