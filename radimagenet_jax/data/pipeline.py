"""grain input pipelines: TFDS array_record source -> decode, resize, augment, preprocess, batch.

    from radimagenet_jax.data import pipeline, tfds_source
    source = tfds_source.open_source("radimagenet_demo/pretrain", "train", data_dir)
    loader = pipeline.make_loader(source, batch_size=32, image_size=224, augment="paper")
    iterator = iter(loader)
    batch = next(iterator)          # {'image': float32 (32, 224, 224, 3), 'label': int32 (32,)}
    state = iterator.get_state()    # bytes; iterator.set_state(state) resumes exactly

The per-record work (decode, resize, augment, preprocess) is in transforms.py; opening the TFDS
source in tfds_source.py.

With `augment_on_device` the workers only draw the augmentation's parameters and the jitted step
warps (augment_device.py): the warp was the largest per-image cost left in the worker processes.

Determinism: grain hands every record a numpy Generator seeded from (seed, global record position),
so augmentations do not depend on worker_count, and the iterator state (`get_state`/`set_state`, or
the Orbax helpers below) restores the exact next batches.
"""
from __future__ import annotations

from typing import Any, Sequence

import grain
import numpy as np

from radimagenet_jax.data import augment as augment_lib
# `radimagenet_jax.data.preprocess` is the re-exported function, so import the names from the module.
from radimagenet_jax.data.preprocess import MODES as PREPROCESS_MODES
from radimagenet_jax.data.transforms import (RESIZE_METHODS, Augment, AugmentParams, DecodeResize,
                                             Finalize)


def _ensure_absl_flags_parsed():
  """grain's worker processes read absl flags; outside an absl app nobody parsed them (defaults)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _as_size(image_size) -> tuple[int, int]:
  if isinstance(image_size, int):
    return (image_size, image_size)
  height, width = image_size
  return (int(height), int(width))


class GlobalBatchSampler:
  """One global order of the records, cut into global batches; process i of n reads rows
  [i*L, (i+1)*L) of each (L = its batch size), so the mesh's global batch of every step holds the
  examples of a 1-process run, in the same order, with the same per-record rng (augmentation).

  grain's own `ShardByJaxProcess` gives each process a contiguous part of the records and shuffles
  within it, so there the global batches depend on the process count.
  """

  def __init__(self, base, process_index: int, process_count: int, local_batch: int):
    self.base, self.index, self.count, self.block = base, process_index, process_count, local_batch

  def __len__(self):
    return len(self.base)

  def __getitem__(self, k):
    m = k // self.count  # the DataLoader asks process i for k = i, i + n, i + 2n, ...
    g = (m // self.block) * self.block * self.count + self.index * self.block + m % self.block
    meta = self.base[g]
    return grain.RecordMetadata(index=k, record_key=meta.record_key, rng=meta.rng)

  def __repr__(self):  # grain compares it with the checkpointed iterator state's
    return (f"GlobalBatchSampler({self.base!r}, process {self.index} of {self.count}, "
            f"block {self.block})")


REAL_KEY = "_real"  # partial_batch: False for the padding records that fill an epoch's last batch


class EpochPaddedSampler:
  """Keras's epochs over an endless shuffled stream: each epoch of n records is followed by
  padding up to a multiple of the batch size b, so that batches never straddle two epochs; the
  padding records (the source's record n, see PaddedSource) are dropped by `real_examples`, which
  leaves ceil(n / b) batches an epoch, the last one partial, as `keras.Model.fit` runs them."""

  def __init__(self, base, num_records: int, batch_size: int):
    self.base, self.n, self.b = base, num_records, batch_size
    self.padded = -(-num_records // batch_size) * batch_size

  def __len__(self):
    return len(self.base)

  def __getitem__(self, k):
    epoch, j = divmod(k, self.padded)
    meta = self.base[epoch * self.n + min(j, self.n - 1)]
    return grain.RecordMetadata(index=k, record_key=meta.record_key if j < self.n else self.n,
                                rng=meta.rng)

  def __repr__(self):  # grain compares it with the checkpointed iterator state's
    return f"EpochPaddedSampler({self.base!r}, {self.n} records, batch {self.b})"


class PaddedSource:
  """``source`` plus one padding record (a copy of record 0) at index len(source); every record
  carries REAL_KEY (False for the padding)."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source) + 1

  def __getitem__(self, index):
    index = int(index)
    return dict(self.source[index if index < len(self.source) else 0],
                **{REAL_KEY: index < len(self.source)})

  def __repr__(self):
    return f"PaddedSource({self.source!r})"


def real_examples(batch: dict) -> dict:
  """A batch of a `partial_batch=True` loader without its padding rows (and without REAL_KEY):
  full batches come back whole, an epoch's last batch with its real examples only."""
  real = np.asarray(batch.pop(REAL_KEY), bool)
  return batch if real.all() else {k: np.asarray(v)[real] for k, v in batch.items()}


def make_loader(source: Sequence[Any], *, batch_size: int, image_size: int | tuple[int, int],
                preprocess_mode: str = "radimagenet",
                augment: str | augment_lib.AugmentConfig | dict = "none", shuffle: bool = True,
                seed: int = 0, num_epochs: int | None = None, worker_count: int = 0,
                drop_remainder: bool = True, resize: str = "nearest",
                shard_by_process: bool = True, extra_keys: Sequence[str] = (),
                worker_buffer_size: int = 2,
                read_options: grain.ReadOptions | None = None,
                preprocess_on_device: bool = False,
                augment_on_device: bool | str = False,
                partial_batch: bool = False) -> grain.DataLoader:
  """A grain DataLoader yielding preprocessed batches.

  Args:
    source: a random-access source (open_source, or any sequence of records with 'image' (uint8
      array or encoded bytes) and 'label').
    batch_size: examples per batch on THIS process (global batch = batch_size * process count).
    image_size: output size, int or (height, width).
    preprocess_mode: a mode of preprocess.MODES.
    augment: an augmentation preset ('none', 'paper', 'paper_noflip'), AugmentConfig or a dict of
      ImageDataGenerator arguments.
    shuffle, seed: global shuffle with this seed (also seeds the augmentation).
    num_epochs: None repeats forever.
    worker_count: grain worker processes (0 = in this process).
    drop_remainder: drop the last incomplete batch (and the per-process shard remainder).
    resize: 'nearest' (the original Keras loading) or 'bilinear'.
    shard_by_process: each JAX process reads a disjoint shard of the source.
    extra_keys: other record keys to pass through, e.g. ('mask',); keys named 'mask' or ending in
      '_mask' are images: decoded, resized (nearest) and augmented with the image.
    worker_buffer_size: batches each worker prepares ahead.
    read_options: grain ReadOptions (reader threads and prefetch) for the source reads.
    preprocess_on_device: leave the preprocessing to the consumer: 'image' is (B, H, W, 1) for
      grayscale or (B, H, W, 3), uint8 (float32 0..255 after augmentation), and the caller applies
      `preprocess(batch['image'], preprocess_mode)` inside its jitted step (the train loop does).
      A grayscale image then crosses from a worker process as 1 byte per pixel instead of 12,
      which is what lets worker processes keep up (benchmarks/input_pipeline.py).
    augment_on_device: True/'on': the workers draw the augmentation's random parameters (the same
      draws as the host warp) but do not warp; each example carries 'aug_matrix' float32 (2, 3) and
      'aug_flip' bool (2,), 'image' stays uint8 pixels, and the consumer applies
      `augment_device.warp_batch` before the preprocessing (the train step does). Needs
      preprocess_on_device, order-1 'nearest' augmentation (every preset) and no mask keys.
      'auto': on when JAX's default backend is not the CPU and those hold. False/'off': the host
      warps. No fields are added when the augmentation is 'none'.
    partial_batch: Keras's epochs (endless shuffled stream, one process): ceil(n / batch_size)
      batches an epoch, the last one partial. Batches carry REAL_KEY; pass each through
      `real_examples` (the train loop does), which drops the padding that ends an epoch.

  Returns:
    A grain.DataLoader; `iter(loader)` has get_state()/set_state(). Batches are dicts:
    'image' float32 (B, H, W, 3) preprocessed (unless preprocess_on_device), 'label' int32 (B,),
    and each extra key stacked.
  """
  if preprocess_mode not in PREPROCESS_MODES:
    raise ValueError(f"unknown preprocessing mode {preprocess_mode!r}; expected one of "
                     f"{list(PREPROCESS_MODES)}")
  if resize not in RESIZE_METHODS:
    raise ValueError(f"unknown resize method {resize!r}; expected one of {list(RESIZE_METHODS)}")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  config = augment_lib.get_config(augment)
  extra_keys = tuple(extra_keys)
  mask_keys = tuple(k for k in extra_keys if k == "mask" or k.endswith("_mask"))
  on_device = _augment_on_device(augment_on_device, config, preprocess_on_device, mask_keys)
  if worker_count:
    _ensure_absl_flags_parsed()
  size = _as_size(image_size)
  shard_options = (grain.sharding.ShardByJaxProcess(drop_remainder=drop_remainder)
                   if shard_by_process else grain.sharding.NoSharding())
  if partial_batch:
    if num_epochs is not None or shard_options.shard_count > 1:
      raise ValueError("partial_batch=True needs an endless stream (num_epochs=None) on one "
                       f"process; got num_epochs={num_epochs}, {shard_options.shard_count} "
                       "processes. Use partial_batch=False (whole batches) on several processes.")
    sampler = EpochPaddedSampler(
        grain.samplers.IndexSampler(num_records=len(source), shuffle=shuffle, num_epochs=None,
                                    seed=seed, shard_options=grain.sharding.NoSharding()),
        len(source), batch_size)
    source, extra_keys = PaddedSource(source), extra_keys + (REAL_KEY,)
  elif shard_by_process and num_epochs is None and shard_options.shard_count > 1:
    # Training on several processes: the global batches of a 1-process run (GlobalBatchSampler).
    sampler = GlobalBatchSampler(
        grain.samplers.IndexSampler(num_records=len(source), shuffle=shuffle, num_epochs=None,
                                    seed=seed, shard_options=grain.sharding.NoSharding()),
        shard_options.shard_index, shard_options.shard_count, batch_size)
  else:
    sampler = grain.samplers.IndexSampler(num_records=len(source), shard_options=shard_options,
                                          shuffle=shuffle, num_epochs=num_epochs, seed=seed)
  operations = [DecodeResize(size, resize, mask_keys)]
  if not config.is_identity:
    operations.append(AugmentParams(config) if on_device else Augment(config, mask_keys))
  operations += [Finalize(preprocess_mode, extra_keys, mask_keys, preprocess_on_device),
                 grain.transforms.Batch(batch_size=batch_size, drop_remainder=drop_remainder)]
  return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                          worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                          shard_options=shard_options, read_options=read_options)


def _augment_on_device(value, config: augment_lib.AugmentConfig, preprocess_on_device: bool,
                       mask_keys: tuple[str, ...]) -> bool:
  """Resolves make_loader's augment_on_device ('auto' | 'on' | 'off' | bool) to a bool."""
  if isinstance(value, bool):
    value = "on" if value else "off"
  if value not in augment_lib.ON_DEVICE_MODES:
    raise ValueError(f"augment_on_device={value!r} is not valid; expected one of "
                     f"{', '.join(augment_lib.ON_DEVICE_MODES)} (or True/False).")
  if value == "off" or config.is_identity:
    return False
  from radimagenet_jax.data import augment_device  # pylint: disable=g-import-not-at-top
  if value == "auto":
    import jax  # pylint: disable=g-import-not-at-top
    return (jax.default_backend() != "cpu" and preprocess_on_device and not mask_keys
            and augment_device.is_supported(config))
  if not preprocess_on_device:
    raise ValueError("augment_on_device='on' needs preprocess_on_device=True (the step warps, "
                     "then preprocesses).")
  if mask_keys:
    raise ValueError(f"augment_on_device='on' does not transform masks {list(mask_keys)}; use "
                     "augment_on_device='off' to warp them with the image on the host.")
  augment_device.check_supported(config)
  return True


# ---- Orbax integration: the iterator state inside the training checkpoint -------------------------
# The iterator state goes into the same Orbax checkpoint as the train state (tested in
# tests/test_pipeline.py):
#   manager = ocp.CheckpointManager(directory, item_handlers={
#       "state": ocp.StandardCheckpointHandler(), "data": pipeline.checkpoint_handler()})
#   manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
#                                              data=pipeline.save_args(iterator)))
#   restored = manager.restore(step, args=ocp.args.Composite(
#       state=ocp.args.StandardRestore(abstract_state),
#       data=pipeline.restore_args(iter(loader))))   # restored["data"] is the resumed iterator
# Each JAX process writes and reads its own `process_<i>-of-<n>.json` state file.


def checkpoint_handler():
  """The Orbax CheckpointHandler for grain iterators (grain.checkpoint.CheckpointHandler)."""
  return grain.checkpoint.CheckpointHandler()


def save_args(iterator):
  """Orbax save args for a grain DataLoader iterator (grain.checkpoint.CheckpointSave)."""
  return grain.checkpoint.CheckpointSave(iterator)


def restore_args(iterator):
  """Orbax restore args: restores INTO `iterator` (a fresh iter(loader)) and returns it."""
  return grain.checkpoint.CheckpointRestore(iterator)
