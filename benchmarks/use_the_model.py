"""Using a trained model, end to end on real data: unfamiliar-input flags on classes the model never saw,
the precision of the labels emitted at a target precision, and the ONNX export's parity.

    python -m benchmarks.use_the_model [--photos 500] [--work DIR] [--out FILE] [train overrides ...]

1. Trains the default ``make train`` configuration on the built-in MNIST digits 0-4 only (digits 5-9
   are left out with ``data.exclude``), in a fresh process, with every default callback: at the end
   the run saves ``reports/thresholds.csv`` (target precision 0.95) and its unfamiliar-input index.
2. Runs ``predict.py`` on the run's test split (digits 0-4 it never trained on), on every digit 5-9
   (classes it never saw), and on crops of photographs from ``skimage.data`` (a very different
   source): AUROC of the distance and of the ``unfamiliar`` flag against the test split, and how
   often each is flagged.
3. On the test split: the labels ``predict.py`` emits with the run's thresholds, their precision
   with a 95% Wilson interval, and coverage.
4. Exports to ONNX (``export.py``) and runs ``predict.py model=...`` on the test split: the largest
   probability difference and the share of identical decisions.

Results go to ``benchmarks/results/use_the_model.json``. Extra arguments are passed to ``train.py``
(e.g. ``trainer.max_epochs=1`` for a quick check).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import RESULTS, ROOT, machine, run
from datamodules.sources import builtin_digits
from inference.familiarity import unfamiliar_auroc
from inference.thresholds import precision_interval

UNSEEN = ("5", "6", "7", "8", "9")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field", "retina")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _manifest(path: Path, paths: list[str]) -> Path:
    path.write_text("path\n" + "".join(f"{p}\n" for p in paths))
    return path


def _photos(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` square crops (64 to 256 px) of photographs shipped with scikit-image."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = [np.asarray(getattr(data, name)()) for name in PHOTOS]
    for i in range(count):
        image = images[i % len(images)]
        side = int(rng.integers(64, min(256, *image.shape[:2]) + 1))
        y, x = rng.integers(0, image.shape[0] - side + 1), rng.integers(0, image.shape[1] - side + 1)
        Image.fromarray(image[y : y + side, x : x + side]).save(folder / f"photo_{i:04d}.png")
    return folder


def _cli(args: list[str]) -> float:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, env=env)
    return time.perf_counter() - start


def _predict(out: Path, *args: str) -> list[dict[str, str]]:
    _cli(["predict.py", *args, "progress=false", f"hydra.run.dir={out}"])
    return _rows(out / "predictions.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=500, help="photo crops in the very-different source")
    parser.add_argument("--work", type=Path, default=None, help="where runs go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS / "use_the_model.json")
    args, overrides = parser.parse_known_args()

    digits = builtin_digits(ROOT / "data" / "mnist")
    work = args.work or Path(tempfile.mkdtemp(prefix="lookout-use-"))
    unseen = sorted(str(p.resolve()) for d in UNSEEN for p in (digits / d).glob("*.png"))
    exclude = _manifest(work / "exclude_5_to_9.csv", unseen)
    run_dir = work / "train"
    trained = run(run_dir, [f"data.exclude={exclude}", *overrides])
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    test_split = json.loads((run_dir / "catalogue.json").read_text())["splits"]["test"]
    truth = dict(zip(test_split["path"], test_split["label"], strict=True))
    test_csv = _manifest(work / "test.csv", test_split["path"])

    known = _predict(work / "known", f"ckpt_path={checkpoint}", f"input={test_csv}")
    sources = {
        "digits 5-9 (unseen classes)": _predict(
            work / "unseen", f"ckpt_path={checkpoint}", f"input={_manifest(work / 'unseen.csv', unseen)}"
        ),
        "photo crops (skimage.data)": _predict(
            work / "photos", f"ckpt_path={checkpoint}", f"input={_photos(work / 'photo_crops', args.photos)}"
        ),
    }
    known_distance = [float(r["distance"]) for r in known]
    known_flag = [r["unfamiliar"] == "true" for r in known]
    unfamiliar = {}
    for name, rows in sources.items():
        flags = [r["unfamiliar"] == "true" for r in rows]
        unfamiliar[name] = {
            "images": len(rows),
            "auroc_distance": unfamiliar_auroc(known_distance, [float(r["distance"]) for r in rows]),
            "auroc_flag": unfamiliar_auroc(np.array(known_flag, float), np.array(flags, float)),
            "flagged": float(np.mean(flags)),
        }
    emitted = [r for r in known if r["decision"] == "label"]
    correct = sum(r["label"] == truth[r["path"]] for r in emitted)
    low, high = precision_interval(correct, len(emitted))
    thresholds = json.loads((run_dir / "reports" / "thresholds.json").read_text())

    export_seconds = _cli(["export.py", f"ckpt_path={checkpoint}", f"hydra.run.dir={work / 'export'}"])
    exported = json.loads((work / "export" / "reports" / "export.json").read_text())
    onnx = _predict(work / "onnx", f"model={work / 'export' / 'model.onnx'}", f"input={test_csv}")
    same = [a["decision"] == b["decision"] and a["label"] == b["label"] for a, b in zip(onnx, known, strict=True)]
    delta = max(
        abs(float(a["probability_1"]) - float(b["probability_1"]))
        for a, b in zip(onnx, known, strict=True)
        if a["probability_1"] and b["probability_1"]
    )
    summary = {
        "machine": machine(),
        "train_overrides": overrides,
        "train_seconds": round(trained["total_seconds"], 1),
        "metrics": {k: v for k, v in trained["metrics"].items() if k.startswith(("val/acc_best", "test/"))},
        "test_images": len(known),
        "test_flagged": float(np.mean(known_flag)),
        "unfamiliar": unfamiliar,
        "distance_threshold": json.loads((run_dir / "familiarity" / "familiarity.json").read_text())["threshold"],
        "target_precision": thresholds["target_precision"],
        "unreached_classes": thresholds["unreached_classes"],
        "predict_test": {
            "labelled": len(emitted),
            "coverage": len(emitted) / len(known),
            "precision": correct / len(emitted) if emitted else None,
            "precision_95ci": [low, high],
            "decisions": {d: sum(r["decision"] == d for r in known) for d in ("label", "abstain", "withheld")},
        },
        "callback_test": {k: thresholds.get(k) for k in ("test_coverage", "test_precision", "test_precision_95ci")},
        "export": {
            "seconds": round(export_seconds, 1),
            "max_abs_delta_probability_val": exported["max_abs_delta_probability"],
            "verified_images": exported["verified_images"],
            "max_abs_delta_probability_test_predictions": delta,
            "same_decision_share": float(np.mean(same)),
        },
        "work": str(work),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("unfamiliar", "test_flagged", "predict_test", "export")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
