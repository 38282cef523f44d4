"""rij.load: a checkpoint folder or a Keras file -> (model, variables, info), ready to apply."""
import jax
import numpy as np
import pytest

import radimagenet_jax as rij
from radimagenet_jax import checkpoints
from radimagenet_jax.data import transforms

CLASSES = ["benign", "malignant", "normal"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A 3-class ResNet50 as a fine-tuning run's `best` would hold it, and as a Keras notop file."""
  d = tmp_path_factory.mktemp("load")
  model, variables = rij.models.create("resnet50", num_classes=3, rng=jax.random.key(7))
  checkpoints.save_variables(d / "best", variables, model_name="resnet50", num_classes=3,
                             step=12, extra_metadata={"class_names": CLASSES, "image_size": 40,
                                                      "preprocess": "caffe"})
  rij.keras_io.save_h5(variables, "resnet50", d / "RadImageNet-ResNet50_notop.h5",
                       format="legacy")
  return model, variables, d


def test_a_checkpoint_loads_with_its_classes_size_and_preprocessing(saved):
  model, variables, d = saved
  loaded, loaded_vars, info = rij.load(d / "best")
  assert (info.model_name, info.num_classes, info.image_size, info.preprocess_mode, info.kind) == (
      "resnet50", 3, 40, "caffe", "checkpoint")
  assert list(info.class_names) == CLASSES and info.label(2) == "normal"
  images = np.random.default_rng(0).integers(0, 256, (2, 57, 31), dtype=np.uint8)  # gray, other size
  x = info.preprocess(images)
  # Oracle: the training pipeline's resize, then preprocess with the recorded mode.
  expected = np.stack([transforms.resize(im[..., None], (40, 40)) for im in images])
  np.testing.assert_array_equal(x, rij.data.preprocess(np.repeat(expected, 3, -1), mode="caffe"))
  np.testing.assert_allclose(loaded.apply(loaded_vars, x, train=False),
                             model.apply(variables, x, train=False), rtol=1e-5, atol=1e-5)
  one = info.preprocess(images[0])  # a single (H, W) image is a batch of one
  np.testing.assert_array_equal(one, x[:1])


def test_a_keras_notop_file_loads_as_a_features_model(saved):
  model, variables, d = saved
  loaded, loaded_vars, info = rij.load(d / "RadImageNet-ResNet50_notop.h5")
  assert (info.num_classes, info.class_names, info.preprocess_mode, info.kind) == (
      0, None, "radimagenet", "keras")
  x = info.preprocess(np.full((1, 32, 32, 3), 128, np.uint8))
  features = loaded.apply(loaded_vars, x, train=False)
  backbone = rij.models.create("resnet50", num_classes=0)[0]
  expected = backbone.apply({k: {n: v for n, v in variables[k].items() if n != "predictions"}
                             for k in ("params", "batch_stats")}, x, train=False)
  assert features.shape == (1, 2048)
  np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


def test_a_missing_path_is_a_one_line_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nope: no such file or folder; expected a run's "
                     r"checkpoint folder"):
    rij.load(tmp_path / "nope")
