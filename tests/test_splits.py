"""Patient-grouped splits: no patient crosses sets, sizes close to the fractions, deterministic."""
import numpy as np
import pytest

from radimagenet_jax.data import pipeline
from radimagenet_jax.data import splits


@pytest.fixture(scope="module")
def patients():
  # 400 patients with 1..8 images each (~1800 examples), ids as bytes like TFDS Text features.
  rng = np.random.default_rng(0)
  sizes = rng.integers(1, 9, 400)
  ids = np.repeat([f"patient{i:03d}".encode() for i in range(400)], sizes)
  labels = np.repeat(rng.integers(0, 2, 400), sizes)  # one label per patient
  return ids, labels


def test_group_split_keeps_each_patient_in_one_set_with_close_proportions(patients):
  ids, _ = patients
  names = splits.group_split(ids, seed=0)
  assert names.shape == ids.shape and set(names) == {"train", "validation", "test"}
  for pid in np.unique(ids):
    assert len(set(names[ids == pid])) == 1, pid
  for name, fraction in zip(splits.SPLIT_NAMES, (0.75, 0.10, 0.15)):
    # within one patient's group size (<= 8 images) of the exact share
    assert abs(np.sum(names == name) - fraction * len(ids)) <= 8, name


def test_group_split_is_deterministic_per_seed(patients):
  ids, _ = patients
  np.testing.assert_array_equal(splits.group_split(ids, seed=3), splits.group_split(ids, seed=3))
  assert not np.array_equal(splits.group_split(ids, seed=3), splits.group_split(ids, seed=4))
  # ids as str / bytes give the same split
  np.testing.assert_array_equal(splits.group_split([i.decode() for i in ids], seed=3),
                                splits.group_split(ids, seed=3))


def test_group_split_custom_fractions_and_bad_fractions():
  ids = np.arange(1000) // 2  # 500 patients of 2 images
  names = splits.group_split(ids, fractions=(0.5, 0.5), names=("a", "b"))
  assert np.sum(names == "a") == 500
  with pytest.raises(ValueError, match="sum to 1"):
    splits.group_split(ids, fractions=(0.7, 0.1, 0.1))
  with pytest.raises(ValueError, match="2 fractions"):
    splits.group_split(ids, fractions=(0.5, 0.5))


def test_group_kfold_is_grouped_stratified_and_covers_every_example(patients):
  ids, labels = patients
  folds = splits.group_kfold(ids, labels, k=5, seed=0)
  assert folds.shape == ids.shape and set(folds) == set(range(5))
  for pid in np.unique(ids):
    assert len(set(folds[ids == pid])) == 1, pid
  overall = labels.mean()
  for f in range(5):
    held_out = folds == f
    assert abs(held_out.sum() - len(ids) / 5) < 0.05 * len(ids)
    assert abs(labels[held_out].mean() - overall) < 0.05
  np.testing.assert_array_equal(folds, splits.group_kfold(ids, labels, k=5, seed=0))
  with pytest.raises(ValueError, match="k=1 folds"):
    splits.group_kfold(ids, labels, k=1)


def test_subset_of_a_source_feeds_the_loader():
  records = [{"image": np.full((4, 4, 1), i, np.uint8), "label": i, "patient_id": f"p{i // 3}"}
             for i in range(30)]
  ids = splits.read_key(records, "patient_id")
  names = splits.group_split(ids, seed=1)
  test = splits.Subset(records, np.flatnonzero(names == "test"))
  loader = pipeline.make_loader(test, batch_size=1, image_size=4, num_epochs=1,
                                preprocess_mode="unit", drop_remainder=False)
  seen = sorted(int(b["label"][0]) for b in loader)
  assert seen == sorted(np.flatnonzero(names == "test").tolist())
  with pytest.raises(KeyError, match="'pid'"):
    splits.read_key(records, "pid")
