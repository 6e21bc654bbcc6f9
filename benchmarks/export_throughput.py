"""CPU throughput of an exported classifier: PyTorch eager against onnxruntime, in images per second.

    python -m benchmarks.export_throughput [--model tf_efficientnet_lite0] [--image-size 224]
        [--batch-sizes 1 16] [--rounds 5] [--seconds 2] [--threads N] [--no-pretrained] [--out FILE]

The backbone is made as training makes it (``models.backbones.create_backbone``: the default
backbone's ImageNet weights come from a pip package, offline; ``--no-pretrained`` for random
weights) with a 10-class head, exported to ONNX as ``export.py`` does
(:func:`inference.export.export_classifier`),
then both runtimes get the same normalised images, the same number of threads and, per batch
size, alternating timed rounds (a warm-up call first; each round repeats calls for about
``--seconds``), so the machine's noise falls on both. Reported: the median images/s of each
runtime, their ratio, and the largest probability difference between them on those images.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from scipy.special import softmax

from benchmarks.common import RESULTS, machine
from datamodules.transforms import Preprocessing
from inference.export import ExportedClassifier, export_classifier
from models.backbones import create_backbone


def _round(call, batch: np.ndarray, seconds: float) -> float:
    """Images per second of ``call(batch)`` repeated for about ``seconds``."""
    calls, start = 0, time.perf_counter()
    while True:
        call(batch)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * len(batch) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="timm model name")
    parser.add_argument("--image-size", type=int, default=None, help="input size in px (default: the model's)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per runtime and batch size")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for both")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=RESULTS / "export_throughput.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = create_backbone(args.model, num_classes=10, pretrained=args.pretrained).eval()
    config = timm.data.resolve_model_data_config(model)
    size = args.image_size or config["input_size"][-1]
    pre = Preprocessing.resolve(config, image_size=size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lookout-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        export_classifier(model, path, model_format="onnx", classes=[str(i) for i in range(10)], preprocessing=pre)
        export_seconds = time.perf_counter() - start
        onnx = ExportedClassifier(path, threads=args.threads)

        def eager(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(batch)).numpy()

        for batch_size in args.batch_sizes:
            batch = np.random.default_rng(batch_size).standard_normal((batch_size, 3, size, size)).astype(np.float32)
            delta = float(np.abs(softmax(eager(batch), axis=1) - softmax(onnx.logits(batch), axis=1)).max())
            speeds: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
            for r in range(args.rounds):
                order = [("pytorch", eager), ("onnxruntime", onnx.logits)]
                for name, call in order if r % 2 == 0 else order[::-1]:
                    speeds[name].append(_round(call, batch, args.seconds))
            medians = {name: statistics.median(values) for name, values in speeds.items()}
            rows.append(
                {
                    "batch_size": batch_size,
                    "pytorch_images_per_s": round(medians["pytorch"], 1),
                    "onnxruntime_images_per_s": round(medians["onnxruntime"], 1),
                    "onnxruntime_over_pytorch": round(medians["onnxruntime"] / medians["pytorch"], 2),
                    "max_abs_delta_probability": delta,
                    "rounds": speeds,
                }
            )
            print(
                f"batch {batch_size:>4}: pytorch {medians['pytorch']:8.1f} img/s   onnxruntime "
                f"{medians['onnxruntime']:8.1f} img/s   ratio {medians['onnxruntime'] / medians['pytorch']:.2f}   "
                f"max |dp| {delta:.1e}"
            )
    summary = {
        "machine": machine(),
        "model": args.model,
        "pretrained": args.pretrained,
        "image_size": size,
        "threads": args.threads,
        "seconds_per_round": args.seconds,
        "onnx_export_seconds": round(export_seconds, 1),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
