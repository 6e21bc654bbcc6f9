"""Where samples come from, how they are read safely, split, edited and augmented."""

from datamodules.datamodule import HELDOUT, ImageDataModule
from datamodules.sources import DataError, Sample

__all__ = ["HELDOUT", "DataError", "ImageDataModule", "Sample"]
