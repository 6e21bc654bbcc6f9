"""Confusion matrix over the whole split: a readable figure, the top confused pairs, a CSV."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torchmetrics.functional.classification import multiclass_confusion_matrix

from callbacks import rendering
from callbacks.review import REVIEW_SPLITS, SplitReview
from callbacks.sample_outputs import EpochOutputs
from runs.folder import RunFolder


def confused_pairs(matrix: np.ndarray, top: int) -> list[tuple[int, int, int, float]]:
    """The ``top`` off-diagonal cells by count: (true, predicted, count, share of the true class)."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    support = matrix.sum(axis=1)
    pairs = []
    for flat in order:
        t, p = np.unravel_index(flat, matrix.shape)
        if off[t, p] == 0:
            break
        pairs.append((int(t), int(p), int(off[t, p]), float(off[t, p] / max(1, support[t]))))
    return pairs


class ConfusionMatrix(SplitReview):
    """Logs the confusion matrix of the validation split each epoch (and of the test split).

    Up to ``max_grid_classes`` classes: counts and row-normalised rates side by side, class
    names on both axes. More classes than that make an unreadable grid, so the figure shows
    the ``top_pairs`` most confused (true -> predicted) pairs instead. Either way the top
    pairs go to TensorBoard text and the full matrix to ``reports/<split>/confusion_matrix.csv``.

    Args:
        every_n_epochs: review validation outputs every n epochs (0: only validate/test runs).
        max_grid_classes: most classes drawn as a grid.
        top_pairs: confused pairs listed.
        splits: which of ``val`` and ``test`` to review.

    Raises:
        ValueError: an argument is out of range.

    Example::

        trainer = Trainer(callbacks=[ConfusionMatrix(max_grid_classes=20)])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        max_grid_classes: int = 30,
        top_pairs: int = 20,
        splits: tuple[str, ...] | list[str] = REVIEW_SPLITS,
    ) -> None:
        super().__init__(every_n_epochs, splits)
        if max_grid_classes < 2 or top_pairs < 1:
            raise ValueError(
                f"ConfusionMatrix(max_grid_classes={max_grid_classes}, top_pairs={top_pairs}): need "
                "max_grid_classes >= 2 and top_pairs >= 1."
            )
        self.max_grid_classes = max_grid_classes
        self.top_pairs = top_pairs

    def review(self, trainer: Trainer, pl_module: LightningModule, outputs: EpochOutputs, step: int) -> None:
        names = trainer.datamodule.class_names
        matrix = multiclass_confusion_matrix(
            torch.from_numpy(outputs.pred), torch.from_numpy(outputs.target), num_classes=len(names)
        ).numpy()
        split = outputs.split
        RunFolder.of(trainer).write_csv(
            f"{split}/confusion_matrix.csv",
            ["true \\ predicted", *names],
            [[name, *row.tolist()] for name, row in zip(names, matrix, strict=True)],
        )
        pairs = confused_pairs(matrix, self.top_pairs)
        accuracy = np.trace(matrix) / max(1, matrix.sum())
        title = f"{split} epoch {step}: {matrix.sum()} samples, accuracy {accuracy:.1%}"
        if len(names) <= self.max_grid_classes:
            figure = self._grid_figure(matrix, names, title)
        else:
            figure = self._pairs_figure(pairs, names, title)
        rendering.log_image(trainer, f"{split}/confusion_matrix", figure, step)
        rows = [(f"{names[t]} → {names[p]}", n, f"{share:.1%}") for t, p, n, share in pairs]
        text = f"**{title}.** Most confused pairs (true → predicted, count, share of the true class):\n\n" + (
            rendering.markdown_table(["pair", "count", "share"], rows) if rows else "_no mistakes_"
        )
        rendering.log_text(trainer, f"{split}/confused_pairs", text, step)

    @staticmethod
    def _grid_figure(matrix: np.ndarray, names: list[str], title: str) -> np.ndarray:
        import matplotlib.pyplot as plt

        n = len(names)
        rates = matrix / np.maximum(1, matrix.sum(axis=1, keepdims=True))
        side = max(4.5, 0.42 * n + 2.0)
        annotate = n <= 20
        fontsize = 9 if n <= 12 else 7
        fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side + 0.6), dpi=100, layout="constrained")
        for ax, values, label in ((axes[0], matrix, "count"), (axes[1], rates * 100, "% of true class")):
            image = ax.imshow(values, cmap="Blues", vmin=0, vmax=(values.max() or 1) if label == "count" else 100)
            ax.set_xticks(range(n), labels=names, rotation=90 if n > 8 else 0, fontsize=fontsize)
            ax.set_yticks(range(n), labels=names, fontsize=fontsize)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title("counts" if label == "count" else "row-normalised (% of true class)", fontsize=10)
            fig.colorbar(image, ax=ax, shrink=0.8, label=label)
            if annotate:
                threshold = image.norm.vmax / 2
                for t in range(n):
                    for p in range(n):
                        if matrix[t, p]:
                            text = f"{int(values[t, p])}" if label == "count" else f"{values[t, p]:.0f}"
                            colour = "white" if values[t, p] > threshold else "black"
                            ax.text(p, t, text, ha="center", va="center", fontsize=fontsize - 1, color=colour)
        fig.suptitle(title, fontsize=11)
        return rendering.figure_to_array(fig)

    @staticmethod
    def _pairs_figure(pairs, names: list[str], title: str) -> np.ndarray:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 0.32 * max(3, len(pairs)) + 1.4), dpi=100, layout="constrained")
        labels = [f"{names[t]} → {names[p]}" for t, p, _, _ in pairs][::-1]
        counts = [n for _, _, n, _ in pairs][::-1]
        ax.barh(range(len(pairs)), counts, color="#c0392b")
        ax.set_yticks(range(len(pairs)), labels=labels, fontsize=8)
        for y, (count, (_, _, _, share)) in enumerate(zip(counts, pairs[::-1], strict=True)):
            ax.text(count, y, f" {count} ({share:.0%})", va="center", fontsize=8)
        ax.set_xlabel("samples (share of the true class)")
        ax.set_title(
            f"{title}\nmost confused pairs, true → predicted ({len(names)} classes: too many for a grid)", fontsize=10
        )
        return rendering.figure_to_array(fig)
