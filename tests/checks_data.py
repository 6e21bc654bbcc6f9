"""Data for the evaluation checks: small textured images in four classes that a tiny model tells apart in a
few epochs at 32 px: smooth, grainy, horizontal stripes, vertical stripes.

Every noise and every blur pushes the classes towards each other step by step (noise makes a
smooth image grainy; blur smooths grain and stripes away), so accuracy under the corruption grid
has somewhere to fall, monotonically. The CSV variant plants what the checks must find: one
camera whose images are darker, out of focus and fewer, and a metadata column (``site``) that
gives the label away.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CLASSES = ("smooth", "grain", "stripes_horizontal", "stripes_vertical")


def texture(label: int, rng: np.random.Generator, size: int = 32, dark: bool = False) -> np.ndarray:
    """One ``size x size`` RGB image of class ``label``, over a tinted gradient: nothing more (smooth),
    fine grain (standard deviation 6-9% of full scale), or stripes of period 3-4.5 px (amplitude 12-20%).

    ``dark``: a cheap camera at dusk: a third of the light, and out of focus.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * x + np.sin(angle) * y)[..., None]
    image = rng.uniform(0.35, 0.65, 3) + rng.uniform(-0.15, 0.15, 3) * ramp
    if label == 1:
        image = image + rng.normal(0, rng.uniform(0.06, 0.09), (size, size, 1))
    elif label >= 2:
        across = (y if label == 2 else x) * size
        wave = np.sin(2 * np.pi * across / rng.uniform(3.0, 4.5) + rng.uniform(0, 2 * np.pi))
        image = image + rng.uniform(0.12, 0.2) * wave[..., None]
    if dark:
        image = cv2.GaussianBlur(image.astype(np.float32) * 0.35, (0, 0), sigmaX=1.0)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def write_planted_manifest(root: Path, per_split: dict[str, int], seed: int = 0) -> Path:
    """A CSV manifest with ``path, label, split, camera, altitude, time_of_day, site`` and its images.

    Cameras A and B take 44% of the images each; camera C 12%, all dark and soft. ``site`` is
    ``S<class>`` for 90% of the images (a random site otherwise): it predicts the label. Camera,
    altitude and time of day are independent of the label.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in per_split.items():
        for i in range(count):
            label = int(rng.integers(len(CLASSES)))
            camera = rng.choice(["A", "B", "C"], p=[0.44, 0.44, 0.12])
            site = label if rng.random() < 0.9 else int(rng.integers(len(CLASSES)))
            name = f"{split}_{i:04d}.png"
            Image.fromarray(texture(label, rng, dark=camera == "C")).save(root / name)
            rows.append(
                {
                    "path": name,
                    "label": CLASSES[label],
                    "split": split,
                    "camera": camera,
                    "altitude": f"{rng.uniform(30, 120):.1f}",
                    "time_of_day": rng.choice(["dawn", "day", "dusk"]),
                    "site": f"S{site}",
                }
            )
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest
