"""`image_folder` dataset: the user's own PNG / JPEG / DICOM / NIfTI images."""
from tfds_builders.image_folder.image_folder import ImageFolder, ImageFolderConfig, WINDOWS

__all__ = ["ImageFolder", "ImageFolderConfig", "WINDOWS"]
