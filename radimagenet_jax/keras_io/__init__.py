"""Keras HDF5 weight files <-> Flax variables, with h5py only (Keras is never imported).

Formats read (all as written by `model.save` / `model.save_weights`):
  keras2-model     Keras 2 full model (`model_weights` group, `:0` suffixes): the official
                   `RadImageNet-*_notop.h5` files.
  keras2-weights   Keras 2 weights only (`save_weights('x.h5')`): the same groups at the root;
                   Keras's own ImageNet files (`*_notop.h5`) are of this kind.
  keras3-model / keras3-weights
                   the legacy layouts as Keras 3 writes them (no `:0`).
  keras3           Keras 3 `.weights.h5`: `layers/<class name>[_N]/vars/0..n`, a `name` attribute
                   on each `vars` group; also read from inside a Keras 3 `.keras` archive
                   (in place or streamed, never loaded whole; size-capped, h5file.py).

Weights are matched to the model BY ORDER, as Keras does (docs/fidelity.md): the legacy layouts list the
layers in `model.layers` order and the i-th layer that carries weights goes to the i-th weighted
layer of `rij.models.keras_layers(name)`; in `.weights.h5` the group key is the class name plus a
per-class counter (`conv2d_57` is the 58th Conv2D), so the k-th Conv2D of the table takes the k-th
`conv2d*` group. Layer names stored in the file are never used for matching: InceptionV3 and IRV2
names are auto-generated and differ between sessions. Every shape is checked. A backbone stored as
one layer of a fine-tuning model (nested) is read as its own layers (`nested_models`; in
`.weights.h5`, a `layers` group inside the layer's group).

Modules: `h5file` (the HDF5 layouts), `load` (matching by order, loading), `nested_models`,
`save` (variables -> a Keras file), `convert` (`radimagenet-jax convert`), `describe`
(`radimagenet-jax inspect`),
`hub` (weights by name: Keras's ImageNet files downloaded into a cache, the official RadImageNet
files read from it; `weights="imagenet"` / `"radimagenet"` in `rij.models.create`).
"""
from radimagenet_jax.keras_io import hub
from radimagenet_jax.keras_io.convert import convert, weights_info
from radimagenet_jax.keras_io.describe import describe, matching_models
from radimagenet_jax.keras_io.load import load_h5
from radimagenet_jax.keras_io.save import save_h5

__all__ = ["convert", "describe", "hub", "load_h5", "matching_models", "save_h5", "weights_info"]
