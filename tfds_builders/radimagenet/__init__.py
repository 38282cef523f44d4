"""`radimagenet` dataset: the RadImageNet release, 165 classes (see radimagenet.py)."""
from tfds_builders.radimagenet.radimagenet import Radimagenet, RadImageNetConfig, class_from_path

__all__ = ["Radimagenet", "RadImageNetConfig", "class_from_path"]
