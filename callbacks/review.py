"""What every error-review panel shares: which splits it reads, how often, and who writes."""

from __future__ import annotations

from abc import abstractmethod

from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from callbacks.outputs_reader import Need, OutputsReader
from callbacks.sample_outputs import EpochOutputs

REVIEW_SPLITS = ("val", "test")


class SplitReview(OutputsReader):
    """Base class: reviews the gathered outputs of the validation split every ``every_n_epochs``
    epochs (not during sanity checking) and of the test split whenever it is evaluated.

    Subclasses implement :meth:`review`, which runs on global rank zero only.

    Args:
        every_n_epochs: review validation outputs after every n-th epoch; 0 reviews only
            ``trainer.validate`` / ``trainer.test`` runs.
        splits: which of ``val`` and ``test`` to review.

    Raises:
        ValueError: ``every_n_epochs`` is negative or ``splits`` names an unknown split.
    """

    needs_embeddings = False

    def __init__(self, every_n_epochs: int = 1, splits: tuple[str, ...] | list[str] = REVIEW_SPLITS) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"{type(self).__name__}(every_n_epochs={every_n_epochs}) must be >= 0.")
        unknown = set(splits) - set(REVIEW_SPLITS)
        if unknown:
            raise ValueError(f"{type(self).__name__}(splits={list(splits)}): allowed are {list(REVIEW_SPLITS)}.")
        self.every_n_epochs = every_n_epochs
        self.splits = tuple(splits)

    @override
    def needs(self, trainer: Trainer, stage: str) -> list[Need]:
        return [Need(split, embeddings=self.needs_embeddings) for split in self.splits]

    def _due(self, trainer: Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != "fit":  # trainer.validate(...): always
            return True
        return self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _run(self, trainer: Trainer, pl_module: LightningModule, split: str) -> None:
        # gather() is collective under DDP: every rank calls it, then only rank zero renders.
        outputs = self.outputs.gather(trainer, pl_module, split) if self.outputs else None
        if outputs is not None and len(outputs) and trainer.is_global_zero:
            self.review(trainer, pl_module, outputs, step=trainer.current_epoch)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if "val" in self.splits and self._due(trainer):
            self._run(trainer, pl_module, "val")

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if "test" in self.splits:
            self._run(trainer, pl_module, "test")

    @abstractmethod
    def review(self, trainer: Trainer, pl_module: LightningModule, outputs: EpochOutputs, step: int) -> None:
        """Renders findings for ``outputs``; ``step`` is the epoch, used as the TensorBoard step."""
