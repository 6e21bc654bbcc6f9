"""The data layer: the sample catalogue (sources, scan, edits, splits, folds) and how samples are
served (datasets, transforms, samplers, loaders)."""

from datamodules.catalogue import HELDOUT, PREDICT, Catalogue
from datamodules.datamodule import ImageDataModule, LoaderOptions
from datamodules.sources import DataError, Sample
from datamodules.transforms import Preprocessing

__all__ = [
    "HELDOUT",
    "PREDICT",
    "Catalogue",
    "DataError",
    "ImageDataModule",
    "LoaderOptions",
    "Preprocessing",
    "Sample",
]
