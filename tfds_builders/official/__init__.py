"""`official` dataset: the official RadImageNet repository's images and folds (see official.py)."""
from tfds_builders.official.official import Official

__all__ = ["Official"]
