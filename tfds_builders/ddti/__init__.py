"""`ddti` dataset: DDTI thyroid ultrasound, TI-RADS labels and nodule masks (see ddti.py)."""
from tfds_builders.ddti.ddti import Ddti

__all__ = ["Ddti"]
