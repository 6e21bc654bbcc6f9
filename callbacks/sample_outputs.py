"""The shared per-sample plumbing: collect each step's outputs, gather them across ranks once per
epoch, de-duplicate by index, and hand the same result to every callback that asks.

The review callbacks never run their own pass over the data; they read what the training,
validation, test or predict steps already computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from callbacks.epoch_outputs import EpochOutputs, l2_normalize, label_statistics, stratified_subset
from models.outputs import PREDICT_SPLITS, STAGE_SPLIT, StepOutput

# EpochOutputs and its helpers live in callbacks.epoch_outputs; they are imported from here too.
__all__ = ["EpochOutputs", "SampleOutputs", "l2_normalize", "label_statistics", "stratified_subset"]


class SampleOutputs(Callback):
    """Collects per-sample step outputs and gathers them across ranks, once per split and epoch.

    Every callback that reads per-sample outputs (an :class:`~callbacks.outputs_reader.OutputsReader`)
    finds this callback in its ``setup`` and calls :meth:`require` for the splits it reads; only
    those are collected. It is part of the callbacks config (``callbacks.sample_outputs``).

    Memory, for the epoch in progress: O(N) numbers per collected split, plus N x C logits
    for the splits whose logits a callback reads (validation and test, not training), plus
    embeddings for at most ``max_embeddings`` samples per split (a seeded, stratified subset,
    the same every epoch). The last gathered epoch of each split is kept until replaced.

    Args:
        max_embeddings: most samples per split whose pooled embedding is kept each epoch.
        seed: seed of the embedding subset.

    Raises:
        ValueError: ``max_embeddings`` is negative.

    Example::

        trainer = Trainer(callbacks=[SampleOutputs(max_embeddings=1000), ConfusionMatrix()])
    """

    def __init__(self, max_embeddings: int = 2000, seed: int = 0) -> None:
        if max_embeddings < 0:
            raise ValueError(f"SampleOutputs(max_embeddings={max_embeddings}) must be >= 0.")
        self.max_embeddings = max_embeddings
        self.seed = seed
        self._wanted: dict[str, dict[str, bool]] = {}  # split -> {"logits": ..., "embeddings": ...}
        self._buffers: dict[str, dict[str, list[torch.Tensor]]] = {}
        self._subset_masks: dict[str, torch.Tensor] = {}
        self._subsets: dict[str, np.ndarray] = {}
        self._cache: dict[str, EpochOutputs] = {}  # this epoch's gathered outputs
        self._latest: dict[str, EpochOutputs] = {}  # the last completed epoch's, kept until replaced
        self._best: dict[str, EpochOutputs] = {}  # those of the epoch the best checkpoint was saved at
        self._best_path = ""

    def require(self, split: str, *, logits: bool = True, embeddings: bool = False) -> None:
        """Collects ``split`` (``train``, ``val``, ``test``, ``heldout``): always indices, targets,
        losses and label statistics; full logits and embeddings when asked for."""
        wanted = self._wanted.setdefault(split, {"logits": False, "embeddings": False})
        wanted["logits"] |= logits
        wanted["embeddings"] |= embeddings

    def latest(self, split: str) -> EpochOutputs | None:
        """The most recently gathered outputs of ``split`` (e.g. the previous training epoch's)."""
        return self._latest.get(split)

    def best(self, split: str) -> EpochOutputs | None:
        """The gathered outputs of ``split`` from the epoch the run's best checkpoint
        (``trainer.checkpoint_callback.best_model_path``) was saved at; known from the epoch after
        it, and at ``on_fit_end``. Callbacks that fit something to the final model (a temperature,
        thresholds) read the validation outputs of that model here instead of making another pass.
        ``None`` before, without a checkpoint callback, or when the best epoch was before a resume."""
        return self._best.get(split)

    def _track_best(self, trainer: Trainer) -> None:
        # Checkpoints are saved at the end of a training epoch, after its validation: when the best
        # path has just changed, the latest gathered outputs are those of the new best epoch.
        # (The file name is often fixed, e.g. best.ckpt: the score tells a new best apart.)
        checkpoint = trainer.checkpoint_callback
        path = getattr(checkpoint, "best_model_path", "") or ""
        score = getattr(checkpoint, "best_model_score", None)
        key = f"{path}:{float(score) if score is not None else ''}"
        if path and key != self._best_path:
            self._best_path = key
            self._best = dict(self._latest)

    def embedding_subset(self, trainer: Trainer, split: str) -> np.ndarray:
        """Indices whose embeddings are kept for ``split`` (seeded, stratified, fixed for the run)."""
        if split not in self._subsets:
            targets = trainer.datamodule.targets(split)
            self._subsets[split] = stratified_subset(targets, self.max_embeddings, self.seed)
        return self._subsets[split]

    # ------------------------------------------------------------------ collecting
    def _split(self, trainer: Trainer, stage: str) -> str:
        split = STAGE_SPLIT[stage]
        if split in PREDICT_SPLITS:  # a K-fold job's held-out fold, or unlabelled images
            samples = trainer.datamodule.samples
            split = next((s for s in PREDICT_SPLITS if s in samples), split)
        return split

    def _start(self, trainer: Trainer, stage: str) -> None:
        split = self._split(trainer, stage)
        self._cache.pop(split, None)
        if split in self._wanted and not trainer.sanity_checking:
            keys = ("index", "target", "loss", "margin", "p_target", "other_class", "logits", "emb_index", "emb")
            self._buffers[split] = {key: [] for key in keys}
        else:
            self._buffers.pop(split, None)

    def _collect(self, trainer: Trainer, pl_module: LightningModule, stage: str, outputs: Any) -> None:
        split = self._split(trainer, stage)
        buffers = self._buffers.get(split)
        step = StepOutput.of(outputs)
        if buffers is None or step is None:
            return
        logits = step.logits.float()
        buffers["index"].append(step.index)
        buffers["target"].append(step.target)
        buffers["loss"].append(step.sample_loss.float())
        for key, value in label_statistics(logits, step.target).items():
            buffers[key].append(value)
        if self._wanted[split]["logits"]:
            buffers["logits"].append(logits)
        if self._wanted[split]["embeddings"] and self.max_embeddings:
            mask = self._subset_mask(trainer, pl_module, split)[step.index]
            buffers["emb_index"].append(step.index[mask])
            buffers["emb"].append(step.embedding[mask].float())

    def _subset_mask(self, trainer: Trainer, pl_module: LightningModule, split: str) -> torch.Tensor:
        if split not in self._subset_masks:
            mask = torch.zeros(len(trainer.datamodule.samples[split]), dtype=torch.bool)
            mask[torch.from_numpy(self.embedding_subset(trainer, split))] = True
            self._subset_masks[split] = mask.to(pl_module.device)
        return self._subset_masks[split]

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._track_best(trainer)
        self._start(trainer, "train")

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._track_best(trainer)

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, "validate")

    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, "test")

    @override
    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, "predict")

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Gather training outputs here, on every rank, so later hooks (validation of the next
        # epoch, test) can read them without a collective call of their own.
        if "train" in self._wanted:
            self.gather(trainer, pl_module, "train")

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._collect(trainer, pl_module, "train", outputs)

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, pl_module, "validate", outputs)

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, pl_module, "test", outputs)

    @override
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, pl_module, "predict", outputs)

    # ------------------------------------------------------------------ gathering
    def gather(self, trainer: Trainer, pl_module: LightningModule, split: str) -> EpochOutputs | None:
        """This epoch's outputs of ``split`` from every rank, de-duplicated; computed once, then cached.

        A collective call under DDP: every rank must call it, at the same point. Returns
        ``None`` when ``split`` was not collected this epoch (e.g. during sanity checking).
        """
        if split in self._cache:
            return self._cache[split]
        buffers = self._buffers.get(split)
        if buffers is None:
            return None
        device = pl_module.device
        num_classes = int(pl_module.hparams.get("num_classes", 0)) or (
            buffers["logits"][0].shape[1] if buffers["logits"] else 0
        )

        def cat(key: str, shape_tail: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            parts = buffers[key]
            return torch.cat(parts) if parts else torch.empty((0, *shape_tail), dtype=dtype, device=device)

        def gathered(key: str, shape_tail: tuple[int, ...] = (), dtype: torch.dtype = torch.float32) -> np.ndarray:
            return _gather_rows(trainer, pl_module, cat(key, shape_tail, dtype)).cpu().numpy()

        # DistributedSampler pads the last batches with repeats: keep one row per index.
        index, first = np.unique(gathered("index", dtype=torch.long), return_index=True)
        result = EpochOutputs(
            split=split,
            epoch=trainer.current_epoch,
            index=index,
            target=gathered("target", dtype=torch.long)[first],
            loss=gathered("loss")[first],
            margin=gathered("margin")[first],
            p_target=gathered("p_target")[first],
            other_class=gathered("other_class", dtype=torch.long)[first],
        )
        if self._wanted[split]["logits"]:
            result.logits = gathered("logits", (num_classes,))[first]
        if self._wanted[split]["embeddings"] and self.max_embeddings:
            dim = buffers["emb"][0].shape[1] if buffers["emb"] else _embedding_dim(pl_module)
            result.embedding_index, first = np.unique(gathered("emb_index", dtype=torch.long), return_index=True)
            result.embedding = gathered("emb", (dim,))[first]
        self._buffers.pop(split)
        self._cache[split] = self._latest[split] = result
        return result


def _embedding_dim(pl_module: LightningModule) -> int:
    return int(getattr(pl_module.backbone, "num_features", 0))


def _gather_rows(trainer: Trainer, pl_module: LightningModule, rows: torch.Tensor) -> torch.Tensor:
    """Concatenates ``rows`` from every rank; ranks may hold different numbers of rows.

    ``all_gather`` needs equal shapes on every rank (or it hangs), so lengths are gathered
    first and every rank pads to the longest.
    """
    if trainer.world_size == 1:
        return rows
    count = torch.tensor([rows.shape[0]], device=pl_module.device)
    counts = pl_module.all_gather(count).view(-1).tolist()
    longest = max(counts)
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=pl_module.device)
    padded[: rows.shape[0]] = rows
    everything = pl_module.all_gather(padded)  # (world, longest, ...)
    return torch.cat([everything[r, :n] for r, n in enumerate(counts)])
