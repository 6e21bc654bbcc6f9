"""Image properties to slice the evaluation by: brightness, contrast, sharpness and size of each file.

The values are :func:`data_audit.properties.image_properties`' (mean luma, RMS contrast, the
Laplacian's spread, on a copy no longer than 256 px), plus the size as the shorter side of
the file in pixels. They are measured once per sample per run, so their cost must stay small
next to an epoch: JPEGs are decoded at reduced scale (Pillow's ``draft``, the DCT scaled by
1/2 to 1/8, still at least 256 px on the long side, which is all the statistics look at), the
size comes from the header, and files are read by a few threads (Pillow and OpenCV release
the GIL while decoding and filtering). A file that cannot be read gets NaNs: it falls in the
``(missing)`` slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from data_audit.properties import WORK_SIDE, image_properties, working_copy
from datamodules.image_io import to_rgb_array

# property name -> the column it becomes (prefixed: a manifest may have its own "brightness")
PROPERTY_COLUMNS = {
    "brightness": "image_brightness",  # mean luma, 0-255
    "contrast": "image_contrast",  # standard deviation of luma, 0-255 levels
    "sharpness": "image_sharpness",  # standard deviation of the Laplacian of luma
    "size": "image_size_px",  # the shorter side of the file, in pixels
}
EXIF_ORIENTATION = 0x0112
SWAPS_SIDES = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the picture by 90 degrees


def measure(path: str, properties: Sequence[str]) -> list[float]:
    """The ``properties`` of one file, in order; NaNs when it cannot be read."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format == "JPEG":
                image.draft("RGB", (WORK_SIDE, WORK_SIDE))  # the smallest DCT scale still >= 256 px
            orientation = image.getexif().get(EXIF_ORIENTATION)
            image.load()
            rgb = to_rgb_array(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return [float("nan")] * len(properties)
    if orientation in SWAPS_SIDES:
        width, height = height, width
    measured = image_properties(working_copy(rgb)) if set(properties) - {"size"} else {}
    return [float(min(width, height)) if name == "size" else measured[name] for name in properties]


def image_property_table(
    paths: Sequence[str], properties: Sequence[str] = tuple(PROPERTY_COLUMNS), workers: int = 4
) -> pd.DataFrame:
    """One row per path, one column per property (named as in :data:`PROPERTY_COLUMNS`).

    Raises:
        ValueError: an unknown property name.
    """
    unknown = sorted(set(properties) - set(PROPERTY_COLUMNS))
    if unknown:
        raise ValueError(f"unknown image propert(ies) {unknown}; known are {list(PROPERTY_COLUMNS)}")
    columns = [PROPERTY_COLUMNS[name] for name in properties]
    if not properties or not len(paths):
        return pd.DataFrame(np.zeros((len(paths), len(columns))), columns=columns)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        rows = list(pool.map(lambda p: measure(p, properties), paths, chunksize=32))
    return pd.DataFrame(rows, columns=columns)
