"""`mrnet` dataset: Stanford MRNet knee MRI slices, ACL / meniscus / abnormal (see mrnet.py)."""
from tfds_builders.mrnet.mrnet import Mrnet

__all__ = ["Mrnet"]
