"""The unfamiliar-input index of a run: embeddings of the training images under the best checkpoint,
saved at the end of fitting with the distance threshold set on validation, for ``predict.py``."""

from __future__ import annotations

import copy

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Subset
from typing_extensions import override

from callbacks import rendering
from callbacks.epoch_outputs import stratified_subset
from callbacks.outputs_reader import Need, OutputsReader
from datamodules.dataset import ImageDataset, collate_skipping_failures
from inference.familiarity import DEFAULT_K, DEFAULT_QUANTILE, FamiliarityIndex
from inference.run_files import INDEX_FOLDER
from runs.checkpoints import load_file
from runs.folder import RunFolder


class UnfamiliarInputs(OutputsReader):
    """Saves a nearest-neighbour index of the training images' embeddings (``<run>/familiarity/``) with
    the unfamiliar-input threshold set on validation (:class:`inference.familiarity.FamiliarityIndex`).

    The index must describe the model ``predict.py`` runs, the best checkpoint, and images as
    ``predict.py`` sees them. So at the end of fitting global rank zero loads the best checkpoint's
    weights into a copy of the backbone and makes one no-grad pass, in eval mode with the evaluation
    transform, over a stratified subset of at most ``max_train_images`` training images: the cost of
    validating that many images once (for the built-in data: four times its 500-image validation). The
    training steps' own embeddings would cost nothing, but they come from augmented images, from
    weights that change during the epoch and from BatchNorm in training mode, so their distances do
    not compare with those of new images. The validation embeddings that set the threshold are the
    collector's bounded subset of the best epoch (``SampleOutputs.best("val")``): same weights, eval
    mode, no extra pass. The threshold is their ``quantile`` (by default about 5% of images like the
    validation ones are flagged).

    Memory and disk: ``max_train_images x D`` float32 (2,000 x 1,280 values: 10 MB).

    Args:
        max_train_images: most training images in the index (a seeded, stratified subset).
        k: the score is the cosine distance to the ``k``-th nearest training embedding.
        quantile: the validation quantile that becomes the threshold, in (0, 1).
        seed: seed of the training subset.

    Raises:
        ValueError: an argument out of range.
        ConfigError: (in ``setup``) the callbacks have no ``SampleOutputs`` collector.

    Example::

        trainer = Trainer(callbacks=[SampleOutputs(), ModelCheckpoint(monitor="val/acc", mode="max"),
                                     UnfamiliarInputs(max_train_images=5000)])
    """

    def __init__(
        self, max_train_images: int = 2000, k: int = DEFAULT_K, quantile: float = DEFAULT_QUANTILE, seed: int = 0
    ) -> None:
        if not isinstance(max_train_images, int) or max_train_images < 1:
            raise ValueError(f"UnfamiliarInputs(max_train_images={max_train_images}) must be a positive integer.")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"UnfamiliarInputs(k={k}) must be a positive integer (the k-th nearest neighbour).")
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"UnfamiliarInputs(quantile={quantile}) must be in (0, 1), e.g. 0.95.")
        self.max_train_images = max_train_images
        self.k = k
        self.quantile = float(quantile)
        self.seed = seed

    @override
    def needs(self, trainer: Trainer, stage: str) -> list[Need]:
        return [Need("val", logits=False, embeddings=True)] if stage == "fit" else []

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.outputs is None:
            return
        val, path = self.best_checkpoint_outputs(trainer)
        if val is None or val.embedding is None or not len(val.embedding) or not path:
            rank_zero_warn(
                "UnfamiliarInputs: no validation embeddings of a best checkpoint (no ModelCheckpoint with a monitor, "
                "callbacks.sample_outputs.max_embeddings=0, or the best epoch came before a resume); the "
                "unfamiliar-input index is not saved."
            )
            return
        if trainer.is_global_zero:
            self._save(trainer, pl_module, path, val.embedding)
        trainer.strategy.barrier()  # the other ranks wait here while rank zero makes the pass

    def _save(self, trainer: Trainer, pl_module: LightningModule, path: str, val_embeddings: np.ndarray) -> None:
        saved = load_file(path, "the best checkpoint")
        backbone = copy.deepcopy(pl_module.backbone)
        prefix = "backbone."
        backbone.load_state_dict({k[len(prefix) :]: v for k, v in saved["state_dict"].items() if k.startswith(prefix)})
        train = self._train_embeddings(trainer, backbone.eval(), pl_module.device)
        if not len(train):
            rank_zero_warn("UnfamiliarInputs: no training image could be read; the index is not saved.")
            return
        epoch = saved.get("epoch")
        index = FamiliarityIndex(
            train, k=self.k, info={"checkpoint": path, "epoch": epoch if isinstance(epoch, int) else -1}
        )
        threshold = index.calibrate(val_embeddings, quantile=self.quantile)
        folder = RunFolder.of(trainer)
        index.save(folder.root / INDEX_FOLDER)
        rendering.log_text(
            trainer,
            "val/unfamiliar_inputs",
            f"Unfamiliar-input index of {len(index)} training images (best checkpoint, epoch {epoch}): an input whose "
            f"cosine distance to its {index.k}-th nearest training image exceeds **{threshold:.4f}** (the "
            f"{self.quantile:.0%} quantile of {len(val_embeddings)} validation images) is flagged `unfamiliar` "
            f"by predict.py. Saved in `{folder.root / INDEX_FOLDER}`.",
            trainer.current_epoch,
        )

    def _train_embeddings(self, trainer: Trainer, backbone: torch.nn.Module, device: torch.device) -> np.ndarray:
        datamodule = trainer.datamodule
        subset = stratified_subset(datamodule.targets("train"), self.max_train_images, self.seed)
        dataset = ImageDataset(
            [s.path for s in datamodule.samples["train"]], datamodule.targets("train"), datamodule.eval_transform()
        )
        options = datamodule.loader
        loader = DataLoader(
            Subset(dataset, subset.tolist()),
            batch_size=options.eval_batch_size or 2 * options.batch_size,
            num_workers=options.num_workers,
            collate_fn=collate_skipping_failures,
        )
        parts = []
        precision = trainer.precision_plugin  # the run's precision, as Lightning's own loops apply it
        with torch.inference_mode(), precision.forward_context():
            for batch in loader:
                if batch["image"].numel():
                    features = backbone.forward_features(precision.convert_input(batch["image"].to(device)))
                    parts.append(backbone.forward_head(features, pre_logits=True).float().cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
