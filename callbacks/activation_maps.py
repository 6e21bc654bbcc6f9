"""What the model looks at: Grad-CAM overlays on the hardest errors and on a few correct samples per class."""

from __future__ import annotations

import logging

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer

from callbacks import rendering
from callbacks.epoch_outputs import EpochOutputs
from callbacks.rendering import BAD, GOOD, INK
from callbacks.review import REVIEW_SPLITS, SplitReview
from evaluation.activation_maps import MAX_IMAGES, class_activation_maps, layer_for_input, overlay

log = logging.getLogger(__name__)


class ActivationMaps(SplitReview):
    """Grad-CAM maps (Captum) of the predicted class, overlaid on the model's input, beside the input itself:
    for the ``errors`` misclassified samples with the highest loss (``<split>/activation_maps_errors``)
    and the ``correct_per_class`` most confident correct samples of each class
    (``<split>/activation_maps_correct``). A map that lights up the background, a watermark or a
    border instead of the object means the model learnt the wrong thing.

    The target layer comes from the timm backbone's ``feature_info``, so any CNN backbone works:
    the deepest stage whose map keeps ``min_map_side`` cells across the input (the last stage at
    224 px; a shallower one on small inputs, where the last is 2 x 2), unless ``layer`` names one.

    Cost: one forward and backward pass over at most ``errors + correct_per_class x max_classes``
    (<= 64) images every ``every_n_epochs`` validation epochs and at test; nothing else. A
    backbone without a convolutional feature map (a vision transformer) switches the panel off
    with a warning.

    Args:
        every_n_epochs: validation maps every n epochs (0: only at test and in validate runs).
        errors: hardest errors shown.
        correct_per_class: correct samples shown per class.
        max_classes: classes that get correct samples (the first ones by class id).
        layer: the backbone's module to explain (e.g. ``stages.2``); ``None``: from ``feature_info``.
        min_map_side: the smallest map, in cells across the input, the automatic choice accepts.
        thumbnail_size: side of each tile in px.
        alpha: weight of the heatmap in the overlay.
        splits: which of ``val`` and ``test`` to show.

    Raises:
        ValueError: an argument is out of range, or more than 64 images per gallery pass.

    Example::

        trainer = Trainer(callbacks=[SampleOutputs(), ActivationMaps(every_n_epochs=5, errors=8)])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        errors: int = 8,
        correct_per_class: int = 1,
        max_classes: int = 16,
        layer: str | None = None,
        min_map_side: int = 7,
        thumbnail_size: int = 112,
        alpha: float = 0.45,
        splits: tuple[str, ...] | list[str] = REVIEW_SPLITS,
    ) -> None:
        super().__init__(every_n_epochs, splits)
        if errors < 0 or correct_per_class < 0 or max_classes < 1 or min_map_side < 1 or thumbnail_size < 32:
            raise ValueError(
                f"ActivationMaps(errors={errors}, correct_per_class={correct_per_class}, max_classes={max_classes}, "
                f"min_map_side={min_map_side}, thumbnail_size={thumbnail_size}): need errors >= 0, "
                "correct_per_class >= 0, max_classes >= 1, min_map_side >= 1, thumbnail_size >= 32."
            )
        if max(errors, correct_per_class * max_classes) > MAX_IMAGES:
            raise ValueError(
                f"ActivationMaps: errors={errors} and correct_per_class x max_classes = "
                f"{correct_per_class * max_classes} must each be <= {MAX_IMAGES} (one backward pass per gallery)."
            )
        if not 0 < alpha < 1:
            raise ValueError(f"ActivationMaps(alpha={alpha}) must lie in (0, 1).")
        self.errors, self.correct_per_class, self.max_classes = errors, correct_per_class, max_classes
        self.layer, self.min_map_side, self.thumbnail_size, self.alpha = layer, min_map_side, thumbnail_size, alpha
        self.disabled = ""

    def review(self, trainer: Trainer, pl_module: LightningModule, outputs: EpochOutputs, step: int) -> None:
        if self.disabled:
            return
        wrong = np.flatnonzero(~outputs.correct)
        hardest = wrong[np.argsort(-outputs.loss[wrong], kind="stable")][: self.errors]
        confident = []
        for c in range(min(self.max_classes, len(trainer.datamodule.class_names))):
            right = np.flatnonzero(outputs.correct & (outputs.target == c))
            confident.extend(right[np.argsort(-outputs.confidence[right], kind="stable")][: self.correct_per_class])
        split = outputs.split
        for tag, rows, what in (
            ("activation_maps_errors", hardest, f"the {len(hardest)} highest-loss mistakes of {len(wrong)}"),
            (
                "activation_maps_correct",
                np.asarray(confident, dtype=int),
                "the most confident correct sample per class",
            ),
        ):
            if not len(rows):
                continue
            try:
                image = self._gallery(trainer, pl_module, outputs, rows, f"{split} epoch {step}: {what}")
            except ValueError as err:  # a backbone Grad-CAM cannot explain (vision transformer tokens)
                self.disabled = str(err)
                log.warning(f"ActivationMaps is switched off for this run: {err}")
                return
            rendering.log_image(trainer, f"{split}/{tag}", image, step)

    def _gallery(
        self, trainer: Trainer, pl_module: LightningModule, outputs: EpochOutputs, rows: np.ndarray, title: str
    ) -> np.ndarray:
        datamodule = trainer.datamodule
        dataset = datamodule.dataset(outputs.split)
        prep = datamodule.preprocessing
        backbone = pl_module.backbone
        layer = self.layer or layer_for_input(backbone, prep.input_size, self.min_map_side)
        predicted = outputs.pred[rows]
        # Validation and test hooks run under inference mode, in which no gradient can be taken.
        with torch.inference_mode(False):
            batch = torch.stack([dataset[int(outputs.index[r])]["image"] for r in rows]).to(pl_module.device)
            # Cast as Lightning's own loops do (16-true, bf16-true and 64-true models take their dtype).
            model_input = trainer.precision_plugin.convert_input(batch)
            maps = class_activation_maps(backbone, model_input, predicted.tolist(), layer=layer)
        mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
        std = torch.tensor(prep.std).view(1, 3, 1, 1)
        shown = (batch.detach().float().cpu() * std + mean).clamp(0, 1)
        inputs = (shown * 255).round().byte().permute(0, 2, 3, 1).numpy()
        names = datamodule.class_names
        images, captions = [], []
        for image, cam, r in zip(inputs, maps, rows, strict=True):
            # Enlarged with hard pixel edges first, so the map is drawn smoothly over the tile, not in blocks.
            factor = max(1, self.thumbnail_size // max(image.shape[:2]))
            image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
            images += [rendering.fit_square(image, self.thumbnail_size)]
            images += [rendering.fit_square(overlay(image, cam, alpha=self.alpha), self.thumbnail_size)]
            right = outputs.correct[r]
            captions.append(
                [(f"true: {names[outputs.target[r]]}", GOOD), (f"#{outputs.index[r]} loss {outputs.loss[r]:.3g}", INK)]
            )
            captions.append(
                [(f"pred: {names[outputs.pred[r]]} {outputs.confidence[r]:.0%}", GOOD if right else BAD),
                 ("Grad-CAM", INK)]
            )  # fmt: skip
        title += (
            f" (each: the model's input, then where the predicted class's score came from, Grad-CAM at {layer}; "
            "red = most)"
        )
        return rendering.gallery(images, captions, columns=8, title=title)
