"""Reading and writing the HDF5 layouts of Keras weight files: layers, weight names, attributes."""
from __future__ import annotations

import dataclasses
import io
import os
import re
import tempfile
import zipfile

import h5py
import numpy as np

from radimagenet_jax.keras_io import nested_models


# Keras variable names of each (layer kind, Flax variable), in Keras weight order.
_KERAS_VAR_NAMES = {"kernel": "kernel", "bias": "bias", "scale": "gamma", "mean": "moving_mean",
                    "var": "moving_variance"}
_BN_VAR_NAMES = {"bias": "beta"}  # BatchNormalization's Flax 'bias' is Keras's 'beta'
_WEIGHTS_H5_ROOTS = ("layers", "_layer_checkpoint_dependencies")  # Keras 3 / Keras 2.13 "v3"


@dataclasses.dataclass
class _FileLayer:
  """One layer of a weight file that carries weights."""
  name: str                  # the layer name stored in the file (informative only)
  weights: list              # [(weight name, h5py.Dataset)] in Keras weight order
  cls: str | None = None     # snake-case class ('conv2d') for .weights.h5, else None

  @property
  def shapes(self):
    return [tuple(d.shape) for _, d in self.weights]


@dataclasses.dataclass
class _FileContents:
  path: str
  format: str
  attrs: dict                # keras_version, backend (strings), when present
  num_layers: int            # all layers the file lists, weightless ones included
  layers: list               # [_FileLayer] with weights; legacy: model order, keras3: per class
  hint: str = ""             # appended to a mismatch error: why the order may not be Keras's
  nested: tuple = ()         # names (or .weights.h5 keys) of models stored as one layer


def _str(v):
  return v.decode("utf8") if isinstance(v, bytes) else str(v)


def _snake(name: str) -> str:
  # Same as keras.src.utils.naming.to_snake_case, which names the .weights.h5 groups.
  name = re.sub(r"\W+", "", name)
  name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
  return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _read_attr_list(group, name):
  """A list-valued attribute, also when Keras split it in chunks (`layer_names0`, `1`, ...)
  because it exceeded the 64 KB HDF5 object-header limit (IRV2's 780 layer names do)."""
  if name in group.attrs:
    values = list(group.attrs[name])
  else:
    values, i = [], 0
    while f"{name}{i}" in group.attrs:
      values += list(group.attrs[f"{name}{i}"])
      i += 1
  return [_str(v) for v in values]


def _write_attr_list(group, name, values):
  data = np.asarray([v.encode("utf8") for v in values]) if values else np.zeros((0,), "float64")
  chunks = 1
  while any(c.nbytes > 64512 for c in np.array_split(data, chunks)):
    chunks += 1
  if chunks == 1:
    group.attrs[name] = data
  else:
    for i, c in enumerate(np.array_split(data, chunks)):
      group.attrs[f"{name}{i}"] = c


# The largest `model.weights.h5` read from a `.keras` archive. IRV2 (the largest of the four) is
# 0.22 GB, 0.66 GB with the Adam state a `.keras` file may carry; a larger member is refused
# before anything is read, since a zip member can declare any size (a decompression bomb).
MAX_ARCHIVE_MEMBER_BYTES = 4 << 30
# A compressed member that expands more than 100x and past 256 MiB is refused too (Keras's rule:
# float weights barely compress), before it is streamed to disk.
_BOMB_RATIO, _BOMB_FLOOR_BYTES = 100, 256 << 20
_ARCHIVE_MEMBER = "model.weights.h5"
_COPY_CHUNK = 1 << 20


def _open(path):
  """The h5py.File of a Keras weight file, or of the weights inside a `.keras` archive."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise ValueError(f"{path}: a folder; expected a Keras .h5, .weights.h5 or .keras file.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file; expected a Keras .h5 or .weights.h5 file.")
  if zipfile.is_zipfile(path):  # a Keras 3 `.keras` archive: its weights are model.weights.h5
    return _open_archive(path)
  try:
    return h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"{path}: not a readable HDF5 file ({e}); the file is truncated, corrupt or "
                     f"not a Keras weight file (.h5 / .weights.h5).") from None


class _RangeFile(io.RawIOBase):
  """Read-only file object over bytes [start, start + size) of an open file: a stored (not
  compressed) zip member, seekable in O(1) for h5py, without copying it."""

  def __init__(self, f, start: int, size: int):
    super().__init__()
    self._f, self._start, self._size, self._pos = f, start, size, 0

  def readable(self):
    return True

  def seekable(self):
    return True

  def seek(self, offset, whence=io.SEEK_SET):
    base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
    self._pos = max(0, base + offset)
    return self._pos

  def tell(self):
    return self._pos

  def readinto(self, buffer):
    n = max(0, min(len(buffer), self._size - self._pos))
    self._f.seek(self._start + self._pos)
    got = self._f.readinto(memoryview(buffer)[:n]) if n else 0
    self._pos += got
    return got

  def close(self):
    self._f.close()
    super().close()


class _ArchiveWeights(h5py.File):
  """The h5py.File of an archive member; closing it closes the file object it reads from."""

  def __init__(self, fileobj):
    super().__init__(fileobj, "r")
    self._source = fileobj

  def close(self):
    super().close()
    self._source.close()


def _open_archive(path):
  """Opens `model.weights.h5` inside a `.keras` zip without reading it into memory: a stored
  member is read in place, a compressed one is streamed into a temporary file first."""
  where = f"{path}: the {_ARCHIVE_MEMBER} inside this .keras archive"
  try:
    with zipfile.ZipFile(path) as z:
      if _ARCHIVE_MEMBER not in z.namelist():
        raise ValueError(f"{path}: a zip archive without {_ARCHIVE_MEMBER}; expected a Keras .h5, "
                         f".weights.h5 or .keras file.")
      info = z.getinfo(_ARCHIVE_MEMBER)
      if info.file_size > MAX_ARCHIVE_MEMBER_BYTES:
        raise ValueError(f"{where} declares {info.file_size:,} bytes, above the limit of "
                         f"{MAX_ARCHIVE_MEMBER_BYTES:,} (h5file.MAX_ARCHIVE_MEMBER_BYTES); refused "
                         "unread. Extract it and pass the .weights.h5 file instead.")
      if info.file_size > max(_BOMB_FLOOR_BYTES, _BOMB_RATIO * info.compress_size):
        raise ValueError(f"{where} declares {info.file_size:,} bytes from "
                         f"{info.compress_size:,} compressed (over {_BOMB_RATIO}x); refused unread "
                         "as a possible decompression bomb.")
      if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
        fileobj = _RangeFile(open(path, "rb"), _member_offset(path, info), info.file_size)
      else:
        fileobj = tempfile.TemporaryFile()
        with z.open(info) as member:
          while chunk := member.read(_COPY_CHUNK):  # ZipExtFile stops at the declared size
            fileobj.write(chunk)
        fileobj.seek(0)
  except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError) as e:
    raise ValueError(f"{path}: a damaged .keras (zip) archive ({type(e).__name__}: {e}).") from None
  try:
    return _ArchiveWeights(fileobj)
  except OSError as e:
    fileobj.close()
    raise ValueError(f"{where} is not a readable HDF5 file ({e}); the archive is truncated or "
                     f"corrupt.") from None


def _member_offset(path, info) -> int:
  """Where a zip member's data begins: after its local header (whose name and extra field lengths
  may differ from the central directory's)."""
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    header = f.read(zipfile.sizeFileHeader)
  if len(header) != zipfile.sizeFileHeader or header[:4] != zipfile.stringFileHeader:
    raise zipfile.BadZipFile(f"bad local header of {info.filename}")
  name_length = int.from_bytes(header[26:28], "little")  # APPNOTE.TXT 4.3.7
  extra_length = int.from_bytes(header[28:30], "little")
  return info.header_offset + zipfile.sizeFileHeader + name_length + extra_length


def _parse(f, path) -> _FileContents:
  """Lists the weighted layers of an open file in the order Keras matches them."""
  try:
    return _parse_unchecked(f, path)
  except (KeyError, OSError, RuntimeError) as e:
    raise ValueError(f"{path}: damaged or truncated HDF5 weight file ({e}).") from None


def _parse_unchecked(f, path) -> _FileContents:
  for root in _WEIGHTS_H5_ROOTS:
    if root in f and isinstance(f[root], h5py.Group) and "layer_names" not in f.attrs:
      return _parse_weights_h5(f, f[root], path)
  group, full = f, False
  if "layer_names" not in f.attrs and "model_weights" in f:
    group, full = f["model_weights"], True
  names = _read_attr_list(group, "layer_names")
  if not names:
    raise ValueError(f"{path}: HDF5 file without Keras weights (no 'layer_names' attribute, no "
                     f"'model_weights' or 'layers' group); expected a Keras .h5 / .weights.h5 file.")
  attrs = {k: _str(group.attrs[k]) for k in ("keras_version", "backend") if k in group.attrs}
  for k in ("keras_version", "backend"):
    if k not in attrs and k in f.attrs:
      attrs[k] = _str(f.attrs[k])
  layers, keras2, num_layers, hint, nested_names = [], False, len(names), "", []
  nested = nested_models.layer_orders(f)
  for name in names:
    wnames = _read_attr_list(group[name], "weight_names")
    keras2 |= any(w.endswith(":0") for w in wnames)
    by_layer = nested_models.group_by_layer(wnames)
    if name in nested or len(by_layer) > 1:   # a model used as one layer: its layers, in order
      order = nested.get(name) or list(by_layer)
      if name not in nested:
        hint = (f" The file holds a model nested as layer {name!r} without its layer order (a "
                f"weights-only file records none); Keras writes a nested model's trainable "
                f"weights first, so a partly frozen one cannot be matched: save the whole model "
                f"(model.save, .h5 or .keras) or its .weights.h5.")
      missing = sorted(set(by_layer) - set(order))
      if missing:
        raise ValueError(f"{path}: the nested model {name!r} holds weights of layers its config "
                         f"does not list ({', '.join(missing[:3])}); a damaged file.")
      layers += [_FileLayer(f"{name}/{inner}", [(w, group[name][w]) for w in by_layer[inner]])
                 for inner in order if inner in by_layer]
      nested_names.append(name)
      num_layers += max(len(order), len(by_layer)) - 1
    elif wnames:
      layers.append(_FileLayer(name, [(w, group[name][w]) for w in wnames]))
  version = attrs.get("keras_version", "")
  major = "2" if keras2 or (version[:1] in "12" and version) else "3"
  fmt = f"keras{major}-{'model' if full else 'weights'}"
  return _FileContents(os.fspath(path), fmt, attrs, num_layers, layers, hint, tuple(nested_names))


def _parse_weights_h5(f, root, path) -> _FileContents:
  layers, num_layers, nested = _weights_h5_layers(root, "")
  attrs = {k: _str(f.attrs[k]) for k in ("keras_version", "backend") if k in f.attrs}
  return _FileContents(os.fspath(path), "keras3", attrs, num_layers, layers, nested=nested)


def _weights_h5_layers(root, prefix: str) -> tuple[list, int, tuple]:
  """The weighted layers under a `.weights.h5` `layers` group, per class in Keras's counter order,
  the count of all layers and the keys of the models nested in it. A model used as a layer
  (`functional`, `sequential`) is a group with its own `layers`: its layers come first (they
  precede the outer model's top)."""
  def order(key):  # 'conv2d' -> 0, 'conv2d_12' -> 12: the per-class counter Keras used
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
    return m.group(1), int(m.group(2) or 0)
  entries, inner, num_layers, nested = [], [], 0, ()
  for key in root:
    item = root[key]
    if isinstance(item, h5py.Group) and isinstance(item.get("layers"), h5py.Group):
      sub, n, deeper = _weights_h5_layers(item["layers"], f"{prefix}{key}/layers/")
      inner += sub
      num_layers += n
      nested += (f"{prefix}{key}",) + deeper
      continue
    num_layers += 1
    vars_ = item["vars"] if "vars" in item else {}
    if len(vars_):
      cls, idx = order(key)
      entries.append((cls, idx, key, vars_))
  layers = []
  for cls, idx, key, vars_ in sorted(entries, key=lambda e: (e[0], e[1])):
    name = _str(vars_.attrs.get("name", key))
    layers.append(_FileLayer(name, [(f"{prefix}{key}/vars/{i}", vars_[str(i)])
                                    for i in range(len(vars_))], cls))
  return inner + layers, num_layers, nested
