"""The base class of every callback that reads the per-sample outputs the collector gathers: review
panels, label suspects, held-out predictions. It finds the collector, says what it needs, and
checks the data module once, in ``setup``."""

from __future__ import annotations

from dataclasses import dataclass

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from callbacks.epoch_outputs import EpochOutputs
from callbacks.sample_outputs import SampleOutputs
from runs.errors import ConfigError


@dataclass(frozen=True)
class Need:
    """What a reader needs collected for one split.

    Attributes:
        split: ``train``, ``val``, ``test`` or ``heldout``.
        logits: keep the N x C logits (else only O(N) label statistics).
        embeddings: keep pooled embeddings of the collector's bounded subset.
    """

    split: str
    logits: bool = True
    embeddings: bool = False


class OutputsReader(Callback):
    """Base class: subclasses say in :meth:`needs` which splits they read; ``setup`` finds the
    run's :class:`~callbacks.sample_outputs.SampleOutputs` (``self.outputs``) and registers them.

    Raises:
        ConfigError: (in ``setup``) the callbacks have no collector, or the data module is not
            lookout's (class names and file paths are needed).
    """

    outputs: SampleOutputs | None = None

    def needs(self, trainer: Trainer, stage: str) -> list[Need]:
        """The splits this callback reads in ``stage`` (``fit``, ``validate``, ``test``, ``predict``)."""
        return []

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        needs = self.needs(trainer, stage)
        if not needs:
            return
        check_datamodule(trainer, self)
        self.outputs = find_collector(trainer, self)
        for need in needs:
            self.outputs.require(need.split, logits=need.logits, embeddings=need.embeddings)

    def best_checkpoint_outputs(self, trainer: Trainer, split: str = "val") -> tuple[EpochOutputs | None, str]:
        """At the end of fitting: ``split``'s outputs of the best checkpoint's epoch and that
        checkpoint's path. ``(None, "")`` or an empty path when there is no best checkpoint (no
        ModelCheckpoint with a monitor) or its epoch's outputs are gone (it came before a resume)."""
        checkpoint = trainer.checkpoint_callback
        path = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
        return (self.outputs.best(split) if self.outputs is not None else None), path


def find_collector(trainer: Trainer, reader: Callback) -> SampleOutputs:
    """The run's collector. It is part of the callbacks config, never added behind the user's back."""
    for callback in trainer.callbacks:
        if isinstance(callback, SampleOutputs):
            return callback
    name = type(reader).__name__
    raise ConfigError(
        f"{name} reads the per-sample outputs that SampleOutputs collects, but the run's callbacks have none. "
        "Keep callbacks.sample_outputs (it is in callbacks=default and callbacks=review), or add it with "
        "'+callbacks.sample_outputs={_target_:callbacks.SampleOutputs}', or switch the panel off."
    )


def check_datamodule(trainer: Trainer, callback: Callback) -> None:
    """The readers take class names, paths and targets from lookout's data module."""
    datamodule = trainer.datamodule
    if datamodule is None or not all(hasattr(datamodule, a) for a in ("class_names", "samples", "targets")):
        raise ConfigError(
            f"{type(callback).__name__} needs lookout's ImageDataModule (class names and file paths of each "
            f"sample); got {type(datamodule).__name__}. Pass it as `trainer.fit(model, datamodule=...)`."
        )
