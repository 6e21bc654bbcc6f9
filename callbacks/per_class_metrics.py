"""Precision, recall, F1 and support per class, worst classes first."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torchmetrics.functional.classification import (
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from callbacks import rendering
from callbacks.review import REVIEW_SPLITS, SplitReview
from callbacks.sample_outputs import EpochOutputs
from runs.folder import RunFolder


class PerClassMetrics(SplitReview):
    """Per-class precision, recall, F1 and support of the validation (and test) split.

    As scalars ``<split>_per_class/<metric>/<class>`` (up to ``max_scalar_classes`` classes,
    so a 1,000-class run does not flood the scalars tab), as a text table sorted by F1, worst
    first, and as ``reports/<split>/per_class_metrics.csv``.

    Args:
        every_n_epochs: review validation outputs every n epochs (0: only validate/test runs).
        max_scalar_classes: most classes logged as scalars.
        splits: which of ``val`` and ``test`` to review.

    Raises:
        ValueError: ``max_scalar_classes`` is negative.

    Example::

        trainer = Trainer(callbacks=[PerClassMetrics(max_scalar_classes=20)])
    """

    def __init__(
        self, every_n_epochs: int = 1, max_scalar_classes: int = 50, splits: tuple[str, ...] | list[str] = REVIEW_SPLITS
    ) -> None:
        super().__init__(every_n_epochs, splits)
        if max_scalar_classes < 0:
            raise ValueError(f"PerClassMetrics(max_scalar_classes={max_scalar_classes}) must be >= 0.")
        self.max_scalar_classes = max_scalar_classes

    @staticmethod
    def compute(outputs: EpochOutputs, num_classes: int) -> dict[str, np.ndarray]:
        pred, target = torch.from_numpy(outputs.pred), torch.from_numpy(outputs.target)
        kwargs = {"num_classes": num_classes, "average": None}
        return {
            "precision": multiclass_precision(pred, target, **kwargs).numpy(),
            "recall": multiclass_recall(pred, target, **kwargs).numpy(),
            "f1": multiclass_f1_score(pred, target, **kwargs).numpy(),
            "support": np.bincount(outputs.target, minlength=num_classes),
        }

    def review(self, trainer: Trainer, pl_module: LightningModule, outputs: EpochOutputs, step: int) -> None:
        names = trainer.datamodule.class_names
        values = self.compute(outputs, len(names))
        present = values["support"] > 0
        # Worst F1 first (bigger classes first on ties); classes absent from the split last,
        # with blank scores: their zeros would otherwise rank them "worst".
        order = np.lexsort((-values["support"], values["f1"], ~present))
        header = ["class", "precision", "recall", "f1", "support"]
        rows = [
            [names[c]]
            + ([float(values[m][c]) for m in ("precision", "recall", "f1")] if present[c] else ["", "", ""])
            + [int(values["support"][c])]
            for c in order
        ]
        split = outputs.split
        RunFolder.of(trainer).write_csv(f"{split}/per_class_metrics.csv", header, rows)
        rendering.log_text(
            trainer,
            f"{split}/per_class_metrics",
            f"**{split} epoch {step}**, worst F1 first:\n\n" + rendering.markdown_table(header, rows),
            step,
        )
        writer = rendering.tensorboard(trainer)
        if writer is not None and len(names) <= self.max_scalar_classes:
            for metric in ("precision", "recall", "f1"):
                for c in np.flatnonzero(present):
                    name = names[c]
                    writer.add_scalar(f"{split}_per_class/{metric}/{name}", float(values[metric][c]), step)
