"""The hardest errors: galleries of the worst mistakes, their nearest training images, and a CSV."""

from __future__ import annotations

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from callbacks import rendering
from callbacks.outputs_reader import Need
from callbacks.rendering import BAD, GOOD, INK
from callbacks.review import REVIEW_SPLITS, SplitReview
from callbacks.sample_outputs import EpochOutputs, l2_normalize
from runs.folder import RunFolder

CSV_HEADER = ["rank", "index", "path", "true", "predicted", "confidence", "prob_true", "loss"]


def nearest(queries: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the ``k`` most cosine-similar ``pool`` rows for each query."""
    return np.argsort(-(l2_normalize(queries) @ l2_normalize(pool).T), axis=1, kind="stable")[:, :k]


class HardestErrors(SplitReview):
    """Shows the ``k`` misclassified samples with the highest loss, and the ``k`` most confident
    mistakes, as galleries of the original (un-augmented) images captioned with the true class,
    the predicted class and its confidence.

    All mistakes of the split, sorted by loss, go to ``reports/<split>/hardest.csv``. From
    the second epoch on, the nearest training images (cosine similarity of pooled
    embeddings from the previous training epoch) of the ``neighbour_queries`` hardest errors
    are shown with their labels: a near-copy with the same wrong label points at a
    labelling problem, not a model problem.

    Args:
        every_n_epochs: review validation outputs every n epochs (0: only validate/test runs).
        k: mistakes per gallery.
        thumbnail_size: gallery thumbnail side in px.
        neighbour_queries: hardest errors whose nearest training images are shown (0: off).
        neighbours: training images shown per error.
        splits: which of ``val`` and ``test`` to review.

    Raises:
        ValueError: an argument is out of range.

    Example::

        trainer = Trainer(callbacks=[HardestErrors(k=24)])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        k: int = 16,
        thumbnail_size: int = 96,
        neighbour_queries: int = 4,
        neighbours: int = 5,
        splits: tuple[str, ...] | list[str] = REVIEW_SPLITS,
    ) -> None:
        super().__init__(every_n_epochs, splits)
        if k < 1 or thumbnail_size < 16 or neighbour_queries < 0 or neighbours < 1:
            raise ValueError(
                f"HardestErrors(k={k}, thumbnail_size={thumbnail_size}, neighbour_queries={neighbour_queries}, "
                f"neighbours={neighbours}): need k >= 1, thumbnail_size >= 16, neighbour_queries >= 0, neighbours >= 1."
            )
        self.k, self.neighbour_queries, self.neighbours = k, neighbour_queries, neighbours
        self.needs_embeddings = neighbour_queries > 0
        self.thumbs = rendering.ThumbnailCache(thumbnail_size)

    @override
    def needs(self, trainer: Trainer, stage: str) -> list[Need]:
        # Nearest training images: the training embeddings of the previous epoch (when fitting).
        train = [Need("train", logits=False, embeddings=True)] if self.needs_embeddings and stage == "fit" else []
        return super().needs(trainer, stage) + train

    def review(self, trainer: Trainer, pl_module: LightningModule, outputs: EpochOutputs, step: int) -> None:
        datamodule = trainer.datamodule
        names = datamodule.class_names
        split = outputs.split
        samples = datamodule.samples[split]
        wrong = np.flatnonzero(~outputs.correct)
        by_loss = wrong[np.argsort(-outputs.loss[wrong], kind="stable")]
        by_confidence = wrong[np.argsort(-outputs.confidence[wrong], kind="stable")]
        rows_n = np.arange(len(outputs))
        prob_true = outputs.probs[rows_n, outputs.target]
        RunFolder.of(trainer).write_csv(
            f"{split}/hardest.csv",
            CSV_HEADER,
            [
                [
                    rank,
                    int(outputs.index[r]),
                    samples[outputs.index[r]].path,
                    names[outputs.target[r]],
                    names[outputs.pred[r]],
                    round(float(outputs.confidence[r]), 4),
                    round(float(prob_true[r]), 4),
                    round(float(outputs.loss[r]), 4),
                ]
                for rank, r in enumerate(by_loss, start=1)
            ],
        )
        total = f"{len(wrong)} of {len(outputs)} misclassified"
        for tag, rows, title in (
            ("hardest_errors", by_loss[: self.k], f"{split} epoch {step}: highest-loss mistakes ({total})"),
            ("confident_mistakes", by_confidence[: self.k], f"{split} epoch {step}: most confident mistakes ({total})"),
        ):
            images = [self.thumbs(samples[outputs.index[r]].path) for r in rows]
            captions = [self._caption(outputs, r, names) for r in rows]
            rendering.log_image(trainer, f"{split}/{tag}", rendering.gallery(images, captions, title=title), step)
        if self.neighbour_queries:
            self._log_neighbours(trainer, outputs, by_loss, step)

    @staticmethod
    def _caption(outputs: EpochOutputs, row: int, names: list[str]) -> list[tuple[str, tuple[int, int, int]]]:
        return [
            (f"true: {names[outputs.target[row]]}", GOOD),
            (f"pred: {names[outputs.pred[row]]} {outputs.confidence[row]:.0%}", BAD),
            (f"#{outputs.index[row]}  loss {outputs.loss[row]:.3g}", INK),
        ]

    def _log_neighbours(self, trainer: Trainer, outputs: EpochOutputs, by_loss: np.ndarray, step: int) -> None:
        train = self.outputs.latest("train") if self.outputs else None
        if train is None or train.embedding is None or not len(train.embedding_index) or outputs.embedding is None:
            return
        have = np.isin(outputs.index[by_loss], outputs.embedding_index)
        queries = by_loss[have][: self.neighbour_queries]
        if not len(queries):
            return
        names = trainer.datamodule.class_names
        split_samples, train_samples = trainer.datamodule.samples[outputs.split], trainer.datamodule.samples["train"]
        query_emb = outputs.embedding[np.searchsorted(outputs.embedding_index, outputs.index[queries])]
        found = nearest(query_emb, train.embedding, self.neighbours)
        images, captions = [], []
        for query, hits in zip(queries, found, strict=True):
            images.append(self.thumbs(split_samples[outputs.index[query]].path))
            captions.append(self._caption(outputs, query, names))
            for hit in hits:
                train_index = train.embedding_index[hit]
                label = train_samples[train_index].label
                images.append(self.thumbs(train_samples[train_index].path))
                same = label == names[outputs.pred[query]]
                captions.append([(f"train: {label}", BAD if same else INK), (f"#{train_index}", INK), ("", INK)])
        title = (
            f"{outputs.split} epoch {step}: hardest errors (first column) and their nearest training images "
            f"(labels in red = the wrongly predicted class)"
        )
        image = rendering.gallery(images, captions, columns=1 + self.neighbours, title=title)
        rendering.log_image(trainer, f"{outputs.split}/hardest_errors_neighbours", image, step)
