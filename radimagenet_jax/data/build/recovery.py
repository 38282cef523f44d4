"""What a killed build leaves behind, and the lock that keeps builds of one dataset apart.

A build (`driver.build`) holds an exclusive flock on the dataset's config folder
(`<data_dir>/<name>/<config>/`) while it runs; the kernel drops it when the process dies, even by
kill -9. `repair(data_path)`, called with that lock held, undoes what a killed build left there:

- `<version>.previous` without `<version>`: an `--overwrite` rebuild died before it finished; the
  old copy is renamed back, so the dataset reads as built again;
- `<version>.previous` next to `<version>`: it died after the new copy was complete; the old copy
  is removed;
- `incomplete.<id>_<version>/`: TFDS's unfinished output; removed.
"""
from __future__ import annotations

import os
import re
import shutil

from radimagenet_jax import _files

PREVIOUS_SUFFIX = ".previous"


def locked(folder: str, blocking: bool = True):
  """The build's lock on ``folder`` (`_files.folder_lock`); without flock, builds go on unlocked."""
  return _files.folder_lock(folder, blocking, unsupported=True)


def repair(data_path: str) -> list[str]:
  """Undoes what a killed build of `data_path` left behind; returns one line per action.

  Call with the config folder locked. `<version>.previous` without `<version>`: an `--overwrite`
  rebuild died before finishing, so the old copy is put back. Both present: it died after the new
  copy was complete, so the old one goes. `incomplete.<id>_<version>`: TFDS's unfinished output.
  """
  done = []
  backup = data_path + PREVIOUS_SUFFIX
  if os.path.isdir(backup):
    if os.path.exists(data_path):
      shutil.rmtree(backup, ignore_errors=True)
      done.append(f"removed {backup}: the old copy left by an interrupted --overwrite rebuild, "
                  "which had finished")
    else:
      os.rename(backup, data_path)
      done.append(f"restored {data_path} from {backup}: an --overwrite rebuild was interrupted "
                  "before it finished")
  parent, version = os.path.split(data_path)
  pattern = re.compile(r"incomplete\.[A-Za-z0-9]+_" + re.escape(version))
  for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
    if pattern.fullmatch(name):
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
      done.append(f"removed {os.path.join(parent, name)}: the unfinished output of an "
                  "interrupted build")
  return done
