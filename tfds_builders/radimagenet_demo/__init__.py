"""radimagenet_demo TFDS builder: `radimagenet-jax build radimagenet_demo/pretrain` (or /lesion)."""
from tfds_builders.radimagenet_demo.radimagenet_demo import RadimagenetDemo

__all__ = ["RadimagenetDemo"]
