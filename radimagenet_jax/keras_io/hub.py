"""Weights by name, as keras.applications and timm fetch them: `weights="imagenet"` and
`weights="radimagenet"` in `rij.models.create` and fine-tuning's `init=`.

imagenet     Keras's official notop .h5 of each model, downloaded once from keras.applications'
             published URL, checked against its published md5 (keras/src/applications/*.py),
             and cached under its own file name (so its name still says which preprocessing it
             was trained with).
radimagenet  the official RadImageNet notop .h5 files. The release is behind a request form, so
             nothing is downloaded: the files are read from a given folder or the cache, and when
             absent the error says where the release is and which file goes where.

The cache is ``$RADIMAGENET_JAX_WEIGHTS`` (default ``~/.cache/radimagenet_jax/weights``). With
``RADIMAGENET_JAX_OFFLINE=1`` only the cache is read, and a missing file is an error that names the
URL to download and the path to put it at.

A download is written to a hidden ``.<name>.<random>.part`` file beside its destination, locked
(flock) while it is written, checked (length and md5), then renamed into place: the cache never
holds a partial or unchecked file under a weight file's name. A ``.part`` left by a download that
was killed is removed by the next download. Progress goes to stderr.
"""
from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request

from radimagenet_jax import _files

CACHE_ENV = "RADIMAGENET_JAX_WEIGHTS"
OFFLINE_ENV = "RADIMAGENET_JAX_OFFLINE"
DEFAULT_CACHE = os.path.join("~", ".cache", "radimagenet_jax", "weights")
NAMES = ("imagenet", "radimagenet")
TIMEOUT_S = 60.0          # the longest wait for the server (to connect, or for the next bytes)
_CHUNK = 1 << 20

_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"
# model -> (file name, URL, md5): keras.applications' WEIGHTS_PATH_NO_TOP and file_hash values
# (keras/src/applications/resnet.py, densenet.py, inception_v3.py, inception_resnet_v2.py).
IMAGENET = {
    "resnet50": ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", _KERAS + "resnet/",
                 "4d473c1dd8becc155b73f8504c6f6626"),
    "densenet121": ("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    _KERAS + "densenet/", "30ee3e1110167f948a6b9946edeeb738"),
    "inception_v3": ("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                     _KERAS + "inception_v3/", "bcbd6486424b2319ff4ef7d526e38f63"),
    "inception_resnet_v2": ("inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                            _KERAS + "inception_resnet_v2/", "d19885ff4a710c122648d3b5c3b684e4"),
}
IMAGENET = {m: (f, base + f, md5) for m, (f, base, md5) in IMAGENET.items()}

# model -> the official release's file name (docs/fidelity.md).
RADIMAGENET = {"resnet50": "RadImageNet-ResNet50_notop.h5",
               "densenet121": "RadImageNet-DenseNet121_notop.h5",
               "inception_v3": "RadImageNet-InceptionV3_notop.h5",
               "inception_resnet_v2": "RadImageNet-IRV2_notop.h5"}
RADIMAGENET_RELEASE = ("https://github.com/BMEII-AI/RadImageNet (the weights are shared after the "
                       "request form linked there)")


class DownloadError(RuntimeError):
  """A download that failed (unreachable, timed out, truncated, wrong hash); nothing was cached."""


def cache_dir() -> str:
  return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def offline() -> bool:
  return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def weights_path(model_name: str, name: str, folder: str | os.PathLike | None = None, *,
                 timeout: float = TIMEOUT_S, progress: bool = True) -> str:
  """The local path of the ``name`` ('imagenet' | 'radimagenet') weights of ``model_name``:
  from ``folder`` when it holds the file, else the cache; 'imagenet' is downloaded into the cache
  when missing (unless offline). Raises FileNotFoundError / DownloadError in one line."""
  if name not in NAMES:
    raise ValueError(f"weights={name!r}: expected one of {', '.join(NAMES)}, a .h5 file or a "
                     f"checkpoint directory.")
  table = IMAGENET if name == "imagenet" else RADIMAGENET
  if model_name not in table:
    raise ValueError(f"weights={name!r}: no {name} weights for {model_name!r}; they exist for "
                     f"{', '.join(table)}.")
  file_name = table[model_name][0] if name == "imagenet" else table[model_name]
  cache = cache_dir()
  places = [os.path.abspath(os.path.expanduser(os.fspath(folder)))] if folder else []
  for place in places + [cache]:
    if os.path.isfile(os.path.join(place, file_name)):
      return os.path.join(place, file_name)
  where = " or ".join(places + [f"the cache {cache}"])
  if name == "radimagenet":
    listing = ", ".join(RADIMAGENET.values())
    raise FileNotFoundError(
        f"weights='radimagenet' for {model_name}: {file_name} is not in {where}. The official "
        f"RadImageNet weights cannot be downloaded automatically: get them from "
        f"{RADIMAGENET_RELEASE} and put {file_name} in {cache} (${CACHE_ENV}); the four files are "
        f"{listing}.")
  _, url, md5 = IMAGENET[model_name]
  dest = os.path.join(cache, file_name)
  if offline():
    raise FileNotFoundError(
        f"weights='imagenet' for {model_name}: {file_name} is not in {where}, and "
        f"{OFFLINE_ENV} forbids downloading. Download {url} (md5 {md5}) and put it at {dest}.")
  return download(url, dest, md5, timeout=timeout, progress=progress)


def download(url: str, dest: str, md5: str | None = None, *, timeout: float = TIMEOUT_S,
             progress: bool = True) -> str:
  """Downloads ``url`` to ``dest`` atomically: a locked hidden ``.part`` file beside it, checked
  (the server's length, then ``md5``) and renamed into place; on any failure the ``.part`` is
  removed and nothing is at ``dest``. Returns ``dest``."""
  folder, base = os.path.dirname(os.path.abspath(dest)), os.path.basename(dest)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise DownloadError(f"cannot create the weights cache {folder} ({e.strerror}); set "
                        f"{CACHE_ENV} to a writable folder.") from None
  _remove_stale_parts(folder, base)
  fd, part = tempfile.mkstemp(prefix=f".{base}.", suffix=".part", dir=folder)
  try:
    with os.fdopen(fd, "wb") as out, _files.folder_lock(part) as _:
      digest = _fetch(url, out, timeout, progress, dest)
      out.flush()
      os.fsync(out.fileno())
    if md5 is not None and digest != md5:
      raise DownloadError(f"{url}: the downloaded file has md5 {digest}, but keras.applications "
                          f"publishes {md5}; not the official file (or damaged in transit), "
                          f"nothing was cached.")
    os.replace(part, dest)
  finally:
    if os.path.exists(part):
      os.remove(part)
  return dest


def _fetch(url, out, timeout, progress, dest) -> str:
  """Streams ``url`` into ``out``; returns the md5 of what was read. Raises DownloadError."""
  digest = hashlib.md5(usedforsecurity=False)
  got, total = 0, None
  shown = _Progress(url, dest, progress)
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      length = response.headers.get("Content-Length")
      total = int(length) if length and length.isdigit() else None
      read = getattr(response, "read1", response.read)  # what has arrived, not a full chunk
      while chunk := read(_CHUNK):
        out.write(chunk)
        digest.update(chunk)
        got += len(chunk)
        shown.update(got, total)
  except urllib.error.HTTPError as e:
    raise DownloadError(f"{url}: HTTP {e.code} {e.reason}; nothing was cached.") from None
  except (socket.timeout, TimeoutError) as e:
    raise DownloadError(f"{url}: no data for {timeout:g} s (timed out after {got:,} bytes); "
                        f"nothing was cached. Retry, or download it yourself and put it at "
                        f"{dest}.") from None
  except urllib.error.URLError as e:
    if isinstance(e.reason, (socket.timeout, TimeoutError)):
      raise DownloadError(f"{url}: no answer within {timeout:g} s (timed out); nothing was "
                          f"cached. Retry, or download it yourself and put it at {dest}.") from None
    raise DownloadError(f"{url}: unreachable ({e.reason}); nothing was cached. Download it "
                        f"yourself and put it at {dest}.") from None
  except OSError as e:  # a connection reset, or the cache's disk is full
    raise DownloadError(f"{url}: download failed after {got:,} bytes ({e}); nothing was "
                        f"cached.") from None
  except Exception as e:  # http.client.IncompleteRead and other protocol errors
    raise DownloadError(f"{url}: download failed after {got:,} bytes ({type(e).__name__}: {e}); "
                        f"nothing was cached.") from None
  finally:
    shown.close(got, total)
  if total is not None and got != total:
    raise DownloadError(f"{url}: the download ended after {got:,} of {total:,} bytes "
                        f"(truncated); nothing was cached. Retry.")
  return digest.hexdigest()


def _remove_stale_parts(folder: str, base: str) -> None:
  """Removes the ``.part`` files of downloads that were killed (those nobody holds locked)."""
  for name in os.listdir(folder):
    if name.startswith(f".{base}.") and name.endswith(".part"):
      path = os.path.join(folder, name)
      with _files.folder_lock(path, blocking=False, unsupported=False) as free:
        if free:
          os.remove(path)


class _Progress:
  """`downloading URL: 12.0 / 97.7 MB (12%)` on stderr: redrawn in place on a terminal, else a
  line every 10% (a log file)."""

  def __init__(self, url, dest, enabled):
    self.enabled, self.tty = enabled, enabled and sys.stderr.isatty()
    self.last_shown, self.last_tenth = 0.0, -1
    if enabled:
      print(f"downloading {url} -> {dest}", file=sys.stderr, flush=True)

  def update(self, got, total):
    if not self.enabled:
      return
    now = time.monotonic()
    tenth = got * 10 // total if total else -1
    if self.tty and now - self.last_shown > 0.2:
      print(f"\r  {self._line(got, total)}", end="", file=sys.stderr, flush=True)
      self.last_shown = now
    elif not self.tty and total and tenth > self.last_tenth:
      print(f"  {self._line(got, total)}", file=sys.stderr, flush=True)
      self.last_tenth = tenth

  def close(self, got, total):
    if self.tty:
      print(f"\r  {self._line(got, total)}", file=sys.stderr, flush=True)

  @staticmethod
  def _line(got, total):
    mb = lambda n: f"{n / 1e6:.1f}"
    return (f"{mb(got)} / {mb(total)} MB ({100 * got // total}%)" if total
            else f"{mb(got)} MB")
