"""What every error-review callback shares: which splits it reads, how often, and who writes."""

from __future__ import annotations

from abc import ABC, abstractmethod

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from callbacks.sample_outputs import EpochOutputs, SampleOutputs, shared_outputs

REVIEW_SPLITS = ("val", "test")


def check_datamodule(trainer: Trainer, callback: Callback) -> None:
    """The review callbacks read class names, paths and targets from lookout's data module."""
    datamodule = trainer.datamodule
    if datamodule is None or not all(hasattr(datamodule, a) for a in ("class_names", "samples", "targets")):
        raise MisconfigurationException(
            f"{type(callback).__name__} needs lookout's ImageDataModule (class names and file paths of each "
            f"sample); got {type(datamodule).__name__}. Pass it as `trainer.fit(model, datamodule=...)`."
        )


class SplitReview(Callback, ABC):
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
        self.outputs: SampleOutputs | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_datamodule(trainer, self)
        self.outputs = shared_outputs(trainer)
        for split in self.splits:
            self.outputs.require(split, embeddings=self.needs_embeddings)

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
