"""What one image looks like, in numbers: the per-image statistics the audit flags and slices on.

:func:`image_properties` is the public, reusable API: it maps a decoded ``H x W x 3`` uint8
RGB array to a flat ``{name: float}`` dict whose names and units are stable, so other tools
(the audit's quality flags, per-slice metrics that bin images by brightness or sharpness)
can rely on them. Every statistic except the size is measured on a *working copy* whose
longer side is at most :data:`WORK_SIDE` pixels, so values are comparable between a 64 px
thumbnail and a 4,000 px phone photo, and cost the same.

Names and units (luma is Rec. 601 ``0.299 R + 0.587 G + 0.114 B`` on 0-255):

==================  ===========================================================================
``width``           image width in pixels (as decoded, after EXIF rotation)
``height``          image height in pixels
``aspect_ratio``    width / height (1 = square, 1.78 = 16:9 landscape, 0.56 = 16:9 portrait)
``brightness``      mean luma, 0-255
``luma_p05``        5th percentile of luma, 0-255 (how dark the darkest parts are)
``luma_p99``        99th percentile of luma, 0-255 (how bright the brightest parts are)
``clipped_white``   fraction of pixels with luma >= 250, 0-1 (blown-out highlights)
``contrast``        RMS contrast: standard deviation of luma, 0-255 levels
``sharpness``       standard deviation of the 3x3 Laplacian of luma on the working copy, in luma
                    levels; high for crisp edges and fine texture, low for blur (and for flat images)
``edge_density``    ``sharpness / contrast`` (unitless): sharpness with the contrast divided out, so a
                    dim but crisp photo still scores high; roughly 0.05 for heavy blur, 0.3-1.5 for photos
``entropy``         Shannon entropy of the 256-bin luma histogram, in bits (0 = one flat colour, 8 max)
``colourfulness``   Hasler & Süsstrunk (2003) colourfulness M on 0-255 RGB (0 gray, ~15 dull, ~60+ vivid)
``chroma``          mean over pixels of ``max(R, G, B) - min(R, G, B)``, 0-255 (about 0 for grayscale,
                    a few levels for a JPEG-compressed grayscale image stored as RGB)
==================  ===========================================================================
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.fft import dctn

# Longer side of the working copy, in pixels. Large enough to keep the edges a blur test
# needs (a 224-px crop of the image would fit inside), small enough that a 24-megapixel
# photo costs about as much as a thumbnail once decoded.
WORK_SIDE = 256

PROPERTY_NAMES = (
    "width",
    "height",
    "aspect_ratio",
    "brightness",
    "luma_p05",
    "luma_p99",
    "clipped_white",
    "contrast",
    "sharpness",
    "edge_density",
    "entropy",
    "colourfulness",
    "chroma",
)

# Side of the luma square the perceptual hash is taken from, and of its kept DCT block:
# the classic pHash (Zauner 2010), 64 bits.
_PHASH_SIDE = 32
_PHASH_BITS_SIDE = 8
_BIT_WEIGHTS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)
# A hash match is confirmed by a thumbnail of the image: 4 x 4 RGB for its colour layout (48
# bytes), then 16 x 16 luma for its structure (256 bytes), 304 bytes per image.
THUMBNAIL_SIDE = 4
COLOUR_VALUES = THUMBNAIL_SIDE * THUMBNAIL_SIDE * 3
STRUCTURE_SIDE = 16
THUMBNAIL_VALUES = COLOUR_VALUES + STRUCTURE_SIDE * STRUCTURE_SIDE


def working_copy(rgb: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """``rgb`` shrunk (area averaging) so its longer side is at most ``side``; smaller images are kept as they are."""
    height, width = rgb.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an RGB uint8 array, as uint8."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def image_properties(rgb: np.ndarray) -> dict[str, float]:
    """Measures one decoded image; see the module docstring for every name and unit.

    Args:
        rgb: ``H x W x 3`` uint8 RGB array, e.g. from :func:`datamodules.image_io.read_rgb`.

    Returns:
        ``{name: value}`` for every name in :data:`PROPERTY_NAMES`, as Python floats.
    """
    return dict(zip(PROPERTY_NAMES, property_values(rgb, working_copy(rgb)), strict=True))


def property_values(rgb: np.ndarray, work: np.ndarray, gray: np.ndarray | None = None) -> list[float]:
    """The values of :data:`PROPERTY_NAMES` in order, from the full image (for its size) and its
    working copy (``gray``: its luma, when the caller has it already)."""
    height, width = rgb.shape[:2]
    gray = luma(work) if gray is None else gray
    histogram = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    total = histogram.sum()
    cumulative = np.cumsum(histogram)
    # Percentiles from the histogram: exact for uint8 data and much cheaper than a sort.
    p05 = float(np.searchsorted(cumulative, 0.05 * total))
    p99 = float(np.searchsorted(cumulative, 0.99 * total))
    clipped_white = float(histogram[250:].sum() / total)
    mean, std = cv2.meanStdDev(gray)
    brightness, contrast = float(mean[0, 0]), float(std[0, 0])
    probabilities = histogram[histogram > 0] / total
    entropy = float(-(probabilities * np.log2(probabilities)).sum())
    if min(gray.shape) >= 3:
        laplacian = cv2.Laplacian(gray, cv2.CV_32F, ksize=1)
        sharpness = float(cv2.meanStdDev(laplacian[1:-1, 1:-1])[1][0, 0])  # border pixels see the padding
    else:
        sharpness = 0.0
    edge_density = sharpness / contrast if contrast > 0 else 0.0
    channels = work.reshape(-1, 3).astype(np.int16)
    red, green, blue = channels[:, 0], channels[:, 1], channels[:, 2]
    rg = red - green
    yb = (red + green) / 2 - blue
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    chroma = float((channels.max(axis=1) - channels.min(axis=1)).mean())
    return [
        float(width),
        float(height),
        width / height,
        brightness,
        p05,
        p99,
        clipped_white,
        contrast,
        sharpness,
        edge_density,
        entropy,
        colourfulness,
        chroma,
    ]


def perceptual_hash(gray: np.ndarray) -> int:
    """64-bit pHash of a luma image: signs of the lowest 8 x 8 DCT frequencies of a 32 x 32 copy against their median.

    Written here rather than taken from ``imagehash`` because the audit already holds the
    small luma array (``imagehash`` wants a PIL image and returns a bool array to pack), and
    the whole algorithm is these few lines. Low frequencies survive re-encoding, resizing and
    brightness or contrast changes, so copies land within a few bits of each other (measured
    in ``tests/test_audit_core.py``); a mirror image or a large crop does not.

    Returns:
        The hash as an unsigned 64-bit integer (bit 63 is the DC term).
    """
    interpolation = cv2.INTER_AREA if min(gray.shape) >= _PHASH_SIDE else cv2.INTER_LINEAR
    small = cv2.resize(gray, (_PHASH_SIDE, _PHASH_SIDE), interpolation=interpolation).astype(np.float32)
    low = dctn(small, type=2)[:_PHASH_BITS_SIDE, :_PHASH_BITS_SIDE].ravel()
    bits = (low > np.median(low)).astype(np.uint64)
    return int((bits * _BIT_WEIGHTS).sum())


def colour_thumbnail(rgb: np.ndarray, gray: np.ndarray | None = None) -> np.ndarray:
    """The image averaged down to 4 x 4 RGB (48 uint8 values: its colour layout), then its luma at
    16 x 16 (256 values: its structure); :data:`THUMBNAIL_VALUES` in all.

    The perceptual hash sees only the sign pattern of low frequencies, so the same shape in other
    colours (a product photographed in each of its colours, a digit in another ink) and, in sets
    of alike images, different pictures (a 1 and a 7 written with one slanted stroke) hash alike;
    the colour and structure parts tell them apart (see
    :func:`data_audit.near_duplicates.colour_difference` and ``structure_correlation``). ``gray``:
    the image's luma, when the caller has it already.
    """
    rgb = np.ascontiguousarray(rgb)
    small = cv2.resize(rgb, (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA)
    gray = luma(rgb) if gray is None else gray
    shrink = cv2.INTER_AREA if min(gray.shape) >= STRUCTURE_SIDE else cv2.INTER_LINEAR
    structure = cv2.resize(gray, (STRUCTURE_SIDE, STRUCTURE_SIDE), interpolation=shrink)
    return np.concatenate([small.reshape(-1), structure.reshape(-1)])
