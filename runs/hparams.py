"""The hyper-parameters that tell runs apart, logged once at the end against the run's real metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Trainer
from omegaconf import DictConfig, OmegaConf

# The config values shown in TensorBoard's hparams tab, per group.
KEEP = {
    "model": (
        "name",
        "lr",
        "backbone_lr_scale",
        "weight_decay",
        "warmup_epochs",
        "label_smoothing",
        "freeze_backbone_epochs",
        "drop_rate",
        "pretrained",
    ),
    "data": ("source", "image_size", "batch_size", "label_noise", "label_noise_type", "num_folds", "fold"),
    "trainer": ("max_epochs", "precision", "devices", "num_nodes"),
}


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Metrics as plain floats, NaNs left out."""
    out = {}
    for key, value in metrics.items():
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        if not math.isnan(value):
            out[key] = value
    return out


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The values that tell runs apart, flattened for TensorBoard's hparams tab: the config groups
    chosen, the values in :data:`KEEP`, the seed, and the run's ``tags`` (joined with commas)."""
    params: dict[str, Any] = {}
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        params.update({f"choice/{k}": v for k, v in choices.items() if not k.startswith("hydra/") and v})
    except ValueError:  # not inside a Hydra job (a DDP child, a test)
        pass
    for group, keys in KEEP.items():
        for key in keys:
            value = OmegaConf.select(cfg, f"{group}.{key}")
            if value is not None:
                params[f"{group}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    params["seed"] = cfg.get("seed")
    tags = cfg.get("tags") or []
    params["tags"] = ",".join(str(t) for t in tags)
    return params


def log_with_metrics(trainer: Trainer, cfg: DictConfig, metrics: Mapping[str, float]) -> None:
    """Hyper-parameters against the run's real final metrics (``hparams/...``), once, at the end,
    so TensorBoard's hparams tab compares runs by what they achieved, not ``hp_metric = -1``.
    Call on global rank zero only."""
    from lightning.pytorch.loggers import TensorBoardLogger

    final = {f"hparams/{k.replace('/', '_')}": v for k, v in metrics.items() if k.startswith(("val/", "test/"))}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hyperparameters(cfg), metrics=final)
        else:  # e.g. CSVLogger: hparams.yaml, and the final metrics as one more row
            logger.log_hyperparams(hyperparameters(cfg))
            logger.log_metrics(final, step=trainer.global_step)
        logger.save()
