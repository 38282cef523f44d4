"""`rsna_ich` dataset: RSNA intracranial hemorrhage CT slices in three windows (see rsna_ich.py)."""
from tfds_builders.rsna_ich.rsna_ich import RsnaIch

__all__ = ["RsnaIch"]
