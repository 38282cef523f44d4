"""Run-time data: preprocessing modes, augmentation, grain pipelines, patient-grouped splits.

`preprocess` is re-exported (`rij.data.preprocess(images, mode='radimagenet')`). The other submodules
are imported on first attribute access, so importing the package does not pull in grain or TFDS:
- `preprocess`: the preprocessing modes (docs/fidelity.md);
- `augment`: Keras ImageDataGenerator-exact augmentation; `augment_device`: the same warp in the
  jitted step; `pipeline`: TFDS source -> grain loader
  (`tfds_source`: opening the TFDS source; `transforms`: the per-record decode, resize, augment);
- `splits`: grouped (patient-level) splits and folds;
- `build/`: build-time only (TF-free TFDS builds, the builders' base class, DICOM/NIfTI readers).
"""
from radimagenet_jax import _lazy
from radimagenet_jax.data.preprocess import MODES as PREPROCESS_MODES
from radimagenet_jax.data.preprocess import preprocess

_SUBMODULES = ("augment", "augment_device", "build", "pipeline", "splits", "tfds_source",
               "transforms")
__getattr__ = _lazy.attach(__name__, _SUBMODULES, {
    "readers": "radimagenet_jax.data.build.readers",
    "tfds_base": "radimagenet_jax.data.build.tfds_base"})

__all__ = ["preprocess", "PREPROCESS_MODES", *_SUBMODULES]
