"""Training throughput of lookout against a bare PyTorch loop, and what one loader worker delivers.

    python -m benchmarks.gpu_throughput                           # on a GPU machine: the recorded figures
    python -m benchmarks.gpu_throughput --device cpu --images 400 --image-size 64 --batch-size 16 \\
        --steps 12 --warmup 2 --workers 1 --drone-workers 0,1      # a CPU run

Three measurements on the same synthetic photo folder (JPEGs cut from scikit-image's sample
photos, 640 x 480 by default, so decoding costs what a camera's frames cost):

1. **lookout**: ``train.py``'s own job (the composed config, every review panel and the label
   checks on, 16-bit mixed precision and ``model.channels_last=true`` on a GPU), one epoch of
   ``--steps`` batches; images per second over the steps after ``--warmup``, timed from a callback
   that runs after every other callback of the step.
2. **bare**: a plain loop over the same timm model, the same albumentations pipeline (built from
   the same config) and the same decoding, with a plain ``DataLoader`` (same batch size, workers,
   pinned memory), ``torch.autocast`` + ``GradScaler``, AdamW; nothing else. The goal is
   lookout >= 0.95 x bare. Also the loader alone (no model) at the same settings: when it is
   not faster than both loops, both wait for data and the ratio says little about the harness.
3. **drone loader**: images per second of lookout's training loader with ``augment=drone`` at
   ``--drone-workers`` worker processes (0: in the main process), and per worker, to size
   ``data.num_workers``: the GPU's images per second (``bare``) / the per-worker figure.

Writes ``benchmarks/results/gpu_throughput.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback
from PIL import Image

from benchmarks.common import RESULTS, compose_config, machine


# ---------------------------------------------------------------------- data
def _write_photo(task: tuple[int, str, int, int, int]) -> None:
    from skimage import data as samples

    index, root, classes, width, height = task
    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
    rng = np.random.default_rng(index)
    source = getattr(samples, names[index % len(names)])()
    h, w = source.shape[:2]
    side = rng.uniform(0.5, 1.0)
    ch, cw = int(h * side), int(w * side)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = source[top : top + ch, left : left + cw].astype(np.float32) * rng.uniform(0.7, 1.3, size=3)
    image = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR)
    folder = Path(root) / f"class_{index % classes}"
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / f"{index:06d}.jpg", quality=90)


def write_photos(root: Path, count: int, classes: int, size: tuple[int, int]) -> Path:
    """``count`` JPEGs of ``size`` (width, height) in ``classes`` class folders under ``root``."""
    tasks = [(i, str(root), classes, *size) for i in range(count)]
    with ProcessPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(_write_photo, tasks, chunksize=32))
    return root


# ---------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(Callback):
    """Times training steps ``warmup`` .. the epoch's last, from the start of step ``warmup`` (its batch
    loaded) to the end of the last one (every callback done, the device synchronised); writes
    ``{"images", "seconds"}`` to ``path``. Put it last in the callbacks."""

    def __init__(self, path: str, warmup: int) -> None:
        self.path, self.warmup = Path(path), warmup
        self.start: float | None = None
        self.images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            _sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is None:
            return
        self.images += len(batch["target"])
        if batch_idx == trainer.num_training_batches - 1:
            _sync(pl_module.device)
            seconds = time.perf_counter() - self.start
            self.path.write_text(json.dumps({"images": self.images, "seconds": seconds}))
            self.start = None


class _Photos(torch.utils.data.Dataset):
    """What a bare loop's dataset does: read the file (lookout's reader: RGB, EXIF-upright), transform."""

    def __init__(self, paths: list[str], targets: np.ndarray, transform) -> None:
        self.paths, self.targets, self.transform = paths, targets, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from datamodules.image_io import read_rgb

        return self.transform(image=read_rgb(self.paths[i]))["image"], int(self.targets[i])


def bare_loop(args, loader, num_classes: int, device: torch.device) -> dict:
    """A plain training loop; images per second over steps ``warmup`` .. ``steps - 1``."""
    import timm

    amp = device.type == "cuda"
    model = timm.create_model(args.model, pretrained=False, num_classes=num_classes, drop_rate=0.2).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    batches = iter(loader)
    images_timed, start = 0, 0.0
    for step in range(args.steps):
        images, targets = next(batches)
        if step == args.warmup:
            _sync(device)
            start = time.perf_counter()
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if step >= args.warmup:
            images_timed += len(targets)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"images": images_timed, "seconds": seconds, "img_per_s": images_timed / seconds}


def loader_rate(loader, steps: int, warmup: int) -> dict:
    """Images per second a loader delivers on its own, over batches ``warmup`` .. ``steps - 1``."""
    count, start = 0, 0.0
    for step, batch in enumerate(loader):
        if step == warmup:
            start = time.perf_counter()
        if step >= warmup:
            count += len(batch["target"] if isinstance(batch, dict) else batch[1])
        if step == steps - 1:
            break
    seconds = time.perf_counter() - start
    return {"images": count, "seconds": seconds, "img_per_s": count / seconds}


# ---------------------------------------------------------------------- lookout
def _overrides(args, data_root: Path, device: torch.device) -> list[str]:
    gpu = device.type == "cuda"
    return [
        "data=folder",
        f"data.root={data_root}",
        "data.val_fraction=0.05",
        f"data.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        f"data.pin_memory={str(gpu).lower()}",
        f"augment={args.augment}",
        "model=scratch",
        f"model.name={args.model}",
        f"model.channels_last={str(args.channels_last).lower()}",
        "trainer=gpu" if gpu else "trainer=cpu",
        "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={args.steps}",
        "trainer.num_sanity_val_steps=0",
        "test=false",
        *args.overrides,
    ]


def lookout_run(args, overrides: list[str], run_dir: Path) -> dict:
    """train.py's job with every default callback and a step timer last; images per second."""
    from omegaconf import open_dict

    from train import train

    cfg = compose_config([*overrides, f"paths.output_dir={run_dir}"])
    timing = run_dir.parent / f"{run_dir.name}_steps.json"
    with open_dict(cfg):
        timer = {"_target_": "benchmarks.gpu_throughput.StepTimer", "path": str(timing), "warmup": args.warmup}
        cfg.callbacks = {**dict(cfg.callbacks or {}), "step_timer": timer}
    train(cfg)
    result = json.loads(timing.read_text())
    return {**result, "img_per_s": result["images"] / result["seconds"], "run_dir": str(run_dir)}


def datamodule(overrides: list[str], catalogue, workers: int):
    """lookout's data module for the composed config (its transforms, sampler and loaders)."""
    import timm

    from runs import build

    cfg = compose_config([*overrides, f"data.num_workers={workers}"])
    options = build.data_options(cfg)
    backbone = timm.create_model(cfg.model.name, pretrained=False, num_classes=len(catalogue.class_names))
    prep = build.preprocessing(timm.data.resolve_model_data_config(backbone), options)
    return build.datamodule(cfg, catalogue, prep, options, folder=None)


def _loader_warmup(args, workers: int) -> int:
    """Batches not timed for a loader on its own: the warm-up, and at least the 2 batches per worker
    its workers queue before the first is taken (they would count as delivered at no cost)."""
    return min(args.steps - 1, max(args.warmup, 2 * workers + 1))


# ---------------------------------------------------------------------- main
def measure(args) -> dict:
    from datamodules import Catalogue
    from runs import environment

    environment.setup()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device)
    if args.device == "auto":
        args.device = device.type
    if args.channels_last is None:
        args.channels_last = device.type == "cuda"  # NHWC pays off with tensor cores, not on CPUs
    with tempfile.TemporaryDirectory(prefix="lookout-throughput-") as scratch:
        tmp = Path(args.work_dir or scratch)
        data_root = write_photos(tmp / "photos", args.images, args.classes, tuple(args.source_size))
        overrides = _overrides(args, data_root, device)
        catalogue = Catalogue.build(source="folder", root=str(data_root), val_fraction=0.05, scan="off")
        train_split = catalogue.splits["train"]
        if len(train_split) < args.steps * args.batch_size:
            raise SystemExit(
                f"--steps {args.steps} x --batch-size {args.batch_size} needs {args.steps * args.batch_size} training "
                f"images; {len(train_split)} of --images {args.images} are in the training split. Raise --images."
            )
        dm = datamodule(overrides, catalogue, args.workers)
        dataset = _Photos([s.path for s in train_split], catalogue.targets("train"), dm.train_transform())
        bare_loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=args.workers > 0,
        )
        loader_alone = loader_rate(dm.train_dataloader(), args.steps, _loader_warmup(args, args.workers))
        runs: dict[str, list[dict]] = {"bare": [], "lookout": []}
        for repeat in range(args.repeats):  # alternating, so slow drifts of the machine hit both
            runs["bare"].append(bare_loop(args, bare_loader, len(catalogue.class_names), device))
            runs["lookout"].append(lookout_run(args, overrides, tmp / f"run{repeat}"))
        drone = []
        drone_overrides = [*overrides, "augment=drone"]
        for workers in args.drone_workers:
            loader = datamodule(drone_overrides, catalogue, workers).train_dataloader()
            rate = loader_rate(loader, args.steps, _loader_warmup(args, workers))
            drone.append({"workers": workers, **rate, "img_per_s_per_worker": rate["img_per_s"] / max(1, workers)})
    rate = {name: statistics.median(r["img_per_s"] for r in results) for name, results in runs.items()}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "overrides", "work_dir")},
            "precision": "16-mixed" if device.type == "cuda" else "32-true",
            "lookout_overrides": overrides,
        },
        "img_per_s": rate,
        "ratio_lookout_to_bare": rate["lookout"] / rate["bare"],
        "goal": 0.95,
        "loader_alone_img_per_s": loader_alone["img_per_s"],
        # Both loops wait for data when the loader alone is not clearly faster than the bare loop.
        "loader_bound": loader_alone["img_per_s"] < 1.1 * rate["bare"],
        "runs": runs,
        "drone_loader": drone,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cuda or cpu")
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="timm model name")
    parser.add_argument("--images", type=int, default=6000, help="synthetic photos to write")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--source-size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"), help="px")
    parser.add_argument("--image-size", type=int, default=224, help="model input, px")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(12, max(0, (os.cpu_count() or 1) - 2)))
    parser.add_argument("--steps", type=int, default=40, help="training steps per measurement")
    parser.add_argument("--warmup", type=int, default=8, help="steps not timed at the start")
    parser.add_argument("--repeats", type=int, default=2, help="alternating (bare, lookout) measurements")
    parser.add_argument("--augment", default="basic", help="the pipeline of the throughput comparison")
    parser.add_argument(
        "--channels-last",
        default=None,
        type=lambda v: v.lower() in ("1", "true", "yes"),
        help="true/false; default: true on a GPU",
    )
    parser.add_argument(
        "--drone-workers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[0, 1, 2, 4],
        help="comma-separated worker counts for the augment=drone loader figure",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_throughput.json")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the photos and runs here (default: removed)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for the lookout run")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        parser.error("need 0 <= --warmup < --steps")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = "python -m benchmarks.gpu_throughput " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = {"machine": machine(), "command": command.strip(), **measure(args)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    return summary


if __name__ == "__main__":
    main()
