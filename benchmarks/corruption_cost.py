"""What the robustness grid costs to corrupt: milliseconds per image for each corruption type.

    python -m benchmarks.corruption_cost [--sizes 32 64 224] [--images 20] [--config conf/robustness/default.yaml]

One CPU core, images cut from scikit-image's photos, every severity; the figure per type is
the mean over the five severities. Multiply the total by ``robustness.max_samples`` to size
a grid run (the loaders' workers divide it).
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np
from skimage import data

from benchmarks.common import RESULTS, machine
from datamodules.corruptions import DEFAULT_CONFIG, SEVERITIES, load_suite, sample_seed


def images(size: int, count: int) -> list[np.ndarray]:
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(min(photo.shape[:2]) * rng.uniform(0.5, 1.0))
        top, left = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
        out.append(cv2.resize(photo[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224], help="image sides in pixels")
    parser.add_argument("--images", type=int, default=20, help="images per size")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="a conf/robustness/*.yaml file")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/corruption_cost.json")
    args = parser.parse_args()
    suite = load_suite(args.config)
    cv2.setNumThreads(1)  # one core, as a DataLoader worker has
    ms: dict[int, dict[str, float]] = {}
    for size in args.sizes:
        batch = images(size, args.images)
        ms[size] = {}
        for kind in suite.kinds:
            start = time.perf_counter()
            for index, image in enumerate(batch):
                for severity in SEVERITIES:
                    suite.apply(image, kind, severity, sample_seed(index, kind))
            ms[size][kind] = 1000 * (time.perf_counter() - start) / (len(batch) * len(SEVERITIES))
    print("| corruption | " + " | ".join(f"{s} px (ms)" for s in args.sizes) + " |")
    print("|---|" + "---|" * len(args.sizes))
    for kind in suite.kinds:
        print(f"| {kind.replace('_', ' ')} | " + " | ".join(f"{ms[s][kind]:.1f}" for s in args.sizes) + " |")
    totals = {s: sum(ms[s].values()) * len(SEVERITIES) for s in args.sizes}
    print("| **whole grid, one image** | " + " | ".join(f"**{totals[s]:.0f}**" for s in args.sizes) + " |")
    if args.save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        record = {"machine": machine(), "config": args.config, "images": args.images, "ms_per_image": ms}
        (RESULTS / "corruption_cost.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
