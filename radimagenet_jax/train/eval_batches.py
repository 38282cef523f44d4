"""Fixed-size batches for evaluation, prediction and Grad-CAM: the ONE padding rule.

A jitted step compiles for one batch shape, and on several processes every process must run the
same number of steps, so the last (short or missing) batch is padded with zeros and a 0/1 'mask'
marks the real examples. `Indexed` adds each record's position in the source ('_index'), so
per-example outputs gathered from all processes can be put back in source order.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np

from radimagenet_jax import distributed
from radimagenet_jax.data import pipeline

INDEX_KEY = "_index"


class Indexed(Sequence):
  """A source whose records carry their position: ``record['_index']`` (int32)."""

  def __init__(self, source: Sequence[Mapping[str, Any]]):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    record = dict(self.source[i])
    record[INDEX_KEY] = np.int32(i)
    return record

  def __repr__(self):  # grain logs its source
    return f"Indexed({self.source!r})"


class ProcessRows(Sequence):
  """Process ``index`` of ``count``'s rows of each global batch of ``source``, in order.

  Global batch k holds records [k*B, (k+1)*B) (B = ``local_batch`` * ``count``), and process i
  reads rows [k*B + i*L, k*B + (i+1)*L) of it, the rows it holds in the sharded batch: every
  global eval batch holds the examples of a one-process run's batch k, in the same order, so
  limiting an evaluation to its first batches (``eval_steps``) measures the same examples on any
  number of processes. (Contiguous shards per process would put other examples in batch k.)
  """

  def __init__(self, source: Sequence[Mapping[str, Any]], local_batch: int, index: int,
               count: int):
    self.source = source
    n, step = len(source), local_batch * count
    self.rows = [r for start in range(index * local_batch, n, step)
                 for r in range(start, min(start + local_batch, n))]

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    return self.source[self.rows[i]]

  def __repr__(self):  # grain logs its source
    return f"ProcessRows({self.source!r}, {len(self.rows)} rows)"


def pad(batch: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Pads every array of ``batch`` along axis 0 to ``size`` with zeros and adds 'mask' (1 = real)."""
  n = len(next(iter(batch.values())))
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    filler = np.zeros((size - n,) + value.shape[1:], value.dtype)
    out[key] = np.concatenate([value, filler]) if size > n else value
  out["mask"] = (np.arange(size) < n).astype(np.float32)
  return out


def padded_batches(batches: Iterable[Mapping[str, np.ndarray]], size: int, count: int,
                   template: Mapping[str, tuple[tuple[int, ...], Any]]) -> Iterator[dict]:
  """Exactly ``count`` batches of ``size`` rows: ``batches`` padded, then all-padding batches
  shaped by ``template`` ({key: (row shape, dtype)}, updated from the first real batch)."""
  it = iter(batches)
  template = dict(template)
  for _ in range(count):
    batch = next(it, None)
    if batch is None:
      batch = {k: np.zeros((0,) + tuple(shape), dtype) for k, (shape, dtype) in template.items()}
    else:
      template = {k: (np.asarray(v).shape[1:], np.asarray(v).dtype) for k, v in batch.items()}
    yield pad(batch, size)


def eval_batches(source, *, batch_size: int, image_size: int, preprocess_mode: str, mesh,
                 worker_count: int = 0, max_batches: int = 0, indexed: bool = False):
  """Global, padded eval batches of ``source`` ('image', 'label', 'mask'[, '_index']), in order,
  each process reading its rows of every global batch (`ProcessRows`). ``batch_size`` is global."""
  local_bs = distributed.process_batch_size(batch_size, mesh)
  src = Indexed(source) if indexed else source
  if jax.process_count() > 1:
    src = ProcessRows(src, local_bs, jax.process_index(), jax.process_count())
  loader = pipeline.make_loader(src, batch_size=local_bs, image_size=image_size,
                                preprocess_mode=preprocess_mode, shuffle=False, num_epochs=1,
                                worker_count=worker_count, drop_remainder=False,
                                shard_by_process=False, extra_keys=(INDEX_KEY,) if indexed else (),
                                preprocess_on_device=True)
  count = math.ceil(len(source) / batch_size)
  if max_batches:
    count = min(count, max_batches)
  # Used only when a process has no examples at all: RGB uint8 pixels at the eval size.
  template = {"image": ((image_size, image_size, 3), np.uint8), "label": ((), np.int32)}
  if indexed:
    template[INDEX_KEY] = ((), np.int32)
  for batch in padded_batches(iter(loader), local_bs, count, template):
    yield distributed.to_global(batch, mesh)
