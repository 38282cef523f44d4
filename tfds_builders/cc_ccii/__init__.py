"""`cc_ccii` dataset: CC-CCII SARS-CoV-2 chest CT slices, NCP / CP / Normal (see cc_ccii.py)."""
from tfds_builders.cc_ccii.cc_ccii import CcCcii

__all__ = ["CcCcii"]
