"""Input pipeline throughput: images/s per worker process, grain pipeline vs a plain PIL+numpy loop.

    python benchmarks/input_pipeline.py                        # 512 PNGs, 256x256 -> 224x224
    python benchmarks/input_pipeline.py --num_images=64 --batches=4 --workers 1   # smoke run

Builds a TFDS array_record dataset of 256x256 grayscale PNGs (random anatomy-like blobs) in a temp
dir, TF-free, then times the work of one training image: read the record, PNG decode, resize
(nearest), the 'paper' ImageDataGenerator augmentation, the 'radimagenet' preprocessing, batching:
- grain: `pipeline.make_loader` over `tfds_source.open_source(..., decode=False)`, with 0 workers
  (this process) and with each --workers count (images/s total and per worker process), with the
  preprocessing on the host, with `preprocess_on_device=True` (the workers ship uint8 /
  single-channel pixels and the jitted step preprocesses), and with `augment_on_device=True` too
  (the workers only draw the augmentation's parameters; the jitted step warps, then preprocesses;
  the train loop's setting on an accelerator);
- the device side of that last split: `augment_device.warp_batch` jitted on --warp_batch images
  of --image_size (one channel) on JAX's default backend, ms per batch and us per image (median),
  for both formulations (map_coordinates under vmap, the one the step uses, and explicit gathers);
- baseline: the same steps as a plain per-image Python loop the way the original Keras generator
  does them (PIL decode, convert to RGB, resize, 3-channel augmentation, preprocess, np.stack).
--profile adds a per-step breakdown; --read_threads and --decode_in_source try grain's reader
threads. TensorFlow is not a dependency (and never installed by this project), so there is no
tf.data column.
Numbers go to stdout; nothing is asserted (benchmarks/ never gates tests).
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import PIL.Image

# Runnable from a checkout without `pip install -e .`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _make_builder_class(pkg_dir: str, num_images: int, size: int, rgb: bool):
  import tensorflow_datasets as tfds
  from etils import epath

  class InputPipelineBench(tfds.core.GeneratorBasedBuilder):
    """Synthetic PNGs: smooth blobs + noise, so PNG compression is like a real scan's."""
    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(pkg_dir)  # defined in a script, not a package: say where metadata is

    def _info(self):
      channels = 3 if rgb else 1
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(size, size, channels)),
          "label": tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      rng = np.random.default_rng(0)
      yy, xx = np.mgrid[:size, :size] / size
      for i in range(num_images):
        cy, cx, r = rng.uniform(0.3, 0.7, 3)
        body = 180 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.1 * r))
        image = np.clip(body + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)
        if rgb:
          image = np.stack([image, np.roll(image, 3, 0), np.roll(image, 3, 1)], -1)
        buffer = io.BytesIO()
        PIL.Image.fromarray(image).save(buffer, format="PNG")
        yield i, {"image": buffer.getvalue(), "label": i % 2}

  return InputPipelineBench


def _time_loader(loader, batches: int, batch_size: int, warmup: int = 1) -> float:
  iterator = iter(loader)
  for _ in range(warmup):  # start-up (worker processes, first reads) is not throughput
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
  rate = batches * batch_size / (time.perf_counter() - start)
  assert batch["image"].shape[0] == batch_size
  del iterator  # stops the worker processes now, not at interpreter exit
  return rate


def _time_plain_loop(raw_source, image_size: int, batches: int, batch_size: int) -> float:
  from radimagenet_jax.data import augment
  from radimagenet_jax.data.preprocess import preprocess
  rng = np.random.default_rng(0)
  n = len(raw_source)
  start = time.perf_counter()
  for b in range(batches):
    images = []
    for i in range(batch_size):
      record = raw_source[(b * batch_size + i) % n]
      img = PIL.Image.open(io.BytesIO(record["image"])).convert("RGB")  # keras load_img
      img = img.resize((image_size, image_size), PIL.Image.NEAREST)
      x = augment.random_transform(np.asarray(img, np.float32), "paper", rng)
      images.append(preprocess(x))
    np.stack(images)
  return batches * batch_size / (time.perf_counter() - start)


def _profile_stages(raw_source, image_size: int, augment_name: str, n: int = 200):
  """Milliseconds per image of each step, in this process (where the time goes)."""
  from radimagenet_jax.data import augment, transforms
  from radimagenet_jax.data.preprocess import preprocess
  rng = np.random.default_rng(0)
  config = augment.get_config(augment_name)
  size = (image_size, image_size)
  steps = {
      "read record": lambda i, x: raw_source[i % len(raw_source)]["image"],
      "PNG decode": lambda i, x: transforms.decode_image(x),
      "resize": lambda i, x: transforms.resize(x, size),
      "augment": lambda i, x: augment.random_transform(x, config, rng),
      # What a worker still does per image with augment_on_device (the output is not used on).
      "draw params": lambda i, x: (augment.transform_data(config, x.shape, rng), x)[1],
      "preprocess": lambda i, x: preprocess(x),
  }
  totals = dict.fromkeys(steps, 0.0)
  for i in range(n):
    x = None
    for name, step in steps.items():
      start = time.perf_counter()
      x = step(i, x)
      totals[name] += time.perf_counter() - start
  batch = [x] * 32
  start = time.perf_counter()
  for _ in range(10):
    np.stack(batch)
  totals["batch (np.stack)"] = (time.perf_counter() - start) / 320 * n
  print("per image: " + ", ".join(f"{k} {v / n * 1e3:.3f} ms" for k, v in totals.items()) +
        f"; sum {sum(totals.values()) / n * 1e3:.3f} ms")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_images", type=int, default=512)
  parser.add_argument("--source_size", type=int, default=256)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
  parser.add_argument("--workers", type=int, nargs="*", default=[1, 2],
                      help="grain worker counts to time besides 0 (in-process)")
  parser.add_argument("--augment", default="paper")
  parser.add_argument("--rgb", action="store_true", help="3-channel PNGs instead of grayscale")
  parser.add_argument("--read_threads", type=int, default=None,
                      help="grain ReadOptions.num_threads per process (default: grain's, 16)")
  parser.add_argument("--decode_in_source", action="store_true",
                      help="let TFDS decode the PNGs in grain's reader threads (open_source "
                           "decode=True) instead of in the map")
  parser.add_argument("--profile", action="store_true", help="also time each step separately")
  parser.add_argument("--warp_batch", type=int, default=256,
                      help="batch of the device warp timing (0: skip it)")
  parser.add_argument("--warp_repeats", type=int, default=5, help="device warp timing runs")
  parser.add_argument("--data_dir", default=None, help="reuse a dataset dir (default: temp dir)")
  args = parser.parse_args(argv)

  data_dir = args.data_dir or tempfile.mkdtemp(prefix="rij_input_bench_")
  os.makedirs(data_dir, exist_ok=True)
  try:
    _run(args, data_dir)
  finally:
    if not args.data_dir:
      shutil.rmtree(data_dir, ignore_errors=True)


def _run(args, data_dir):
  from radimagenet_jax.data import pipeline, tfds_source
  start = time.perf_counter()
  cls = _make_builder_class(data_dir, args.num_images, args.source_size, args.rgb)
  builder = cls(data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    builder.download_and_prepare()
  print(f"dataset: {args.num_images} {'RGB' if args.rgb else 'grayscale'} "
        f"{args.source_size}x{args.source_size} PNGs, array_record in {data_dir} "
        f"({time.perf_counter() - start:.1f}s)")
  raw = tfds_source.open_source(cls.name, "train", data_dir, decode=False)
  source = (tfds_source.open_source(cls.name, "train", data_dir, decode=True)
            if args.decode_in_source else raw)
  read_options = None
  if args.read_threads is not None:
    import grain
    read_options = grain.ReadOptions(num_threads=args.read_threads)
  print(f"work per image: read + PNG decode + resize to {args.image_size} (nearest) + augment "
        f"'{args.augment}' + preprocess 'radimagenet'; batch {args.batch_size}; "
        f"{os.cpu_count()} CPUs visible")

  if args.profile:
    _profile_stages(raw, args.image_size, args.augment)

  def loader(workers, split):
    return pipeline.make_loader(source, batch_size=args.batch_size, image_size=args.image_size,
                                augment=args.augment, worker_count=workers, seed=0,
                                read_options=read_options, preprocess_on_device=split != "host",
                                augment_on_device=split == "augment")

  rate = _time_plain_loop(raw, args.image_size, args.batches, args.batch_size)
  print(f"{'plain PIL+numpy loop (1 process)':56s} {rate:8.1f} images/s")
  # Three ways to split the work: everything on the host (float32 RGB batches leave the workers),
  # the preprocessing in the jitted step (augmented float32 pixels leave the workers), or the
  # augmentation's warp and the preprocessing in the step (uint8 pixels + a 2x3 matrix and two
  # flip flags per image leave the workers; the train loop on an accelerator).
  splits = {"host": "preprocess on host", "preprocess": "preprocess in the step",
            "augment": "augment + preprocess in the step"}
  for workers in [0] + [w for w in args.workers if w > 0]:
    for split, where in splits.items():
      if workers == 0:
        rate = _time_loader(loader(0, split), args.batches, args.batch_size)
        print(f"{f'grain, 0 workers, {where}':56s} {rate:8.1f} images/s")
      else:
        rate = _time_loader(loader(workers, split), args.batches * workers, args.batch_size,
                            warmup=2 * workers)
        print(f"{f'grain, {workers} workers, {where}':56s} {rate:8.1f} images/s "
              f"({rate / workers:.1f} per worker)")
  if args.warp_batch:
    _time_device_warp(args.warp_batch, args.image_size, args.warp_repeats)


def _time_device_warp(batch: int, size: int, repeats: int):
  """The step's share of augment_on_device: the jitted warp of one batch on the default backend."""
  import jax
  from radimagenet_jax.data import augment, augment_device
  config = augment.get_config("paper")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8)
  data = [augment.transform_data(config, images.shape[1:], rng) for _ in range(batch)]
  args = jax.device_put((images, np.stack([m for m, _ in data]), np.stack([f for _, f in data])))
  device = jax.devices()[0]
  for name, fn in (("map_coordinates (warp_batch)", augment_device.warp_batch),
                   ("explicit gathers", augment_device.warp_batch_gathers)):
    warp = jax.jit(fn)
    jax.block_until_ready(warp(*args))  # compile
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(warp(*args))
      times.append(time.perf_counter() - start)
    t = float(np.median(times))
    print(f"{f'device warp, {name}':56s} {t * 1e3:8.2f} ms per batch of {batch}x{size}x{size}x1 "
          f"= {t / batch * 1e6:.1f} us/image ({device.platform}: {device.device_kind}; median of "
          f"{repeats})")


if __name__ == "__main__":
  main()
