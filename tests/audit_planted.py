"""A small image data set with known problems, made from real photos that ship in packages.

Distinct images are non-overlapping crops of the ``skimage`` and ``sklearn`` sample photos
(class = the photo they come from). Planted on top, each with its ground truth:

- exact duplicates: the same pixels saved again as a differently compressed PNG or as BMP;
- near duplicates: JPEG quality 60, resized by -20% / +20%, brightness -15% / +15%, a 2-px crop
  (of every side, or of two sides);
- mirror images (``flip``): only an embedding can tell these are the same picture;
- conflicting copies: a copy (exact or JPEG) filed under another class;
- copies of every kind in another split than their source (leakage);
- quality problems on crops used nowhere else: dark (25% brightness), bright (blended 65% with
  white), blurry (Gaussian, sigma 3 px), tiny (shrunk to 24 px), blank (flat colour plus faint noise),
  grayscale, and stretched to 3:1 (odd aspect ratio).

Used by ``tests/test_audit_core.py`` and ``benchmarks/audit_vs_cleanvision.py``.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from datamodules.sources import Sample

CROP = 96  # px: small, so the whole set decodes in well under a second
SPLITS = ("train", "val", "test")
NEAR_KINDS = ("jpeg60", "down20", "up20", "darker15", "brighter15", "crop2", "crop2_corner")
QUALITY_KINDS = ("dark", "bright", "blurry", "tiny", "blank", "grayscale", "odd_aspect_ratio")


def photos() -> dict[str, np.ndarray]:
    """The colour photos that ship with scikit-image and scikit-learn, by name."""
    import skimage.data as data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "immunohistochemistry": data.immunohistochemistry(),
        "motorcycle": data.stereo_motorcycle()[0],
        "china": china,
        "flower": flower,
    }


def crops(image: np.ndarray, size: int = CROP) -> list[np.ndarray]:
    """Non-overlapping ``size`` crops with some texture (luma sd > 20: a patch of plain sky is not a photo)."""
    out = []
    height, width = image.shape[:2]
    for y in range(0, height - size + 1, size):
        for x in range(0, width - size + 1, size):
            patch = np.ascontiguousarray(image[y : y + size, x : x + size])
            if cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY).std() > 20:
                out.append(patch)
    return out


def _distinct(patch: np.ndarray, kept: list[int], min_bits: int = 14) -> bool:
    """True (and ``patch`` remembered) when neither it nor its mirror image hashes within ``min_bits`` of a kept one."""
    from data_audit.properties import perceptual_hash

    gray = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
    own, mirror = perceptual_hash(gray), perceptual_hash(np.ascontiguousarray(gray[:, ::-1]))
    if any(bin(own ^ k).count("1") < min_bits or bin(mirror ^ k).count("1") < min_bits for k in kept):
        return False
    kept.append(own)
    return True


def _jpeg(rgb: np.ndarray, quality: int = 60) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _resize(rgb: np.ndarray, factor: float) -> np.ndarray:
    height, width = rgb.shape[:2]
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(rgb, (round(width * factor), round(height * factor)), interpolation=interpolation)


def _brightness(rgb: np.ndarray, factor: float) -> np.ndarray:
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(rgb)).enhance(factor))


NEAR = {
    "jpeg60": _jpeg,
    "down20": lambda a: _resize(a, 0.8),
    "up20": lambda a: _resize(a, 1.2),
    "darker15": lambda a: _brightness(a, 0.85),
    "brighter15": lambda a: _brightness(a, 1.15),
    "crop2": lambda a: a[2:-2, 2:-2],
    "crop2_corner": lambda a: a[2:, 2:],
}


def _blank(rng: np.random.Generator) -> np.ndarray:
    colour = rng.integers(0, 256, 3)
    noise = rng.normal(0, 1.5, (CROP, CROP, 3))
    return np.clip(colour + noise, 0, 255).astype(np.uint8)


QUALITY = {
    "dark": lambda a, rng: _brightness(a, 0.25),
    "bright": lambda a, rng: (a * 0.35 + 255 * 0.65).astype(np.uint8),
    "blurry": lambda a, rng: cv2.GaussianBlur(a, (0, 0), 3),
    "tiny": lambda a, rng: _resize(a, 24 / CROP),
    "blank": lambda a, rng: _blank(rng),
    "grayscale": lambda a, rng: np.repeat(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2),
    "odd_aspect_ratio": lambda a, rng: cv2.resize(a, (3 * CROP, CROP), interpolation=cv2.INTER_CUBIC),
}


@dataclass
class PlantedSet:
    """The samples and what was planted among them.

    Attributes:
        samples: every image, as the audit receives them.
        family: ``{path: family id}`` for every image of a duplicate family (a source and its
            copies); images of one family are the true duplicate pairs.
        kind: ``{path: kind}`` of every planted copy (``exact``, a :data:`NEAR_KINDS` name, ``flip``).
        conflicting: paths of the copies filed under another class, with their sources.
        quality: ``{kind: [paths]}`` of the planted quality problems.
        clean: paths of the distinct crops (no planted problem).
    """

    samples: list[Sample]
    family: dict[str, int] = field(default_factory=dict)
    kind: dict[str, str] = field(default_factory=dict)
    conflicting: set[str] = field(default_factory=set)
    quality: dict[str, list[str]] = field(default_factory=dict)
    clean: list[str] = field(default_factory=list)

    def true_pairs(self, include: set[str] | None = None) -> set[frozenset[str]]:
        """Every pair of images of one family (only copies of kinds in ``include``, when given)."""
        members: dict[int, list[str]] = {}
        for path, fam in self.family.items():
            if include is None or path not in self.kind or self.kind[path] in include:
                members.setdefault(fam, []).append(path)
        return {frozenset((a, b)) for paths in members.values() for i, a in enumerate(paths) for b in paths[i + 1 :]}


def build(root: str | Path, *, per_photo: int = 12, copies_per_kind: int = 4, seed: int = 0) -> PlantedSet:
    """Writes the planted set under ``root/<class>/`` (PNG, BMP and JPEG files) and describes it.

    Args:
        root: output folder (replaced).
        per_photo: distinct crops kept per photo (about 90 distinct images for the default).
        copies_per_kind: sources copied per exact/near/flip kind, and images per quality kind.
        seed: which crops are copied, and the splits.
    """
    root = Path(root)
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    pool: list[tuple[str, np.ndarray]] = []
    spare: list[tuple[str, np.ndarray]] = []
    kept_hashes: list[int] = []
    for name, image in photos().items():
        # Distinct means distinct even as a mirror image: the two halves of a symmetric cup are
        # one picture to an embedding (and to a hash once one half is flipped).
        patches = [p for p in crops(image) if _distinct(p, kept_hashes)]
        pool += [(name, p) for p in patches[:per_photo]]
        spare += [(name, p) for p in patches[per_photo:]]
    classes = sorted({name for name, _ in pool})
    planted = PlantedSet(samples=[])

    def save(rgb: np.ndarray, label: str, split: str, stem: str, ext: str = ".png", **options) -> str:
        path = root / label / f"{stem}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(path, **options)
        planted.samples.append(Sample(path=str(path), label=label, split=split))
        return str(path)

    sources = []
    for i, (label, rgb) in enumerate(pool):
        split = SPLITS[0] if i % 10 < 7 else SPLITS[1 + i % 2]
        path = save(rgb, label, split, f"crop_{i:03d}")
        planted.clean.append(path)
        sources.append((i, label, split, rgb, path))

    order = rng.permutation(len(sources))
    picks = iter(order.tolist())
    copy_kinds = ["exact", *NEAR_KINDS, "flip"]
    for kind in copy_kinds:
        for j in range(copies_per_kind):
            i, label, split, rgb, path = sources[next(picks)]
            other = [s for s in SPLITS if s != split][j % 2]
            copy_split = split if j % 2 == 0 else other  # half of the copies leak into another split
            if kind == "exact":
                ext, options, pixels = (".bmp", {}, rgb) if j % 2 else (".png", {"compress_level": 9}, rgb)
            elif kind == "flip":
                ext, options, pixels = ".png", {}, np.ascontiguousarray(rgb[:, ::-1])
            else:
                pixels = NEAR[kind](rgb)
                ext, options = (".jpg", {"quality": 95}) if kind == "jpeg60" else (".png", {})
            copy = save(pixels, label, copy_split, f"crop_{i:03d}_{kind}", ext, **options)
            planted.family.setdefault(path, i)
            planted.family[copy] = i
            planted.kind[copy] = kind

    # Conflicting copies: the same picture (exactly, or re-encoded) filed under another class.
    for j in range(copies_per_kind):
        i, label, split, rgb, path = sources[next(picks)]
        wrong = classes[(classes.index(label) + 1 + j) % len(classes)]
        pixels = rgb if j % 2 == 0 else _jpeg(rgb)
        copy_split = split if j < copies_per_kind // 2 else next(s for s in SPLITS if s != split)
        copy = save(pixels, wrong, copy_split, f"crop_{i:03d}_conflict", ".png")
        planted.family.setdefault(path, i)
        planted.family[copy] = i
        planted.kind[copy] = "exact" if j % 2 == 0 else "jpeg60"
        planted.conflicting.update({copy, path})

    spare_order = rng.permutation(len(spare)).tolist()
    for kind in QUALITY_KINDS:
        planted.quality[kind] = []
        for j in range(copies_per_kind):
            label, rgb = spare[spare_order.pop()]
            pixels = QUALITY[kind](rgb, rng)
            planted.quality[kind].append(save(pixels, label, SPLITS[j % 3], f"{kind}_{j}"))
    return planted
