"""Evaluate a checkpoint on the validation and test splits, with every review panel.

    python eval.py ckpt_path=logs/train/runs/<run>/checkpoints/best.ckpt
    python eval.py ckpt_path=... data=folder data.root=~/shots       # same data options as training

The checkpoint is read with ``torch.load(weights_only=True)``: only tensors and plain values.
Its class list and preprocessing (input size, crop, normalisation) are reused, and the
validation metrics it was saved with are printed beside the ones measured now.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

import harness  # first: sets up the environment and the config resolvers
from datamodules import DataError


def evaluate(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Evaluates ``cfg.ckpt_path`` on ``cfg.splits``; returns ``{split: metrics}``."""
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = Path(cfg.ckpt_path).expanduser()
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(ckpt_path)!r} does not exist.")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    trained = checkpoint["hyper_parameters"]
    data_state = checkpoint.get("ImageDataModule", {})

    def from_checkpoint(datamodule):
        # Architecture, class list and what changes the loss come from the checkpoint's
        # hyper-parameters (plain values; nothing in a checkpoint is ever instantiated).
        return trained["class_names"], {k: trained[k] for k in ("name", "label_smoothing", "drop_rate") if k in trained}

    run_dir = Path(cfg.paths.output_dir)
    harness.share_config_with_ddp_children(cfg, run_dir)
    datamodule, model, trainer = harness.build(cfg, num_classes_from=from_checkpoint)
    datamodule.load_state_dict(data_state)  # checks the classes; reuses the trained preprocessing

    results: dict[str, dict[str, float]] = {}
    for split in cfg.splits:
        if split not in datamodule.samples:
            print(f"skipping {split}: this data has no {split} split")
            continue
        run = {"val": trainer.validate, "test": trainer.test}.get(split)
        if run is None:
            raise DataError(f"splits: {split!r} is not one of val, test")
        out = run(model, datamodule=datamodule, ckpt_path=str(ckpt_path), weights_only=True)
        results[split] = harness.scalar_metrics(out[0]) if out else {}
    datamodule.report_load_failures()

    saved = checkpoint.get("val_metrics", {})
    harness.write_json(run_dir / "reports" / "metrics.json", {**results, "saved_val_metrics": saved})
    lines = [f"checkpoint   {ckpt_path} (epoch {checkpoint.get('epoch')}, {trained['name']})"]
    for key, now in results.get("val", {}).items():
        if key in saved:
            lines.append(f"{key:<15}now {now:.4f}   saved with checkpoint {saved[key]:.4f}")
    for key, now in results.get("test", {}).items():
        lines.append(f"{key:<15}{now:.4f}")
    lines.append(f"run folder   {run_dir}")
    lines.append(f"review       tensorboard --logdir {run_dir} --samples_per_plugin images=1000")
    harness.print_summary(lines)
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with harness.job_scope():
        evaluate(cfg)


if __name__ == "__main__":
    harness.main(evaluate, main)
