"""Builds a `tfds_builders/<name>` dataset TF-free, to array_record, atomically and once.

    from radimagenet_jax.data import build
    builder = build.build("radimagenet_demo/pretrain", data_dir="~/tensorflow_datasets")
    # same as: radimagenet-jax build radimagenet_demo/pretrain --data_dir=~/tensorflow_datasets

TensorFlow is not installed: TFDS 4.9 writes array_record files without it as long as features are
given as encoded bytes / PIL images / paths (never numpy images that need TF to encode).

- Cached: a dataset whose version directory exists is reused; `overwrite=True` rebuilds it.
- Atomic: TFDS writes into `incomplete.<id>_<version>/` and renames it when done (and deletes it on
  failure); on top of that, directories this call created are removed when the build fails, and an
  `overwrite=True` rebuild keeps the old dataset aside (`<version>.previous`) until the new one is
  complete.
- Recovered: a build killed midway (kill -9, power cut) leaves `<version>.previous` and
  `incomplete.*` folders behind; the next `build` of that dataset (and `recover`) puts the old copy
  back or removes the leftovers, and says so. A build holds an exclusive lock (flock) on the
  config folder, so leftovers of a build still running elsewhere are never touched.
- Plain output: with `progress=True` a build prints what it did in a few lines (dataset, examples
  per split, time, where it wrote, skipped files); TFDS's own progress bars and log lines are
  silenced while it runs.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import re
import shutil
import time

from radimagenet_jax.data.build import recovery
from radimagenet_jax.data.build import tfds_base

FILE_FORMAT = "array_record"
log = logging.getLogger(__name__)


def parse_name(dataset: str, config: str | None = None) -> tuple[str, str | None]:
  """'name' or 'name/config' (+ optional config argument) -> (name, config)."""
  name, _, cfg = os.fspath(dataset).partition("/")
  if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
    raise ValueError(f"dataset {dataset!r}: {name!r} is not a dataset name; expected DATASET or "
                     f"DATASET/CONFIG with DATASET one of: {', '.join(available_datasets())}.")
  cfg = cfg or None
  if cfg and config and cfg != config:
    raise ValueError(f"dataset={dataset!r} names config {cfg!r} but config={config!r} was given.")
  return name, cfg or config


def builder_class(name: str):
  """The builder class defined by the `tfds_builders.<name>` package."""
  import tensorflow_datasets as tfds
  try:
    module = importlib.import_module(f"tfds_builders.{name}")
  except ModuleNotFoundError as e:
    if e.name not in (f"tfds_builders.{name}", "tfds_builders"):
      raise
    raise ValueError(f"Unknown dataset {name!r}: no package tfds_builders/{name}. "
                     f"Available: {', '.join(available_datasets()) or 'none'}.") from e
  for obj in vars(module).values():
    if (inspect.isclass(obj) and issubclass(obj, tfds.core.DatasetBuilder)
        and getattr(obj, "name", None) == name):
      return obj
  raise ValueError(f"tfds_builders/{name} defines no DatasetBuilder named {name!r} (its "
                   "__init__.py must import the builder class).")


def available_datasets() -> list[str]:
  """Names of the builder packages in tfds_builders/."""
  import tfds_builders
  root = os.path.dirname(tfds_builders.__file__)
  return sorted(d for d in os.listdir(root)
                if os.path.isfile(os.path.join(root, d, "__init__.py")))


def make_builder(dataset: str, data_dir=None, config=None, on_error: str = "fail"):
  """Instantiates (without building) the builder for 'name[/config]'."""
  name, config = parse_name(dataset, config)
  cls = builder_class(name)
  kwargs = {"data_dir": os.path.expanduser(os.fspath(data_dir)) if data_dir else None}
  if config is not None:
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if config not in names:
      raise ValueError(f"Unknown config {config!r} for dataset {name!r}; configs: {names}.")
    kwargs["config"] = config
  if issubclass(cls, tfds_base.RadBuilder):
    kwargs["on_error"] = on_error
  elif on_error != "fail":
    raise ValueError(f"{name} does not derive from RadBuilder: on_error={on_error!r} unsupported.")
  return cls(**kwargs)


def _new_dirs(path: str) -> list[str]:
  """`path` and its ancestors that do not exist yet (deepest first)."""
  out = []
  while path and not os.path.exists(path):
    out.append(path)
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return out


def recover(dataset: str, data_dir=None, config=None, progress: bool = False) -> list[str]:
  """Repairs what an interrupted build of `dataset` left in `data_dir` (`recovery.repair`) unless a
  build of it is running right now; says what it did (printed with `progress`, else logged as
  warnings) and returns those lines. For datasets outside tfds_builders/ it does nothing."""
  try:
    builder = make_builder(dataset, data_dir=data_dir, config=config)
  except ValueError:
    return []
  data_path = os.fspath(builder.data_path)
  if not os.path.isdir(os.path.dirname(data_path)):
    return []
  with recovery.locked(os.path.dirname(data_path), blocking=False) as mine:
    done = recovery.repair(data_path) if mine else []
  _say(done, progress)
  return done


def _say(lines, progress: bool) -> None:
  for line in lines:
    if progress:
      print(line)
    else:
      log.warning("%s", line)


@contextlib.contextmanager
def _quiet_tfds(builder):
  """Silences TFDS while it builds: no tqdm bars, no 'Downloading and preparing...' prints, absl
  (TFDS's logger) at ERROR. Everything is restored afterwards."""
  from absl import logging as absl_logging
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.utils import tqdm_utils
  bars, verbosity = getattr(tqdm_utils, "_active", True), absl_logging.get_verbosity()
  tfds.display_progress_bar(False)
  absl_logging.set_verbosity(absl_logging.ERROR)
  builder._log_download_bytes = builder._log_download_done = lambda: None  # TFDS's two prints
  try:
    yield
  finally:
    tfds.display_progress_bar(bars)
    absl_logging.set_verbosity(verbosity)


def _label(builder) -> str:
  config = builder.builder_config.name if builder.builder_config else None
  return f"{builder.name}/{config}" if config else builder.name


def _report(builder, seconds: float) -> list[str]:
  """The lines `build` prints after a build: what, how many per split, time, where, skipped."""
  data_path = os.fspath(builder.data_path)
  splits = ", ".join(f"{name} {info.num_examples}" for name, info in builder.info.splits.items())
  skipped = tfds_base.read_skipped_files(data_path)
  listed = os.path.join(data_path, tfds_base.SKIPPED_FILES_NAME)
  summary = getattr(builder, "build_summary", lambda: [])()  # the builder's own lines, if any
  return [f"built {_label(builder)} {builder.version} in {seconds:.1f} s: {data_path}",
          f"  examples per split: {splits}",
          f"  skipped source files: {len(skipped)} (listed in {listed})"] + list(summary) + [
              f"  {line}" for line in getattr(builder, "summary_lines", list)()]


def build(dataset: str, data_dir=None, manual_dir=None, on_error: str = "fail",
          overwrite: bool = False, config=None, progress: bool = True):
  """Builds `dataset` ('name' or 'name/config') once; returns the prepared TFDS builder.

  Args:
    dataset: a package name under tfds_builders/, optionally with '/config'.
    data_dir: TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    manual_dir: folder with the manually downloaded release (builders that need one).
    on_error: 'fail' (stop at the first bad source file) or 'skip' (skip it and list it in
      `<dataset dir>/skipped_files.tsv`).
    overwrite: rebuild even if the dataset exists (the old copy is kept until the new one is done).
    config: the builder config name, alternative to 'name/config'.
    progress: print what the build did (a few lines); False (tests, training) prints nothing and
      logs only repairs of interrupted builds and skipped-file counts, as warnings.
  """
  make = lambda: make_builder(dataset, data_dir=data_dir, config=config, on_error=on_error)
  builder = make()
  data_path = os.fspath(builder.data_path)
  parent = os.path.dirname(data_path)
  if os.path.isdir(parent):  # leftovers of a killed build first, then the cache check
    with recovery.locked(parent):
      repaired = recovery.repair(data_path)
    _say(repaired, progress)
    if repaired:
      builder = make()  # made before the repair: its info may not be the one on disk
  if os.path.exists(data_path) and not overwrite:  # Cached: nothing to do.
    if progress:
      print(f"{dataset} is already built in {data_path} (overwrite=True / --overwrite rebuilds).")
    return builder

  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    if not manual_dir:
      raise ValueError(f"{builder.name} needs the manually downloaded release: pass --manual_dir "
                       f"(manual_dir=...).\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    manual_dir = os.path.expanduser(os.fspath(manual_dir))
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
      raise FileNotFoundError(f"manual_dir {manual_dir} does not exist or is empty; expected the "
                              f"{builder.name} release in it.\n"
                              f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")

  created = _new_dirs(parent)  # e.g. <data_dir>/<name>/<config>
  # TFDS makes <data_dir>/downloads/extracted even when nothing is downloaded: drop it if empty.
  downloads = os.path.join(os.fspath(builder.data_dir_root), "downloads")
  downloads_new = not os.path.exists(downloads)
  os.makedirs(parent, exist_ok=True)
  with recovery.locked(parent):  # one build of this config at a time, across processes
    _say(recovery.repair(data_path), progress)  # a build that died while this one waited
    if os.path.exists(data_path) and not overwrite:  # built by another process meanwhile
      return make()
    return _build_now(make, data_path, manual_dir, progress, created, downloads, downloads_new)


def _build_now(make, data_path, manual_dir, progress, created, downloads, downloads_new):
  """The build itself, with the config folder locked; undoes everything if it fails."""
  import tensorflow_datasets as tfds
  backup = None
  if os.path.exists(data_path):  # overwrite=True: keep the old copy until the new one is done.
    backup = data_path + recovery.PREVIOUS_SUFFIX
    os.rename(data_path, backup)
  builder = make()  # made after the rename: one made over a built folder has its info frozen
  if progress:
    print(f"building {_label(builder)} {builder.version} into {data_path} ...")
  download_config = tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  start = time.perf_counter()
  try:
    with _quiet_tfds(builder):
      builder.download_and_prepare(file_format=FILE_FORMAT, download_config=download_config)
  except BaseException:
    _drop_empty_tree(downloads, downloads_new)
    if os.path.exists(data_path):  # Not reachable with TFDS's rename-at-end, but be sure.
      shutil.rmtree(data_path, ignore_errors=True)
    if backup:
      os.rename(backup, data_path)
    for d in reversed(created):  # Directories this call created hold nothing built: drop them.
      shutil.rmtree(d, ignore_errors=True)
    raise
  if backup:
    shutil.rmtree(backup, ignore_errors=True)
  _drop_empty_tree(downloads, downloads_new)
  if progress:
    for line in _report(builder, time.perf_counter() - start):
      print(line)
  elif getattr(builder, "skipped_files", None):
    log.warning("%s: skipped %d bad source files, listed in %s", _label(builder),
                len(builder.skipped_files), os.path.join(data_path, tfds_base.SKIPPED_FILES_NAME))
  return builder


def _drop_empty_tree(path: str, created_here: bool) -> None:
  """Removes `path` if this call created it and it holds only empty folders."""
  if created_here and os.path.isdir(path) and not any(
      files for _, _, files in os.walk(path)):
    shutil.rmtree(path, ignore_errors=True)
