"""What the model sees: original training images beside the same images after the train augmentation."""

from __future__ import annotations

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from callbacks import rendering
from callbacks.outputs_reader import check_datamodule
from callbacks.rendering import INK
from datamodules.image_io import UnreadableImageError, read_rgb
from runs.folder import RunFolder


class AugmentationPreview(Callback):
    """At the start of fitting, a grid of a few training images per class: the original file,
    then ``draws`` independent draws of the train pipeline (crop, augmentations; before
    normalisation). Bad crops, colour bugs and over-strong degradations show up here before
    hours are spent. Logged as ``train/augmentation_preview`` and saved to
    ``reports/augmentation_preview.png``.

    Args:
        per_class: images shown per class.
        max_classes: most classes shown (the first ones in class order).
        draws: augmented versions per image.
        thumbnail_size: side of each tile in px.
        seed: which images, and which augmentations, are drawn.

    Raises:
        ValueError: an argument is out of range.

    Example::

        trainer = Trainer(callbacks=[AugmentationPreview(per_class=3, draws=5)])
    """

    def __init__(
        self, per_class: int = 2, max_classes: int = 8, draws: int = 4, thumbnail_size: int = 112, seed: int = 0
    ) -> None:
        if per_class < 1 or max_classes < 1 or draws < 1 or thumbnail_size < 16:
            raise ValueError(
                f"AugmentationPreview(per_class={per_class}, max_classes={max_classes}, draws={draws}, "
                f"thumbnail_size={thumbnail_size}): need positive counts and thumbnail_size >= 16."
            )
        self.per_class, self.max_classes, self.draws = per_class, max_classes, draws
        self.thumbnail_size, self.seed = thumbnail_size, seed

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_datamodule(trainer, self)

    @override
    @rank_zero_only
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        pipeline = datamodule.train_transform(normalize=False)
        pipeline.set_random_seed(self.seed)
        targets = datamodule.targets("train")
        samples = datamodule.samples["train"]
        rng = np.random.default_rng(self.seed)
        thumbs = rendering.ThumbnailCache(self.thumbnail_size)
        images, captions = [], []
        for c, name in enumerate(datamodule.class_names[: self.max_classes]):
            members = np.flatnonzero(targets == c)
            for i in rng.choice(members, size=min(self.per_class, len(members)), replace=False):
                try:
                    original = read_rgb(samples[i].path)
                except UnreadableImageError:
                    continue
                h, w = original.shape[:2]
                images.append(thumbs(samples[i].path))
                captions.append([(f"{name} #{i}", INK), (f"original {w}x{h}", INK)])
                for d in range(self.draws):
                    augmented = pipeline(image=original)["image"]
                    images.append(rendering.fit_square(augmented, self.thumbnail_size))
                    captions.append([("", INK), (f"augmented {d + 1}", INK)])
        size = datamodule.preprocessing.input_size
        title = (
            f"train augmentation: original | {self.draws} draws, at the model input size "
            f"{size[1]}x{size[0]} (shown {self.thumbnail_size} px)"
        )
        grid = rendering.gallery(images, captions, columns=1 + self.draws, title=title)
        rendering.save_png(RunFolder.of(trainer).report("augmentation_preview.png"), grid)
        rendering.log_image(trainer, "train/augmentation_preview", grid, trainer.current_epoch)
