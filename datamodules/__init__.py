"""The data layer: the sample catalogue (sources, scan, edits, splits, folds) and how samples are
served (datasets, transforms, samplers, loaders).

The serving half imports Lightning and torch; it is loaded on first use, so that commands that
only need the catalogue (the data audit) start in a fraction of a second.
"""

from datamodules.catalogue import HELDOUT, PREDICT, Catalogue
from datamodules.sources import DataError, Sample

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


def __getattr__(name: str):
    if name in ("ImageDataModule", "LoaderOptions"):
        from datamodules import datamodule

        return getattr(datamodule, name)
    if name == "Preprocessing":
        from datamodules.transforms import Preprocessing

        return Preprocessing
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
