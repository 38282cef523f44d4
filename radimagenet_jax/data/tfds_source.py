"""Opening a built TFDS dataset (array_record) as the random-access source of the grain loader.

    from radimagenet_jax.data import tfds_source
    source = tfds_source.open_source("radimagenet_demo/pretrain", "train", data_dir)
    tfds_source.class_names(source)   # the 'label' names from its dataset_info
"""
from __future__ import annotations

import os


def _default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def open_source(dataset: str, split: str, data_dir: str | os.PathLike | None = None, *,
                decode: bool = True, build: bool = False):
  """Opens a built TFDS dataset as a random-access source (`tfds.data_source`).

  Args:
    dataset: 'name' or 'name/config', e.g. 'radimagenet_demo/pretrain'.
    split: a TFDS split expression, e.g. 'train', 'validation', 'train[:10%]'.
    data_dir: TFDS data dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets.
    decode: True decodes images to uint8 numpy arrays in the source (TFDS uses PIL, no TensorFlow);
      False leaves them as encoded PNG/JPEG bytes, which make_loader decodes.
    build: build the dataset first with `data.build.build` (a no-op when it is built already);
      by default nothing is built and a missing dataset is an error.

  Returns:
    A sequence of records: dicts of numpy arrays (images HxWxC uint8), Python ints (ClassLabel) and
    bytes (Text).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if build:
    from radimagenet_jax.data.build import once  # pylint: disable=g-import-not-at-top
    once.ensure_built(dataset, data_dir=data_dir or None, progress=False)
  data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir else _default_data_dir()
  hint = (f"Build it first: radimagenet-jax build {dataset} --data_dir={data_dir}")
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError, or a config/version that is not there
    raise FileNotFoundError(f"dataset {dataset!r} is not built in data_dir {data_dir!r} "
                            f"({type(e).__name__}: {str(e).splitlines()[0]}). {hint}") from e
  if not builder.is_prepared():
    raise FileNotFoundError(f"dataset {dataset!r} is not built in data_dir {data_dir!r} (no "
                            f"{builder.data_dir}/dataset_info.json). {hint}")
  file_format = str(builder.info.file_format.value if builder.info.file_format else None)
  if file_format not in ("array_record", "parquet"):
    raise ValueError(f"dataset {dataset!r} in {builder.data_dir} is stored as {file_format}, which "
                     "has no random access; rebuild it with `radimagenet-jax build` (array_record).")
  decoders = None
  if not decode:
    decoders = {name: tfds.decode.SkipDecoding() for name, feature in builder.info.features.items()
                if isinstance(feature, tfds.features.Image)}
  try:
    return builder.as_data_source(split=split, decoders=decoders)
  except (ValueError, KeyError) as e:
    raise ValueError(f"dataset {dataset!r} in {builder.data_dir}: bad split {split!r}; splits: "
                     f"{list(builder.info.splits)} ({e})") from e


def class_names(source) -> list[str]:
  """The 'label' class names of a source from `open_source` (its TFDS dataset_info)."""
  return list(source.dataset_info.features["label"].names)
