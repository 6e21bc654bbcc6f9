"""Throughput of predict.py against the evaluation loop (``trainer.validate``) on the same images and machine.

    python -m benchmarks.predict_throughput [--images 2000] [--rounds 3] [--batch-size 128] [--workers 2]
        [--model tf_efficientnet_lite0] [--image-size 64] [--out FILE]

Both read the same built-in MNIST digits through the same data module (safe reading, evaluation
transform) with the same batch size and DataLoader workers, with the same model: the default
backbone with its packaged ImageNet weights and a 10-class head, saved as a lookout checkpoint
(throughput does not depend on what the weights learned). The evaluation loop is Lightning's
``trainer.validate`` with no callbacks and no logger (the bare loop: forward, loss, metrics);
prediction is ``predict.py``'s loop (forward with embedding, temperature, output filtering,
unfamiliar-input search when the run has an index, rows streamed to ``predictions.csv``). Runs
alternate, and which goes first alternates by round, so the machine's noise falls on both.
Reported: the median images per second of each over the timed loop (from the first batch
request to the last row), their ratio, and predict.py's end-to-end rate (scan and model loading
included). A third variant adds an unfamiliar-input index of ``--index-size`` embeddings (the
default run's 2,000), whose exact search every batch pays for.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, ROOT, compose_config, machine
from datamodules import PREDICT, Catalogue, ImageDataModule, LoaderOptions
from datamodules.sources import builtin_digits
from runs import environment


def _checkpoint(path: Path, model_name: str, image_size: int) -> tuple[Path, int]:
    """A lookout checkpoint of the backbone with its pretrained weights; returns it and the embedding width."""
    from datamodules.transforms import Preprocessing
    from models.classifier import ImageClassifier

    model = ImageClassifier(name=model_name, num_classes=10, class_names=[str(i) for i in range(10)], pretrained=True)
    prep = Preprocessing.resolve(model.data_config, image_size=image_size, crop_pct=1.0)
    model.hparams["preprocessing"] = prep.as_dict()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "epoch": 0}, path)
    return path, int(model.backbone.num_features)


def _validate(checkpoint: Path, manifest: Path, batch_size: int, workers: int) -> float:
    """Images per second of ``trainer.validate`` over the images (labelled by their digit folder)."""
    from lightning.pytorch import Trainer

    from inference.prediction import checkpoint_model
    from runs.checkpoints import read_checkpoint

    model = checkpoint_model(read_checkpoint(checkpoint), "cpu")
    catalogue = Catalogue.for_prediction(manifest, class_names=model.class_names, scan="off")
    samples = catalogue.splits[PREDICT]
    for sample in samples:
        sample.label, sample.split = Path(sample.path).parent.name, "val"
    catalogue.splits = {"val": samples}
    loader = LoaderOptions(batch_size=batch_size, eval_batch_size=batch_size, num_workers=workers)
    data = ImageDataModule(catalogue, model.preprocessing, loader=loader)
    timer = _loop_timer()
    trainer = Trainer(
        accelerator="cpu", logger=False, callbacks=[timer], enable_progress_bar=False, enable_model_summary=False
    )
    trainer.validate(model.module, datamodule=data, verbose=False)
    return len(samples) / (timer.end - timer.start)


def _loop_timer():
    from lightning.pytorch import Callback

    class LoopTimer(Callback):
        """Marks the start and the end of the validation loop."""

        def on_validation_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            self.end = time.perf_counter()

    return LoopTimer()


def _index(folder: Path, size: int, dim: int) -> Path:
    """An unfamiliar-input index of ``size`` embeddings (random: the search costs the same whatever they hold)."""
    from inference.familiarity import FamiliarityIndex

    rng = np.random.default_rng(0)
    index = FamiliarityIndex(rng.standard_normal((size, dim)).astype(np.float32))
    index.calibrate(rng.standard_normal((100, dim)).astype(np.float32))
    return index.save(folder)


def _predict(
    checkpoint: Path, manifest: Path, out: Path, batch_size: int, workers: int, index: Path | None
) -> tuple[float, float]:
    from predict import predict

    cfg = compose_config(
        [
            f"ckpt_path={checkpoint}",
            f"input={manifest}",
            f"paths.output_dir={out}",
            "progress=false",
            "device=cpu",
            "data.scan=off",
            f"data.batch_size={batch_size}",
            f"data.num_workers={workers}",
            f"predict.familiarity={index if index else 'null'}",
        ],
        config_name="predict",
    )
    start = time.perf_counter()
    summary = predict(cfg)
    return summary["images_per_second"], summary["predicted"] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="the eval batch size of make train")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=64, help="px (make train's)")
    parser.add_argument("--index-size", type=int, default=2000, help="unfamiliar-input index (0: none)")
    parser.add_argument("--out", type=Path, default=RESULTS / "predict_throughput.json")
    args = parser.parse_args()
    environment.setup()

    digits = builtin_digits(ROOT / "data" / "mnist")
    paths = sorted(str(p) for p in digits.glob("*/*.png"))[:: max(1, 5000 // args.images)][: args.images]
    speeds: dict[str, list[float]] = {
        "eval_loop": [],
        "predict_loop": [],
        "predict_end_to_end": [],
        "predict_loop_with_index": [],
    }
    with tempfile.TemporaryDirectory(prefix="lookout-throughput-") as tmp:
        tmp = Path(tmp)
        manifest = tmp / "images.csv"
        manifest.write_text("path\n" + "".join(f"{p}\n" for p in paths))
        checkpoint, dim = _checkpoint(tmp / "model.ckpt", args.model, args.image_size)
        index = _index(tmp / "familiarity", args.index_size, dim) if args.index_size else None
        steps = ["eval", "predict"] + (["index"] if index else [])
        for r in range(args.rounds):
            for step in steps if r % 2 == 0 else steps[::-1]:  # alternate who goes first
                if step == "eval":
                    speeds["eval_loop"].append(_validate(checkpoint, manifest, args.batch_size, args.workers))
                    continue
                out = tmp / f"{step}_{r}"
                loop, whole = _predict(
                    checkpoint, manifest, out, args.batch_size, args.workers, index if step == "index" else None
                )
                if step == "index":
                    speeds["predict_loop_with_index"].append(loop)
                else:
                    speeds["predict_loop"].append(loop)
                    speeds["predict_end_to_end"].append(whole)
            print({k: round(v[-1], 1) for k, v in speeds.items()}, flush=True)
    medians = {k: round(statistics.median(v), 1) for k, v in speeds.items() if v}
    summary = {
        "machine": machine(),
        "model": args.model,
        "image_size": args.image_size,
        "images": len(paths),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "median_images_per_second": medians,
        "predict_over_eval": round(medians["predict_loop"] / medians["eval_loop"], 2),
        "predict_with_index_over_eval": round(
            medians.get("predict_loop_with_index", math.nan) / medians["eval_loop"], 2
        ),
        "index_size": args.index_size,
        "rounds": speeds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    keys = ("median_images_per_second", "predict_over_eval", "predict_with_index_over_eval")
    print(json.dumps({k: summary[k] for k in keys}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
