"""Weights carry their metadata: `keras_io.weights_info` of Keras files and checkpoints, what
`convert` records and prints, `models.create(load_head=...)` keeping or dropping a classifier."""
import os

import jax
import numpy as np
import pytest

import radimagenet_jax as rij
from radimagenet_jax import checkpoints, cli, keras_io


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """A ResNet50 with a 3-class head, saved as Keras files named as users find them."""
  d = tmp_path_factory.mktemp("weights")
  model, variables = rij.models.create("resnet50", num_classes=3, rng=jax.random.key(3))
  paths = {"notop": d / "RadImageNet-ResNet50_notop.h5", "top": d / "RadImageNet-ResNet50_top.h5",
           "imagenet": d / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
           "plain": d / "my_weights.h5"}
  for key, path in paths.items():
    rij.keras_io.save_h5(variables, "resnet50", path, format="legacy",
                         include_head=key == "top")
  return model, variables, {k: str(p) for k, p in paths.items()}


def test_preprocess_from_the_file_name():
  names = {"resnet50": "caffe", "densenet121": "imagenet", "inception_v3": "tf",
           "inception_resnet_v2": "tf"}
  for model, mode in names.items():
    assert checkpoints.preprocess_for_file(
        f"/x/{model}_weights_tf_dim_ordering_tf_kernels_notop.h5", model)[0] == mode
    assert checkpoints.preprocess_for_file("RadImageNet-IRV2_notop.h5", model)[0] == "radimagenet"
  assert checkpoints.preprocess_for_file("imagenet_densenet.h5", "densenet121")[0] == "imagenet"
  assert checkpoints.preprocess_for_file("my_weights.h5", "resnet50") == (None, "unknown")


def test_weights_info_of_keras_files(files):
  _, _, paths = files
  info = keras_io.weights_info(paths["notop"])
  assert {k: info[k] for k in ("kind", "model_name", "num_classes", "image_size", "preprocess",
                               "class_names", "source_file")} == {
      "kind": "keras", "model_name": "resnet50", "num_classes": 0, "image_size": 224,
      "preprocess": "radimagenet", "class_names": None, "source_file": paths["notop"]}
  assert keras_io.weights_info(paths["top"], "resnet50")["num_classes"] == 3
  assert keras_io.weights_info(paths["imagenet"])["preprocess"] == "caffe"
  assert keras_io.weights_info(paths["plain"])["preprocess"] is None
  with pytest.raises(ValueError, match="does not match densenet121"):
    keras_io.weights_info(paths["notop"], "densenet121")
  with pytest.raises(FileNotFoundError, match="nope.h5: no such file or directory"):
    keras_io.weights_info(os.path.dirname(paths["notop"]) + "/nope.h5")


def test_convert_records_metadata_and_says_what_it_wrote(files, tmp_path, capsys):
  _, variables, paths = files
  out = tmp_path / "r50"
  assert cli.main(["convert", "--h5", paths["notop"], "--workdir", str(out)]) == 0  # model found
  n = sum(np.size(a) for k, a in jax.tree_util.tree_flatten_with_path(variables)[0]
          if "predictions" not in jax.tree_util.keystr(k))
  assert n == 23_587_712                                  # Keras's count, BatchNorm statistics in
  said = capsys.readouterr().out
  assert said == f"wrote {out} (resnet50, preprocess radimagenet, {n:,} parameters)\n"
  info = keras_io.weights_info(out)
  assert {k: info[k] for k in ("kind", "model_name", "num_classes", "image_size", "preprocess",
                               "preprocess_origin", "source_file", "num_parameters")} == {
      "kind": "checkpoint", "model_name": "resnet50", "num_classes": 0, "image_size": 224,
      "preprocess": "radimagenet", "preprocess_origin": "file name (RadImageNet weights)",
      "source_file": paths["notop"], "num_parameters": n}
  # An explicit mode and size win; a file's classifier is kept with its class names.
  top = tmp_path / "top"
  assert cli.main(["convert", "--model", "resnet50", "--h5", paths["top"], "--workdir", str(top),
                   "--preprocess", "unit", "--image_size", "64", "--class_names", "a, b,c"]) == 0
  assert "(resnet50, 3-class head, preprocess unit," in capsys.readouterr().out
  info = keras_io.weights_info(top)
  assert (info["num_classes"], info["class_names"], info["preprocess"], info["image_size"],
          info["preprocess_origin"]) == (3, ["a", "b", "c"], "unit", 64, "given")
  # Errors come before anything is written: too many names, an unknown mode.
  assert cli.main(["convert", "--h5", paths["top"], "--workdir", str(tmp_path / "bad"),
                   "--class_names", "a,b"]) == 1
  assert "2 class names given, but the weights' classifier has 3 classes" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["convert", "--h5", paths["top"], "--workdir", str(tmp_path / "bad"),
              "--preprocess", "torch"])
  assert not (tmp_path / "bad").exists()
  # A file whose name says nothing: recorded as the default, with a warning.
  plain = rij.keras_io.convert(paths["plain"], "resnet50", tmp_path / "plain")
  assert keras_io.weights_info(plain)["preprocess_origin"] == "default"


def test_create_load_head_keeps_or_drops_the_files_classifier(files, tmp_path):
  model, variables, paths = files
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  want = model.apply(variables, x)
  m, v = rij.models.create("resnet50", num_classes=3, weights=paths["top"], load_head=True)
  np.testing.assert_allclose(m.apply(v, x), want, atol=1e-5)
  with pytest.raises(ValueError, match=r"classifier has 3 classes, num_classes=2 was requested; "
                     r"pass num_classes=3, or load_head=False"):
    rij.models.create("resnet50", num_classes=2, weights=paths["top"], load_head=True)
  with pytest.raises(ValueError, match="load_head=True but the file has no classifier"):
    rij.models.create("resnet50", num_classes=3, weights=paths["notop"], load_head=True)
  # Default: a Keras file's head is skipped (random), a checkpoint's is loaded.
  _, v = rij.models.create("resnet50", num_classes=3, weights=paths["top"])
  assert not np.allclose(v["params"]["predictions"]["kernel"],
                         variables["params"]["predictions"]["kernel"])
  ckpt = rij.keras_io.convert(paths["top"], "resnet50", tmp_path / "ckpt")
  _, v = rij.models.create("resnet50", num_classes=3, weights=ckpt)
  np.testing.assert_array_equal(v["params"]["predictions"]["kernel"],
                                variables["params"]["predictions"]["kernel"])
  with pytest.raises(ValueError, match=r"ckpt: the weights' classifier has 3 classes, "
                     r"num_classes=2"):
    rij.models.create("resnet50", num_classes=2, weights=ckpt)
  _, v = rij.models.create("resnet50", num_classes=2, weights=ckpt, load_head=False)
  assert v["params"]["predictions"]["kernel"].shape == (2048, 2)
  with pytest.raises(ValueError, match="load_head=True with num_classes=0"):
    rij.models.create("resnet50", num_classes=0, weights=ckpt, load_head=True)
