"""The embedding space: TensorBoard's projector with thumbnails and metadata, and a static 2-D map."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
from lightning.pytorch import LightningModule, Trainer

from callbacks import rendering
from callbacks.review import REVIEW_SPLITS, SplitReview
from callbacks.sample_outputs import EpochOutputs, l2_normalize
from runs.folder import RunFolder

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


def write_projector_entry(
    logdir: Path,
    *,
    step: int,
    tag: str,
    vectors: np.ndarray,
    header: list[str],
    rows: list[list],
    thumbnails: np.ndarray | None,
    sprite: tuple[str, int] | None = None,
) -> str | None:
    """Writes one projector entry as TensorBoard's projector plugin reads it.

    Written directly, not with ``SummaryWriter.add_embedding``, which formats every float in
    Python and composes the sprite from float tensors: about 0.8 s for 500 x 1,280 values
    against 0.2 s here, every epoch. The layout is the same: ``<step:05d>/<tag>/`` holds
    ``tensors.tsv``, ``metadata.tsv`` (with a header row) and ``sprite.png``, and
    ``projector_config.pbtxt`` lists every entry written so far.

    Args:
        logdir: the TensorBoard log folder.
        step: the epoch; one entry per step and tag.
        tag: entry name.
        vectors: ``N x D`` embeddings.
        header: metadata column names.
        rows: ``N`` metadata rows (no tabs or newlines inside values).
        thumbnails: ``N x S x S x 3`` uint8 images for the sprite, or ``None``.
        sprite: instead of ``thumbnails``, an earlier entry's sprite of the same points in the
            same order: ``(path relative to logdir, thumbnail side)``, as this function returned it.

    Returns:
        The sprite's path relative to ``logdir`` (written or reused), or ``None`` without one.
    """
    from google.protobuf import text_format
    from PIL import Image
    from tensorboard.plugins.projector import projector_config_pb2

    subdir = f"{step:05d}/{tag}"
    folder = logdir / subdir
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "tensors.tsv", vectors, fmt="%.6g", delimiter="\t")
    with open(folder / "metadata.tsv", "w") as f:
        f.write("\t".join(header) + "\n")
        f.writelines("\t".join(str(v) for v in row) + "\n" for row in rows)
    config_path = logdir / "projector_config.pbtxt"
    config = projector_config_pb2.ProjectorConfig()
    if config_path.exists():
        text_format.Merge(config_path.read_text(), config)
    name = f"{tag}:{step:05d}"
    kept = [e for e in config.embeddings if e.tensor_name != name]
    del config.embeddings[:]
    config.embeddings.extend(kept)
    entry = config.embeddings.add()
    entry.tensor_name = name
    entry.tensor_path = f"{subdir}/tensors.tsv"
    entry.metadata_path = f"{subdir}/metadata.tsv"
    if thumbnails is not None and len(thumbnails):
        n, size = len(thumbnails), thumbnails.shape[1]
        per_row = math.ceil(math.sqrt(n))
        sheet = np.full((per_row * size, per_row * size, 3), 255, np.uint8)
        for i, thumb in enumerate(thumbnails):
            r, c = divmod(i, per_row)
            sheet[r * size : (r + 1) * size, c * size : (c + 1) * size] = thumb
        Image.fromarray(sheet).save(folder / "sprite.png")
        sprite = (f"{subdir}/sprite.png", size)
    if sprite is not None:
        entry.sprite.image_path = sprite[0]
        entry.sprite.single_image_dim.extend([sprite[1], sprite[1]])
    tmp = config_path.with_name(".projector_config.pbtxt.tmp")
    tmp.write_text(text_format.MessageToString(config))
    tmp.replace(config_path)
    return sprite[0] if sprite is not None else None


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
        # The points are the same every epoch (the collector's fixed subset): their sprite is
        # written once per split and log folder, and later entries point at it.
        self._sprites: dict[tuple, tuple[str, int]] = {}

    def review(self, trainer: Trainer, pl_module: LightningModule, outputs: EpochOutputs, step: int) -> None:
        if outputs.embedding is None or not len(outputs.embedding_index):
            return
        datamodule = trainer.datamodule
        names = datamodule.class_names
        split = outputs.split
        subset = outputs.embedding_index  # the stratified subset whose embeddings were kept
        emb = outputs.embedding
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
        RunFolder.of(trainer).write_csv(f"{split}/embedding_points.csv", header, table)

        writer = rendering.tensorboard(trainer)
        if writer is not None:
            logdir = Path(writer.get_logdir())
            size = sprite_thumb_size(len(subset), self.thumbnail_size)
            key = (str(logdir), split, size, hashlib.sha1(np.asarray(subset, np.int64).tobytes()).hexdigest())
            sprite = self._sprites.get(key)
            if sprite is not None and not (logdir / sprite[0]).is_file():
                sprite = None
            thumbnails = None
            if sprite is None:
                thumbs = rendering.ThumbnailCache(size, capacity=len(subset))
                thumbnails = np.stack([thumbs(s.path) for s in samples])
            written = write_projector_entry(
                logdir,
                step=step,
                tag=f"{split}_embeddings",
                vectors=emb,
                header=header,
                # The projector reads metadata as TSV: no tabs or newlines inside a value.
                rows=[[str(v).replace("\t", " ").replace("\n", " ") for v in row] for row in table],
                thumbnails=thumbnails,
                sprite=sprite,
            )
            if written is not None:
                self._sprites[key] = (written, size)
        if self.static_map:
            image = self._pca_map(emb, target, pred, names, f"{split} epoch {step}")
            rendering.log_image(trainer, f"{split}/embedding_map", image, step)

    @staticmethod
    def _pca_map(emb: np.ndarray, target: np.ndarray, pred: np.ndarray, names: list[str], title: str) -> np.ndarray:
        import matplotlib.pyplot as plt
        from sklearn.decomposition import PCA

        # On unit vectors (cosine geometry): raw pooled features have a few huge dimensions
        # that would otherwise squeeze every class into one corner.
        unit = l2_normalize(emb)
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
