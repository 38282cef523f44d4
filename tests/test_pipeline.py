"""grain pipeline: values against closed forms, determinism, exact resume, workers, TFDS source."""
import io

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from radimagenet_jax.data import augment as aug
from radimagenet_jax.data import pipeline, tfds_source
from radimagenet_jax.data.preprocess import preprocess

N = 12


def _png(array):
  buffer = io.BytesIO()
  PIL.Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _records(n=N, size=8, encoded=False):
  """Records shaped like tfds.data_source output: uint8 (H, W, 1) image/mask, int label, bytes id."""
  rng = np.random.default_rng(0)
  records = []
  for i in range(n):
    image = rng.integers(0, 256, (size, size, 1), dtype=np.uint8)
    mask = (rng.random((size, size, 1)) < 0.3).astype(np.uint8)
    if encoded:
      image, mask = _png(image[..., 0]), _png(mask[..., 0])
    records.append({"image": image, "mask": mask, "label": i % 3,
                    "patient_id": f"p{i // 2}".encode()})
  return records


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


@pytest.fixture(scope="module")
def records():
  return _records()


def test_unshuffled_batches_are_nearest_upsampled_and_preprocessed(records):
  loader = pipeline.make_loader(records, batch_size=4, image_size=16, shuffle=False, num_epochs=1,
                                extra_keys=("mask", "patient_id"))
  batches = list(loader)
  assert len(batches) == N // 4
  batch = batches[0]
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (4, 16, 16, 3)
  assert batch["label"].dtype == np.int32 and batch["label"].tolist() == [0, 1, 2, 0]
  assert batch["patient_id"].tolist() == [b"p0", b"p0", b"p1", b"p1"]
  for i in range(4):
    # PIL NEAREST upsampling by an integer factor repeats each pixel (Keras load_img behaviour).
    up = np.repeat(np.repeat(records[i]["image"], 2, 0), 2, 1)
    expected = (np.repeat(up, 3, -1)[..., ::-1] - [103.939, 116.779, 123.68]) / 255.0
    np.testing.assert_allclose(batch["image"][i], expected, atol=1e-6)
    np.testing.assert_array_equal(batch["mask"][i],
                                  np.repeat(np.repeat(records[i]["mask"], 2, 0), 2, 1))


def test_encoded_records_give_the_same_batches(records):
  kwargs = dict(batch_size=4, image_size=(12, 10), augment="paper", seed=3, num_epochs=1,
                extra_keys=("mask",), preprocess_mode="imagenet")
  _assert_batches_equal(list(pipeline.make_loader(records, **kwargs)),
                        list(pipeline.make_loader(_records(encoded=True), **kwargs)))


def test_bilinear_resize_matches_pil(records):
  loader = pipeline.make_loader(records, batch_size=2, image_size=5, shuffle=False,
                                resize="bilinear", preprocess_mode="unit", num_epochs=1)
  batch = next(iter(loader))
  pil = PIL.Image.fromarray(records[1]["image"][..., 0]).resize((5, 5), PIL.Image.BILINEAR)
  np.testing.assert_allclose(batch["image"][1, ..., 0], np.asarray(pil) / 255.0, atol=1e-7)


def test_one_epoch_visits_every_record_once_in_shuffled_order(records):
  loader = pipeline.make_loader(records, batch_size=5, image_size=8, seed=1, num_epochs=1,
                                drop_remainder=False, preprocess_mode="unit",
                                extra_keys=("patient_id",))
  batches = list(loader)
  assert [len(b["label"]) for b in batches] == [5, 5, 2]
  seen = [bytes(p) for b in batches for p in b["patient_id"]]
  assert sorted(seen) == sorted(r["patient_id"] for r in records)
  assert seen != [r["patient_id"] for r in records]


def test_augmentation_is_seeded_and_moves_mask_with_image():
  # Image = 255 * mask and an order-0 (nearest) augmentation: both must stay equal pixel for pixel.
  records = _records(size=16)
  for r in records:
    r["image"] = r["mask"] * 255
  config = dict(aug.PRESETS["paper"].__dict__, interpolation_order=0)
  kwargs = dict(batch_size=4, image_size=16, augment=config, preprocess_mode="unit",
                extra_keys=("mask",), num_epochs=1, seed=5)
  batches = list(pipeline.make_loader(records, **kwargs))
  for batch in batches:
    np.testing.assert_array_equal(batch["image"][..., :1], batch["mask"].astype(np.float32))
  _assert_batches_equal(batches, list(pipeline.make_loader(records, **kwargs)))
  plain = list(pipeline.make_loader(records, **dict(kwargs, augment="none")))
  assert any(not np.array_equal(a["mask"], b["mask"]) for a, b in zip(batches, plain))


def test_state_restores_exact_next_batches(records):
  kwargs = dict(batch_size=3, image_size=8, augment="paper", seed=7, extra_keys=("mask",))
  it = iter(pipeline.make_loader(records, **kwargs))
  _take(it, 5)  # past one epoch: the state must include the epoch position
  state = it.get_state()
  expected = _take(it, 4)
  fresh = iter(pipeline.make_loader(records, **kwargs))
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 4), expected)


def test_worker_processes_give_the_same_batches_and_state(records):
  kwargs = dict(batch_size=3, image_size=8, augment="paper_noflip", seed=2, num_epochs=2)
  expected = list(pipeline.make_loader(records, **kwargs))
  it = iter(pipeline.make_loader(records, worker_count=1, **kwargs))
  first = _take(it, 3)
  state = it.get_state()
  rest = list(it)
  _assert_batches_equal(first + rest, expected)
  resumed = iter(pipeline.make_loader(records, worker_count=1, **kwargs))
  resumed.set_state(state)
  _assert_batches_equal(list(resumed), rest)


def test_iterator_state_round_trips_through_an_orbax_checkpoint(tmp_path, records):
  import orbax.checkpoint as ocp
  kwargs = dict(batch_size=4, image_size=8, augment="paper", seed=11)
  it = iter(pipeline.make_loader(records, **kwargs))
  _take(it, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt", item_handlers={
      "state": ocp.StandardCheckpointHandler(), "data": pipeline.checkpoint_handler()}) as mngr:
    mngr.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": np.arange(3.0)}),
                                         data=pipeline.save_args(it)))
    mngr.wait_until_finished()
  expected = _take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt", item_handlers={
      "state": ocp.StandardCheckpointHandler(), "data": pipeline.checkpoint_handler()}) as mngr:
    fresh = iter(pipeline.make_loader(records, **kwargs))
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore({"w": np.zeros(3)}), data=pipeline.restore_args(fresh)))
  np.testing.assert_array_equal(restored["state"]["w"], np.arange(3.0))
  _assert_batches_equal(_take(restored["data"], 3), expected)


def test_bad_options_are_named(records):
  with pytest.raises(ValueError, match="unknown preprocessing mode 'torch'.*radimagenet"):
    pipeline.make_loader(records, batch_size=2, image_size=8, preprocess_mode="torch")
  with pytest.raises(ValueError, match="unknown resize method 'cubic'.*nearest.*bilinear"):
    pipeline.make_loader(records, batch_size=2, image_size=8, resize="cubic")
  with pytest.raises(ValueError, match="unknown augmentation preset 'flip'"):
    pipeline.make_loader(records, batch_size=2, image_size=8, augment="flip")


class PipelineTinyDs(tfds.core.GeneratorBasedBuilder):
  """A 6-example grayscale dataset with masks, built TF-free to array_record in the test."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 1)),
        "mask": tfds.features.Image(shape=(None, None, 1)),
        "label": tfds.features.ClassLabel(names=["absent", "present"]),
        "patient_id": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, r in enumerate(_records(n=6, encoded=True)):
      yield i, dict(r, label=i % 2, patient_id=f"r{i}")


def test_open_source_reads_a_built_tfds_dataset(tmp_path):
  with pytest.raises(FileNotFoundError, match="pipeline_tiny_ds.*not built.*radimagenet-jax build"):
    tfds_source.open_source("pipeline_tiny_ds", "train", tmp_path)
  assert not list(tmp_path.iterdir())  # opening built nothing
  PipelineTinyDs(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  source = tfds_source.open_source("pipeline_tiny_ds", "train", tmp_path)
  assert len(source) == 6
  record = source[0]
  assert record["image"].dtype == np.uint8 and record["image"].shape == (8, 8, 1)
  assert isinstance(record["label"], int) and isinstance(record["patient_id"], bytes)
  raw = tfds_source.open_source("pipeline_tiny_ds", "train", tmp_path, decode=False)
  assert isinstance(raw[0]["image"], bytes)
  kwargs = dict(batch_size=2, image_size=8, augment="paper", num_epochs=1, extra_keys=("mask",))
  decoded = list(pipeline.make_loader(source, **kwargs))
  _assert_batches_equal(decoded, list(pipeline.make_loader(raw, **kwargs)))
  plain = next(iter(pipeline.make_loader(source, **dict(kwargs, augment="none",
                                                         extra_keys=("patient_id",)))))
  originals = _records(n=6)
  for image, record_id in zip(plain["image"], plain["patient_id"]):
    expected = preprocess(originals[int(record_id[1:])]["image"])
    np.testing.assert_array_equal(image, expected)
  with pytest.raises(ValueError, match="bad split 'test'.*train"):
    tfds_source.open_source("pipeline_tiny_ds", "test", tmp_path)


def test_demo_lesion_data_through_the_loader(demo_data_dir):
  source = tfds_source.open_source("radimagenet_demo/lesion", "validation", demo_data_dir)
  kwargs = dict(batch_size=4, image_size=64, shuffle=False, num_epochs=1,
                extra_keys=("mask", "source_id"))
  batch = next(iter(pipeline.make_loader(source, **kwargs)))
  assert batch["image"].shape == (4, 64, 64, 3) and batch["mask"].shape == (4, 64, 64, 1)
  for i in range(4):  # unshuffled, one process: record i
    record = source[i]
    assert batch["source_id"][i] == record["source_id"]
    small = PIL.Image.fromarray(record["image"][..., 0]).resize((64, 64), PIL.Image.NEAREST)
    np.testing.assert_allclose(batch["image"][i], preprocess(np.asarray(small)), atol=1e-6)
    mask = PIL.Image.fromarray(record["mask"][..., 0]).resize((64, 64), PIL.Image.NEAREST)
    np.testing.assert_array_equal(batch["mask"][i, ..., 0], np.asarray(mask))
  # Augmented masks are warped with nearest neighbour: no new (interpolated) values appear.
  augmented = list(pipeline.make_loader(source, **dict(kwargs, augment="paper")))
  assert len(augmented) == len(source) // 4
  values = np.unique(np.concatenate([b["mask"].ravel() for b in augmented]))
  source_values = np.unique(np.concatenate([source[i]["mask"].ravel() for i in range(len(source))]))
  assert len(source_values) == 2 and set(values.tolist()) == set(source_values.tolist())


@pytest.mark.parametrize("augment", ["none", "paper"])
@pytest.mark.parametrize("rgb", [False, True])
def test_preprocess_on_device_ships_pixels_that_preprocess_to_the_host_batches(augment, rgb):
  import jax
  records = _records()
  if rgb:
    records = [dict(r, image=np.repeat(r["image"], 3, -1) // np.array([1, 2, 3], np.uint8))
               for r in records]
  kwargs = dict(batch_size=4, image_size=12, seed=5, num_epochs=1, augment=augment,
                preprocess_mode="radimagenet")
  host = list(pipeline.make_loader(records, **kwargs))
  pixels = list(pipeline.make_loader(records, preprocess_on_device=True, **kwargs))
  for h, p in zip(host, pixels, strict=True):
    # Grayscale crosses as one channel; uint8 unless augmented (the Keras warp is float).
    assert p["image"].shape == (4, 12, 12, 3 if rgb else 1)
    assert p["image"].dtype == (np.uint8 if augment == "none" else np.float32)
    np.testing.assert_array_equal(p["label"], h["label"])
    on_device = jax.jit(lambda x: preprocess(x, "radimagenet"))(p["image"])
    np.testing.assert_allclose(np.asarray(on_device), h["image"], rtol=0, atol=1e-6)


def test_open_source_builds_on_request_and_reads_the_class_names(tmp_path):
  with pytest.raises(FileNotFoundError, match="radimagenet-jax build"):
    tfds_source.open_source("radimagenet_demo/lesion", "test", tmp_path)
  source = tfds_source.open_source("radimagenet_demo/lesion", "test", tmp_path, build=True)
  assert len(source) == 90   # the documented test split
  builder = tfds.builder("radimagenet_demo/lesion", data_dir=str(tmp_path))
  assert tfds_source.class_names(source) == builder.info.features["label"].names
  assert len(tfds_source.class_names(source)) == 2
