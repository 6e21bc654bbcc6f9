"""The embedding space: TensorBoard's projector with thumbnails and metadata, and a static 2-D map."""

from __future__ import annotations

import math

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer

from callbacks import rendering
from callbacks.review import REVIEW_SPLITS, SplitReview
from callbacks.sample_outputs import EpochOutputs

SPRITE_LIMIT = 8192  # px per side; TensorBoard's projector does not load larger sprites
METADATA_HEADER = [
    "label",
    "prediction",
    "correct",
    "confidence",
    "loss",
    "dist_own_centroid",
    "dist_pred_centroid",
    "index",
    "path",
]


def centroid_distances(embedding: np.ndarray, target: np.ndarray, pred: np.ndarray, num_classes: int):
    """Euclidean distance of each point to the centroid of its true class and of its predicted class.

    Centroids are the mean embedding of the points of each true class. A misclassified point
    much closer to the predicted class's centroid than to its own looks like that class to
    the model (a likely label error or a look-alike); one far from both is an outlier.
    """
    dim = embedding.shape[1]
    sums = np.zeros((num_classes, dim))
    np.add.at(sums, target, embedding)
    counts = np.bincount(target, minlength=num_classes)[:, None]
    centroids = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    own = np.linalg.norm(embedding - centroids[target], axis=1)
    predicted = np.linalg.norm(embedding - centroids[pred], axis=1)
    return own, predicted


def sprite_thumb_size(n: int, wanted: int) -> int:
    """Largest thumbnail side (<= wanted) whose square sprite of ``n`` images fits the projector."""
    per_row = max(1, math.ceil(math.sqrt(n)))
    return max(1, min(wanted, SPRITE_LIMIT // per_row))


class EmbeddingProjector(SplitReview):
    """Pooled embeddings in TensorBoard's projector, one entry per logged epoch, plus a 2-D PCA map.

    Points are the stratified subset of at most ``SampleOutputs.max_embeddings`` samples of the
    split, each with a thumbnail of its original file and the metadata columns
    ``label, prediction, correct, confidence, loss, dist_own_centroid, dist_pred_centroid,
    index, path`` and any metadata columns of a CSV manifest. The same table (without the
    vectors) goes to ``reports/<split>/embedding_points.csv``.

    Args:
        every_n_epochs: review validation outputs every n epochs (0: only validate/test runs).
        thumbnail_size: sprite thumbnail side in px; shrunk so the sprite stays within 8192 px.
        static_map: also log a 2-D PCA scatter, mistakes marked, for people who never open the projector.
        splits: which of ``val`` and ``test`` to review.

    Raises:
        ValueError: ``thumbnail_size`` is not positive.

    Example::

        trainer = Trainer(callbacks=[SampleOutputs(max_embeddings=1000), EmbeddingProjector()])
    """

    needs_embeddings = True

    def __init__(
        self,
        every_n_epochs: int = 1,
        thumbnail_size: int = 48,
        static_map: bool = True,
        splits: tuple[str, ...] | list[str] = REVIEW_SPLITS,
    ) -> None:
        super().__init__(every_n_epochs, splits)
        if thumbnail_size < 1:
            raise ValueError(f"EmbeddingProjector(thumbnail_size={thumbnail_size}) must be >= 1.")
        self.thumbnail_size = thumbnail_size
        self.static_map = static_map
        self._thumbs: dict[int, rendering.ThumbnailCache] = {}

    def review(self, trainer: Trainer, pl_module: LightningModule, outputs: EpochOutputs, step: int) -> None:
        if outputs.embedding is None or not len(outputs.embedding_index):
            return
        datamodule = trainer.datamodule
        names = datamodule.class_names
        split = outputs.split
        subset = np.intersect1d(self.outputs.embedding_subset(trainer, split), outputs.embedding_index)
        emb = outputs.embedding[np.searchsorted(outputs.embedding_index, subset)]
        rows = outputs.rows_of(subset)
        target, pred = outputs.target[rows], outputs.pred[rows]
        confidence, loss = outputs.confidence[rows], outputs.loss[rows]
        own, predicted = centroid_distances(emb, target, pred, len(names))
        samples = [datamodule.samples[split][i] for i in subset]
        meta_keys = sorted({k for s in samples for k in s.meta})
        header = METADATA_HEADER + meta_keys
        table = [
            [
                names[t],
                names[p],
                "yes" if t == p else "no",
                round(float(c), 4),
                round(float(lo), 4),
                round(float(d1), 4),
                round(float(d2), 4),
                int(i),
                s.path,
                *(s.meta.get(k, "") for k in meta_keys),
            ]
            for t, p, c, lo, d1, d2, i, s in zip(
                target, pred, confidence, loss, own, predicted, subset, samples, strict=True
            )
        ]
        rendering.write_csv(rendering.reports_dir(trainer, split) / "embedding_points.csv", header, table)

        writer = rendering.tensorboard(trainer)
        if writer is not None:
            size = sprite_thumb_size(len(subset), self.thumbnail_size)
            thumbs = self._thumbs.setdefault(size, rendering.ThumbnailCache(size, capacity=20000))
            sprite = np.stack([thumbs(s.path) for s in samples]).astype(np.float32) / 255.0
            writer.add_embedding(
                torch.from_numpy(emb),
                # The projector reads metadata as TSV: no tabs or newlines inside a value.
                metadata=[[str(v).replace("\t", " ").replace("\n", " ") for v in row] for row in table],
                label_img=torch.from_numpy(sprite).permute(0, 3, 1, 2),
                global_step=step,
                tag=f"{split}_embeddings",
                metadata_header=header,
            )
        if self.static_map:
            image = self._pca_map(emb, target, pred, names, f"{split} epoch {step}")
            rendering.log_image(trainer, f"{split}/embedding_map", image, step)

    @staticmethod
    def _pca_map(emb: np.ndarray, target: np.ndarray, pred: np.ndarray, names: list[str], title: str) -> np.ndarray:
        import matplotlib.pyplot as plt
        from sklearn.decomposition import PCA

        # On unit vectors (cosine geometry): raw pooled features have a few huge dimensions
        # that would otherwise squeeze every class into one corner.
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        points = PCA(n_components=2, random_state=0).fit_transform(unit) if len(emb) > 2 else np.zeros((len(emb), 2))
        wrong = target != pred
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        fig, ax = plt.subplots(figsize=(8.5, 7), dpi=100, layout="constrained")
        colours = [cmap(t % cmap.N) for t in target]
        ax.scatter(
            points[~wrong, 0],
            points[~wrong, 1],
            c=[colours[i] for i in np.flatnonzero(~wrong)],
            s=10,
            alpha=0.6,
            linewidths=0,
        )
        ax.scatter(
            points[wrong, 0],
            points[wrong, 1],
            c=[colours[i] for i in np.flatnonzero(wrong)],
            s=60,
            marker="X",
            edgecolors="black",
            linewidths=0.8,
            label="misclassified (colour = true class)",
        )
        if len(names) <= 20:
            for c, name in enumerate(names):
                ax.scatter([], [], color=cmap(c % cmap.N), s=30, label=name)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
        ax.set_title(
            f"{title}: PCA of L2-normalised pooled embeddings, {len(emb)} points, {wrong.sum()} misclassified (X)",
            fontsize=10,
        )
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        return rendering.figure_to_array(fig)
