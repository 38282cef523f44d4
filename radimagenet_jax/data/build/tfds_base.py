"""`RadBuilder`: the TFDS GeneratorBasedBuilder every radimagenet-jax builder inherits.

It adds one thing to TFDS: a policy for bad source files (unreadable DICOM, truncated PNG, a label
that is missing from the CSV...). Builders call `self.source_error(path, reason)` where they meet
one; what happens then depends on the `on_error` argument given to the builder:

- `on_error='fail'` (default): raise `SourceFileError` naming the file and the reason, so that the
  build stops (and, because TFDS writes into a temporary directory, leaves no dataset behind);
- `on_error='skip'`: log a warning, remember the file and go on (the builder then `return`s or
  `continue`s without yielding the example).

After a successful build the skipped files are listed, sorted, in `<dataset dir>/skipped_files.tsv`
(columns `path`, `reason`; written even when empty, so that its absence means "built by something
else") and their count per reason is appended to the dataset description, both in
`dataset_info.json` and whenever the builder is re-created over the built directory.

Records are serialized deterministically (sorted feature keys), so a builder whose examples depend
only on its seed writes the same bytes on every build.

Builders that read a manually downloaded release call `self.manual_path(dl_manager, "file.csv")`
for each file they need: a wrong `--manual_dir` then fails with MANUAL_DOWNLOAD_INSTRUCTIONS.
Every path made from the CONTENT of a source file (a CSV row, an id turned into a file name) goes
through `self.source_path(manual_dir, base, name, source=csv, where="line 7")`: a name that
resolves outside manual_dir (`../x`, an absolute path, a symlink out of the release) is a bad row
of `source`, never read.

Usage in a builder::

  class MyDataset(tfds_base.RadBuilder):
    VERSION = tfds.core.Version("1.0.0")
    def _generate_examples(self, paths):
      for path in paths:
        try:
          image = readers.read_dicom(path)
        except readers.ReaderError as e:
          self.source_error(path, e.reason)   # raises in on_error="fail" mode
          continue
        yield key, {...}

  builder = MyDataset(data_dir=..., on_error="skip")
"""
from __future__ import annotations

import collections
import contextlib
import csv
import io
import logging
import os
from typing import Iterable

import tensorflow_datasets as tfds

SKIPPED_FILES_NAME = "skipped_files.tsv"
ON_ERROR_CHOICES = ("fail", "skip")
_DESCRIPTION_MARKER = "\n\nSkipped source files:"
log = logging.getLogger(__name__)


class SourceFileError(RuntimeError):
  """A source file of a dataset could not be used (raised in on_error='fail' mode)."""

  def __init__(self, path, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(
        f"Bad source file {self.path}: {reason}. Fix or remove the file, or rebuild with "
        "on_error='skip' (`radimagenet-jax build ... --on_error=skip`) to skip it and list it in "
        f"{SKIPPED_FILES_NAME}.")


def inside(root, path) -> bool:
  """Whether `path` lies inside the folder `root` once symlinks and `..` are resolved
  (os.path.realpath of both). A path that cannot be resolved (a NUL byte in it) is not inside."""
  try:
    real_root = os.path.realpath(os.fspath(root))
    real = os.path.realpath(os.fspath(path))
    return os.path.commonpath([real_root, real]) == real_root
  except (ValueError, TypeError, OSError):
    return False


def format_skipped_summary(skipped: Iterable[tuple[str, str]]) -> str:
  """The description paragraph: total count and count per reason (reasons sorted)."""
  skipped = list(skipped)
  text = f"{_DESCRIPTION_MARKER} {len(skipped)} (listed in {SKIPPED_FILES_NAME})."
  for reason, n in sorted(collections.Counter(r for _, r in skipped).items()):
    text += f"\n- {n} x {reason}"
  return text


def read_skipped_files(dataset_dir) -> list[tuple[str, str]]:
  """Reads `<dataset_dir>/skipped_files.tsv` as [(path, reason)]; [] when absent."""
  path = os.path.join(os.fspath(dataset_dir), SKIPPED_FILES_NAME)
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    rows = list(csv.reader(f, delimiter="\t"))
  return [(r[0], r[1]) for r in rows[1:] if r]


@contextlib.contextmanager
def _deterministic_serialization():
  """Makes TFDS serialize tf.train.Example protos with sorted map keys while building.

  The feature map of a tf.train.Example is a protobuf map, whose default serialization order
  varies between processes: the same examples would give different record bytes on every build.
  `SerializeToString(deterministic=True)` sorts the keys, so the same seed gives the same bytes.
  """
  from tensorflow_datasets.core import example_serializer
  cls = example_serializer.ExampleSerializer
  original = cls.serialize_example

  def serialize_example(self, example):
    return self.get_tf_example(example).SerializeToString(deterministic=True)

  cls.serialize_example = serialize_example
  try:
    yield
  finally:
    cls.serialize_example = original


class RadBuilder(tfds.core.GeneratorBasedBuilder):
  """GeneratorBasedBuilder with the on_error='fail'|'skip' policy for bad source files.

  Subclasses are ordinary TFDS builders (VERSION, BUILDER_CONFIGS, `_info`, `_split_generators`,
  `_generate_examples`); they only call `self.source_error(path, reason)` for bad inputs.
  Examples must be generated in the builder's own process (the default, no Beam), since the skipped
  list lives on the builder instance.
  """

  def __init__(self, *, on_error: str = "fail", **kwargs):
    if on_error not in ON_ERROR_CHOICES:
      raise ValueError(f"on_error={on_error!r}; expected one of {ON_ERROR_CHOICES}.")
    self.on_error = on_error
    self._skipped: list[tuple[str, str]] = []
    super().__init__(**kwargs)
    # A builder re-created over an already built directory reports the skipped files too (TFDS
    # takes the description from the code, not from dataset_info.json, when the code is present).
    if os.path.exists(os.path.join(os.fspath(self.data_path), SKIPPED_FILES_NAME)):
      self._append_skipped_summary(read_skipped_files(self.data_path))

  @property
  def skipped_files(self) -> list[tuple[str, str]]:
    """[(path, reason)] of the source files skipped so far in this build, in order met."""
    return list(self._skipped)

  def source_error(self, path, reason: str) -> None:
    """Records a bad source file: raises `SourceFileError` ('fail') or logs and remembers it ('skip')."""
    path = os.fspath(path)
    # Tabs/newlines would break the TSV side file.
    reason = " ".join(str(reason).split())
    if self.on_error == "fail":
      raise SourceFileError(path, reason)
    # One line per file at INFO; the build's summary gives the count and the list's path.
    log.info("Skipping source file %s: %s", path, reason)
    self._skipped.append((path, reason))

  def source_path(self, manual_dir, base, name: str, *, source, where: str):
    """`base/name` for a file name (or id) read from the source file `source`, or None after
    `source_error(source, ...)` when it resolves outside `manual_dir` (symlinks followed).

    The check comes before any look at the file, and the error reads the same whether or not the
    outside path exists. `where` names the row, e.g. "line 7".
    """
    path = os.path.join(os.fspath(base), name)
    if inside(manual_dir, path):
      return path
    self.source_error(source, f"{where}: {name!r} resolves outside --manual_dir "
                      f"{os.fspath(manual_dir)}; paths in the release's files must stay inside it")
    return None

  def manual_path(self, dl_manager, *relative: str):
    """`dl_manager.manual_dir / relative...`, or FileNotFoundError naming it, with the instructions.

    Use for each file/folder the release must contain, so that a wrong `--manual_dir` (one that
    exists and is not empty, but holds something else) fails with the download instructions too.
    """
    path = dl_manager.manual_dir.joinpath(*relative)
    if not path.exists():
      raise FileNotFoundError(
          f"{path} not found: --manual_dir={dl_manager.manual_dir} does not hold the {self.name} "
          f"release (expected {'/'.join(relative) or 'files'} in it).\n"
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS or ''}")
    return path

  def _append_skipped_summary(self, skipped) -> None:
    proto = self.info.as_proto
    if _DESCRIPTION_MARKER not in proto.description:
      proto.description = proto.description + format_skipped_summary(skipped)

  def _download_and_prepare(self, dl_manager, download_config):  # pytype: disable=signature-mismatch
    self._skipped = []
    with _deterministic_serialization():
      super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    # Here self.data_dir is still TFDS's temporary directory: the side file is renamed into place
    # together with the records, and the description is updated before dataset_info.json is
    # written (TFDS writes it right after this method returns).
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows(sorted(self._skipped))
    with open(os.path.join(os.fspath(self.data_dir), SKIPPED_FILES_NAME), "w") as f:
      f.write(buf.getvalue())
    self._append_skipped_summary(self._skipped)
