"""`busi` dataset: BUSI breast ultrasound with lesion masks (see busi.py)."""
from tfds_builders.busi.busi import Busi

__all__ = ["Busi"]
