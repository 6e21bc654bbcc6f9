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
