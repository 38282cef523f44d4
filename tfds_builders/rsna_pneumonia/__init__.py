"""`rsna_pneumonia` dataset: RSNA Pneumonia Detection radiographs with box masks."""
from tfds_builders.rsna_pneumonia.rsna_pneumonia import RsnaPneumonia

__all__ = ["RsnaPneumonia"]
