"""What tests put into a run through the config to look at its norm layers on every DDP rank:
a callback (`+callbacks.probe._target_=tests.layer_probe.NormLayerProbe`) and a CPU strategy
that can hold synchronised BatchNorm (`trainer.strategy._target_=tests.layer_probe.UnwrappedDDPStrategy`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from lightning.pytorch import Callback
from lightning.pytorch.strategies import DDPStrategy
from torch import nn


def norm_layers(model: nn.Module) -> dict:
    """The model's normalisation layers: count per class, and the activation each fused layer holds."""
    return {
        "classes": dict(Counter(type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__)),
        # name -> activation class, for every norm layer that holds one (used or not)
        "acts": {
            name: type(m.act).__name__
            for name, m in model.named_modules()
            if "Norm" in type(m).__name__ and isinstance(getattr(m, "act", None), nn.Module)
        },
    }


class NormLayerProbe(Callback):
    """Writes each rank's norm layers (see :func:`norm_layers`) while it trains and tests, as
    ``<out_dir>/<stage>_rank<global rank>.json``, so a test can read what every process ran."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def _write(self, stage: str, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"world_size": trainer.world_size, **norm_layers(pl_module)}
        (self.out_dir / f"{stage}_rank{trainer.global_rank}.json").write_text(json.dumps(record))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:  # after a real training step through the layers
            self._write("fit", trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._write("test", trainer, pl_module)


class UnwrappedDDPStrategy(DDPStrategy):
    """Lightning's DDP (processes, process group, layer sync, samplers) without torch's
    ``DistributedDataParallel`` wrapper, which refuses CPU modules holding SyncBatchNorm layers.

    For tests only: gradients are not averaged across ranks. It lets a 2-process CPU run show
    that a layer-sync plugin is applied and reverted on every rank.
    """

    def _setup_model(self, model: nn.Module) -> nn.Module:
        return model
