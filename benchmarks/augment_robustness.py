"""Does ``augment=drone`` buy robustness over ``augment=basic`` on the same data? Two trainings, the grid on each.

    python -m benchmarks.augment_robustness [--per-class 120] [--epochs 6] [--image-size 96] [--seeds 0 1 2]
                                            [--max-samples 300] [--robustness cifar] [--out DIR] [overrides ...]

The data are built offline from the photographs that ship with scikit-image and scikit-learn:
one class per photograph (grass, gravel, brick, a cat, coffee, a rocket, a Chinese temple, a
flower), square crops of random size and position, resized to ``--image-size``. Each photo is
cut into vertical bands, the left 55% for training crops, the next 20% for validation and the
right 25% for test, so no test crop shares a pixel with a training crop.

For each seed, the same command trains twice (``augment=basic``, ``augment=drone``: same data,
model, epochs, seed), then ``eval.py ... robustness=<config> splits=[test]`` scores each best
checkpoint under every corruption, and :mod:`benchmarks.robustness_compare` compares the two
grids (drone against basic as the baseline). Results: ``benchmarks/results/augment_robustness.json``
and the markdown tables printed at the end (for BENCHMARKS.md).

Limits, said where the table is shown: one photograph per class is an easy, texture-driven
task, far from real aerial classes; the grid's test crops number ``8 x per-class / 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import RESULTS, ROOT, machine
from benchmarks.robustness_compare import compare, load

BANDS = {"train": (0.0, 0.55), "val": (0.55, 0.75), "test": (0.75, 1.0)}  # horizontal extent of each split


def photographs() -> dict[str, np.ndarray]:
    """Eight RGB photographs shipped inside scikit-image and scikit-learn (no download)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    sample = dict(zip(("temple", "flower"), load_sample_images().images, strict=True))
    photos = {
        "grass": data.grass(),
        "gravel": data.gravel(),
        "brick": data.brick(),
        "cat": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        **sample,
    }
    return {name: np.repeat(p[..., None], 3, axis=2) if p.ndim == 2 else p[..., :3] for name, p in photos.items()}


def build_data(root: Path, per_class: int, size: int, seed: int = 0) -> Path:
    """``root/{train,val,test}/<class>/*.png``: ``per_class`` crops per class, split by band as the docstring says."""
    rng = np.random.default_rng(seed)
    counts = {"train": per_class, "val": max(4, per_class // 4), "test": max(4, per_class // 4)}
    for name, photo in photographs().items():
        height, width = photo.shape[:2]
        for split, (start, stop) in BANDS.items():
            left, right = int(start * width), int(stop * width)
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(counts[split]):
                side = int(rng.uniform(0.15, 0.3) * min(height, width))
                side = min(side, right - left, height)
                x = int(rng.integers(left, right - side + 1))
                y = int(rng.integers(0, height - side + 1))
                crop = cv2.resize(photo[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
                cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return root


def python(args: list[str], log: Path) -> None:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({code}); see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=120, help="training crops per class (val and test: a quarter)")
    parser.add_argument("--image-size", type=int, default=96, help="px, the model's input")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one pair of trainings per seed")
    parser.add_argument("--max-samples", type=int, default=1000, help="test images per grid cell")
    parser.add_argument("--robustness", default="cifar", help="conf/robustness/<name>.yaml (cifar: small inputs)")
    parser.add_argument("--out", type=Path, default=None, help="where data and runs go (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="extra training overrides for both settings")
    args = parser.parse_args()
    out = args.out or Path(os.environ.get("TMPDIR", "/tmp")) / f"lookout-augment-robustness-{int(time.time())}"
    data = build_data(out / "data", args.per_class, args.image_size)
    comparisons, started = [], time.perf_counter()
    for seed in args.seeds:
        grids = {}
        for augment in ("basic", "drone"):
            run = out / f"seed{seed}_{augment}"
            python(
                ["train.py", "data=folder", f"data.root={data}", f"data.image_size={args.image_size}",
                 f"augment={augment}", f"trainer.max_epochs={args.epochs}", f"seed={seed}", "callbacks=minimal",
                 "test=false", f"hydra.run.dir={run}", *args.overrides],
                out / f"seed{seed}_{augment}_train.log",
            )  # fmt: skip
            python(
                ["eval.py", f"ckpt_path={run}/checkpoints/best.ckpt", f"robustness={args.robustness}",
                 f"robustness.max_samples={args.max_samples}", "splits=[test]", "callbacks=none",
                 f"hydra.run.dir={run}_eval"],
                out / f"seed{seed}_{augment}_eval.log",
            )  # fmt: skip
            grids[augment] = load(str(run) + "_eval")
            print(f"seed {seed} {augment}: done ({time.perf_counter() - started:.0f} s)", flush=True)
        markdown, figures = compare(grids["basic"], grids["drone"], ("basic", "drone"))
        comparisons.append({"seed": seed, "markdown": markdown, **figures})
        print(f"\n## seed {seed}\n\n{markdown}\n", flush=True)
    record = {
        "machine": machine(),
        "command": "python -m benchmarks.augment_robustness "
        + " ".join(
            [
                f"--per-class {args.per_class}",
                f"--image-size {args.image_size}",
                f"--epochs {args.epochs}",
                "--seeds " + " ".join(map(str, args.seeds)),
                f"--max-samples {args.max_samples}",
                f"--robustness {args.robustness}",
                *args.overrides,
            ]
        ),
        "classes": list(photographs()),
        "seconds": time.perf_counter() - started,
        "comparisons": comparisons,
    }
    if len(comparisons) > 1:
        gains = [
            c["summary"]["drone"]["mean_corrupted_accuracy"] - c["summary"]["basic"]["mean_corrupted_accuracy"]
            for c in comparisons
        ]
        record["mean_corrupted_accuracy_gain"] = {"mean": statistics.mean(gains), "per_seed": gains}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "augment_robustness.json").write_text(json.dumps(record, indent=1, default=float))


if __name__ == "__main__":
    main()
