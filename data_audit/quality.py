"""Image-quality outliers: which images are too dark, too bright, blurry, tiny, blank, oddly shaped or gray.

Each flag compares one or two :mod:`data_audit.properties` values with a threshold. The
defaults were set on real photos (the ``skimage`` and ``sklearn`` sample photos and 96-160 px
crops of them) and on the same photos degraded on purpose, so that at most about 1% of the
clean photos are flagged while the degraded ones are; ``tests/test_audit_core.py`` checks
both. Three flags are relative to the data set, because what is "tiny", "blurry" or "gray"
depends on it: 28 px digits are all small, soft-edged and gray, and none of them is an outlier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

FLAGS = ("dark", "bright", "blurry", "tiny", "low_information", "odd_aspect_ratio", "grayscale")
"""Quality flags, in report order. Each has a boolean column ``<flag>`` and a ``<flag>_score`` column."""

SCORE_MEANING = {
    "dark": "luma_p99: 99th percentile of luma, 0-255 (low = dark)",
    "bright": "luma_p05: 5th percentile of luma, 0-255 (high = washed out)",
    "blurry": "sharpness: std of the Laplacian of luma at <= 256 px, luma levels (low = blurry)",
    "tiny": "shorter side in pixels",
    "low_information": "contrast: std of luma, 0-255 (low = flat)",
    "odd_aspect_ratio": "longer side / shorter side",
    "grayscale": "chroma: mean max(R,G,B) - min(R,G,B), 0-255 (0 = gray)",
}


@dataclass(frozen=True)
class QualityThresholds:
    """When an image is flagged; every unit is that of :mod:`data_audit.properties`.

    Attributes:
        dark_luma_p99: dark when even the brightest 1% of pixels have luma below this (0-255).
            Of 145 photo crops one measured 99 (a dark tower on deep blue sky), the rest >= 136
            (2nd percentile); the same crops at 30% brightness <= 76. A percentile, not the
            mean, so night scenes with lights and white digits on black are not dark.
        bright_luma_p05: bright (washed out) when even the darkest 5% of pixels have luma above
            this (0-255). Photos blended 65% with white measured >= 166; of 145 clean photo
            crops one measured above 160 (a close-up of a white space suit).
        bright_clipped_white: ... or when at least this fraction of pixels is blown out
            (luma >= 250): over-exposure keeps some dark pixels but clips the rest.
        blurry_min_sharpness: blurry below this sharpness (luma levels) whatever the data set:
            photos blurred with a Gaussian of sigma >= 2 px measured <= 4.8, clean crops >= 7.7.
        blurry_relative: ... or below this fraction of the data set's median sharpness, so that
            a set of crisp photos also flags the softer blurs.
        blurry_max_edge_density: and only when sharpness / contrast is below this: a dim but
            crisp image has little Laplacian energy yet a high ratio, and is not blurry.
        tiny_min_side: tiny when the shorter side is below this many pixels, whatever the set.
        tiny_relative: ... or below this fraction of the data set's median shorter side,
        tiny_relative_cap: ... capped here (px), so a set of 4,000 px photos does not call
            1,000 px images tiny.
        low_information_contrast: blank or nearly when the luma standard deviation is below
            this (0-255): a flat colour with sensor noise measures 2-3, clean photos >= 23.
        low_information_entropy: ... or when the luma histogram holds less than this many bits
            (one flat colour with a small mark on it).
        odd_aspect_ratio: flagged when the longer side exceeds this multiple of the shorter
            (2.5 is wider than 21:9 cinema frames; CleanVision's default is 2.86).
        grayscale_chroma: an image is gray when its mean chroma is below this (0-255); JPEG
            colour noise on a gray image stays below 2.
        grayscale_max_share: gray images are flagged only when at most this share of the set
            is gray ("a grayscale image in a colour set"); a gray data set has no such outlier.
    """

    dark_luma_p99: float = 90.0
    bright_luma_p05: float = 160.0
    bright_clipped_white: float = 0.5
    blurry_min_sharpness: float = 6.0
    blurry_relative: float = 0.25
    blurry_max_edge_density: float = 0.25
    tiny_min_side: float = 16.0
    tiny_relative: float = 0.35
    tiny_relative_cap: float = 64.0
    low_information_contrast: float = 5.0
    low_information_entropy: float = 0.3
    odd_aspect_ratio: float = 2.5
    grayscale_chroma: float = 2.0
    grayscale_max_share: float = 0.1

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def quality_flags(properties: pd.DataFrame, thresholds: QualityThresholds | None = None) -> pd.DataFrame:
    """Flags every image of ``properties`` (one row per readable image, the property columns).

    Args:
        properties: columns named as :data:`data_audit.properties.PROPERTY_NAMES`; the rows are
            the data set the relative thresholds are taken from.
        thresholds: default :class:`QualityThresholds`.

    Returns:
        A frame with the same index, a ``<flag>`` bool and a ``<flag>_score`` float column for
        every flag in :data:`FLAGS` (the score is the measured value the flag compares, see
        :data:`SCORE_MEANING`), and ``flags``: the names of the raised flags joined by ``|``.
    """
    t = thresholds or QualityThresholds()
    p = properties
    out = pd.DataFrame(index=p.index)
    if p.empty:
        for name in FLAGS:
            out[name] = pd.Series(dtype=bool)
            out[f"{name}_score"] = pd.Series(dtype=float)
        out["flags"] = pd.Series(dtype=str)
        return out
    short = np.minimum(p["width"], p["height"])
    long = np.maximum(p["width"], p["height"])
    low_information = (p["contrast"] < t.low_information_contrast) | (p["entropy"] < t.low_information_entropy)
    limits = relative_limits(p, t)
    blur_limit, tiny_limit = limits["blurry_sharpness_below"], limits["tiny_side_below_px"]
    gray = p["chroma"] < t.grayscale_chroma
    colour_set = limits["grayscale_share"] <= t.grayscale_max_share
    scored = {
        "dark": (p["luma_p99"] < t.dark_luma_p99, p["luma_p99"]),
        "bright": (
            (p["luma_p05"] > t.bright_luma_p05) | (p["clipped_white"] >= t.bright_clipped_white),
            p["luma_p05"],
        ),
        # A flat image has no edges to be sharp; it is reported as low-information instead.
        "blurry": (
            (p["sharpness"] < blur_limit) & (p["edge_density"] < t.blurry_max_edge_density) & ~low_information,
            p["sharpness"],
        ),
        "tiny": (short < tiny_limit, short),
        "low_information": (low_information, p["contrast"]),
        "odd_aspect_ratio": (long / short > t.odd_aspect_ratio, long / short),
        "grayscale": (gray & colour_set, p["chroma"]),
    }
    for name, (flag, score) in scored.items():
        out[name] = flag.to_numpy(dtype=bool)
        out[f"{name}_score"] = score.to_numpy(dtype=float)
    flagged = out[list(FLAGS)]
    out["flags"] = ["|".join(n for n, on in zip(FLAGS, row, strict=True) if on) for row in flagged.to_numpy()]
    return out


def relative_limits(properties: pd.DataFrame, thresholds: QualityThresholds | None = None) -> dict[str, float]:
    """The data-set-dependent limits :func:`quality_flags` used (for the report): blur and tiny limits, gray share."""
    t = thresholds or QualityThresholds()
    if properties.empty:
        return {}
    short = np.minimum(properties["width"], properties["height"])
    return {
        "blurry_sharpness_below": max(
            t.blurry_min_sharpness, t.blurry_relative * float(properties["sharpness"].median())
        ),
        "tiny_side_below_px": max(t.tiny_min_side, min(t.tiny_relative * float(short.median()), t.tiny_relative_cap)),
        "grayscale_share": float((properties["chroma"] < t.grayscale_chroma).mean()),
    }
