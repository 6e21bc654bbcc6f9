"""Callbacks used by tests through the config (`+callbacks.x._target_=tests.helpers...`)."""

from __future__ import annotations

from lightning.pytorch import Callback


class StopAfterEpoch(Callback):
    """Ends fitting after ``epoch`` as if the job had been interrupted there (the schedule is untouched)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class Recorder(Callback):
    """Keeps what a test inspects after a run: backbone states (at the start of training and
    after each epoch), the optimiser's step count per backbone parameter after each epoch (absent:
    no optimiser state), and the shared outputs' last gathered epoch of each split."""

    last: Recorder | None = None

    def __init__(self) -> None:
        self.backbone_states: list[dict] = []
        self.optimizer_steps: list[dict[str, int]] = []
        self.latest: dict = {}
        Recorder.last = self

    def _snapshot(self, pl_module) -> None:
        self.backbone_states.append({k: v.clone() for k, v in pl_module.backbone.state_dict().items()})

    def on_train_start(self, trainer, pl_module) -> None:
        self._snapshot(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._snapshot(pl_module)
        state = trainer.optimizers[0].state
        self.optimizer_steps.append(
            {name: int(state[p]["step"]) for name, p in pl_module.backbone.named_parameters() if p in state}
        )

    def on_fit_end(self, trainer, pl_module) -> None:
        from callbacks import SampleOutputs

        collector = next((c for c in trainer.callbacks if isinstance(c, SampleOutputs)), None)
        if collector is not None:
            self.latest = {split: collector.latest(split) for split in ("train", "val")}
            self.best = {split: collector.best(split) for split in ("train", "val")}


class EpochMetrics(Callback):
    """Appends each epoch's logged metrics (training and validation) to ``path`` as JSON lines."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import json

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, **metrics}) + "\n")
