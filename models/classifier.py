"""The LightningModule: a timm backbone, AdamW with two learning rates, warm-up + cosine.

Each step returns the per-sample outputs of its one forward pass as a :class:`~models.outputs.StepOutput`
(index, target, logits, pooled embedding, loss), which the data-quality callbacks collect; none of
them runs a second pass over the data.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from models.backbones import create_backbone
from models.outputs import StepOutput
from runs.errors import ConfigError


class ImageClassifier(LightningModule):
    """Fine-tunes a timm backbone on ``num_classes`` classes.

    Args:
        name: timm model name.
        num_classes: number of classes (set from the data at run time).
        class_names: the class names, in class-id order; saved in checkpoints.
        pretrained: load timm's pretrained weights from the hub.
        weights: local weights (file, lookout checkpoint or packaged name), see ``create_backbone``.
        lr: peak learning rate of the new head.
        backbone_lr_scale: the backbone's peak learning rate as a fraction of ``lr``.
        weight_decay: AdamW decoupled weight decay (not applied to biases and norm weights).
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        min_lr_scale: the cosine schedule ends at this fraction of the peak learning rate.
        label_smoothing: cross-entropy label smoothing, in [0, 1).
        freeze_backbone_epochs: train only the head for this many epochs first (see :meth:`training_step`).
        drop_rate: dropout before the classifier.
        cache_dir: where converted weights are cached.
        preprocessing: what inputs look like (``datamodules.Preprocessing.as_dict()``), saved with the
            weights so evaluation, prediction and export prepare images the same way; ``None``: the
            backbone's timm data config.
        channels_last: keep weights and inputs in the NHWC memory layout, which convolutions run
            faster in on GPUs with tensor cores, especially under mixed precision.

    Raises:
        ValueError: an argument is out of range.
    """

    def __init__(
        self,
        name: str = "tf_efficientnet_lite0",
        num_classes: int = 10,
        class_names: list[str] | None = None,
        pretrained: bool = False,
        weights: str | None = None,
        lr: float = 1e-3,
        backbone_lr_scale: float = 0.1,
        weight_decay: float = 0.05,
        warmup_epochs: float = 0.5,
        min_lr_scale: float = 0.01,
        label_smoothing: float = 0.0,
        freeze_backbone_epochs: int = 0,
        drop_rate: float = 0.0,
        cache_dir: str | None = None,
        preprocessing: dict[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self._frozen: list[torch.nn.Parameter] | None = None  # see _frozen_parameters
        if lr <= 0 or backbone_lr_scale < 0 or not 0 <= label_smoothing < 1 or freeze_backbone_epochs < 0:
            raise ValueError(
                f"model: need lr > 0 (got {lr}), backbone_lr_scale >= 0 (got {backbone_lr_scale}), "
                f"0 <= label_smoothing < 1 (got {label_smoothing}), freeze_backbone_epochs >= 0 "
                f"(got {freeze_backbone_epochs})."
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}")
        # logger=False: hyper-parameters are logged once at the end, against the final metrics.
        self.save_hyperparameters(logger=False)
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.backbone = create_backbone(
            name,
            num_classes=num_classes,
            pretrained=pretrained,
            weights=weights,
            drop_rate=drop_rate,
            cache_dir=cache_dir,
        )
        self.data_config = timm.data.resolve_model_data_config(self.backbone)
        if preprocessing is None:
            from datamodules.transforms import Preprocessing

            self.hparams["preprocessing"] = Preprocessing.resolve(self.data_config).as_dict()

        def metrics(prefix: str) -> MetricCollection:
            return MetricCollection(
                {
                    "acc": MulticlassAccuracy(num_classes, average="micro"),
                    "f1_macro": MulticlassF1Score(num_classes, average="macro"),
                },
                prefix=prefix,
            )

        self.train_metrics, self.val_metrics, self.test_metrics = metrics("train/"), metrics("val/"), metrics("test/")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints: a resumed run keeps its best so far

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward_with_embedding(
        self, images: torch.Tensor, *, frozen_features: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the pooled embedding from one pass through the backbone.

        The head runs twice on the shared features (cheap: pooling and one linear layer), so
        the logits are exactly ``forward``'s for every timm model, whatever its head holds.
        ``frozen_features``: compute the features without recording them for a backward pass.
        """
        if frozen_features:
            with torch.no_grad():
                features = self.backbone.forward_features(images)
        else:
            features = self.backbone.forward_features(images)
        embedding = self.backbone.forward_head(features, pre_logits=True)
        logits = self.backbone.forward_head(features)
        return logits, embedding

    def _step(self, batch: dict[str, torch.Tensor], *, frozen_features: bool = False) -> StepOutput | None:
        images, targets = batch["image"], batch["target"]
        if images.numel() == 0:  # every file of the batch failed to load; they are reported
            return None
        if self.hparams.get("channels_last"):
            images = images.contiguous(memory_format=torch.channels_last)
        logits, embedding = self.forward_with_embedding(images, frozen_features=frozen_features)
        sample_loss = F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.hparams.label_smoothing)
        return StepOutput(
            loss=sample_loss.mean(),
            index=batch["index"],
            target=targets,
            logits=logits.detach(),
            embedding=embedding.detach(),
            sample_loss=sample_loss.detach(),
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        """One optimisation step's loss, and the batch's per-sample outputs.

        While the backbone is frozen (the first ``freeze_backbone_epochs`` epochs), its features
        are computed without autograd, so the backward pass runs through the head only. The loss
        then also carries zero times every frozen parameter when there are several processes: each
        one gets a zero gradient, cheaply, and DDP, whose reducer waits for a gradient of every
        parameter it registered at start-up, all-reduces as usual (``requires_grad=False``, as
        Lightning's ``BackboneFinetuning`` does it, breaks DDP when it changes mid-run).
        :meth:`on_after_backward` then drops those gradients, so AdamW skips the frozen parameters
        altogether: no moments, no step count, no weight decay.
        """
        frozen = self.backbone_frozen
        out = self._step(batch, frozen_features=frozen)
        if out is None:
            # Every file of the batch failed to load (they are reported). A zero loss tied to every
            # parameter instead of skipping the step: under DDP the other ranks would otherwise
            # wait for this rank's gradients forever.
            return {"loss": sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0}
        self.train_metrics.update(out.logits, out.target)
        self.log("train/loss", out.loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(out.target))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        step = out.for_training()
        if frozen and self.trainer.world_size > 1:  # one process: no reducer to feed, no gradients to drop
            step["loss"] = step["loss"] + 0.0 * sum(p.sum() for p in self._frozen_parameters())
        return step

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> StepOutput | None:
        return self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> StepOutput | None:
        return self._eval_step(batch, self.test_metrics, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> StepOutput | None:
        return self._step(batch)

    def _eval_step(self, batch, metrics: MetricCollection, split: str) -> StepOutput | None:
        out = self._step(batch)
        if out is None:
            return None
        metrics.update(out.logits, out.target)
        self.log(
            f"{split}/loss",
            out.loss,
            on_epoch=True,
            prog_bar=split == "val",
            sync_dist=True,
            batch_size=len(out.target),
        )
        self.log_dict(metrics, on_epoch=True, prog_bar=split == "val")
        return out

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best.update(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The validation metrics this checkpoint was saved with, as plain floats, so an
        # evaluation of the checkpoint can show it reproduces them.
        checkpoint["val_metrics"] = {
            k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")
        }
        # Lightning does not save random states; with them a resumed run continues with the same
        # dropout as an uninterrupted one (shuffling and augmentation derive from the seed and the
        # epoch, see datamodules.dataset.EpochShuffle). Plain types only (weights_only).
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("class_names")
        if saved is not None and list(saved) != list(self.class_names):
            raise ConfigError(
                f"the checkpoint was trained on {len(saved)} classes {list(saved)[:10]}, but this data has "
                f"{len(self.class_names)}: {list(self.class_names)[:10]}. Resume with the data it was trained on."
            )
        states = checkpoint.get("rng_states")
        if states and self._trainer is not None and self._trainer.state.fn == "fit":
            set_rng_states(states)

    @property
    def backbone_frozen(self) -> bool:
        """Whether this training epoch trains the head only (``freeze_backbone_epochs``)."""
        return self._trainer is not None and self.current_epoch < self.hparams.freeze_backbone_epochs

    def _frozen_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters a frozen phase leaves alone: every backbone parameter outside the classifier.
        Listed once (moving, wrapping or loading the model keeps the same parameter objects)."""
        if self._frozen is None:
            head = {id(p) for p in self.backbone.get_classifier().parameters()}
            self._frozen = [p for p in self.backbone.parameters() if id(p) not in head]
        return self._frozen

    def on_after_backward(self) -> None:
        # After DDP's all-reduce (it ends with the backward pass): a parameter without a gradient
        # is one AdamW does not touch, so its moments do not fill with the frozen phase's zeros.
        if self.backbone_frozen:
            for param in self._frozen_parameters():
                param.grad = None

    def setup(self, stage: str) -> None:
        if self.hparams.get("channels_last"):
            # Before the strategy moves and wraps the model: DDP's gradient buckets follow the
            # parameters' layout from then on.
            self.to(memory_format=torch.channels_last)

    def on_train_epoch_start(self) -> None:
        # A frozen backbone keeps its BatchNorm statistics too; once unfrozen they update again.
        # (Lightning restores each module's mode after validation, so the mode is set every epoch.)
        frozen = self.backbone_frozen
        if self.hparams.freeze_backbone_epochs:
            classifier = set(self.backbone.get_classifier().modules())
            for module in self.backbone.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module not in classifier:
                    module.train(not frozen)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW, two learning rates (backbone, head), no decay on biases and norm weights.

        The backbone's schedule starts when its frozen phase ends: zero before, then its own
        warm-up and cosine decay. While frozen it gets no gradients at all (see
        :meth:`training_step`), so AdamW starts its moments and bias correction afresh at the
        first unfrozen step.
        """
        hp = self.hparams
        head_ids = {id(p) for p in self.backbone.get_classifier().parameters()}
        groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
        for param in self.backbone.parameters():
            part = "head" if id(param) in head_ids else "backbone"
            groups.setdefault((part, param.ndim > 1), []).append(param)
        param_groups = [
            {
                "params": params,
                "lr": hp.lr * (1.0 if part == "head" else hp.backbone_lr_scale),
                "weight_decay": hp.weight_decay if decay else 0.0,
                "part": part,
                "name": f"{part}" if decay else f"{part}_no_decay",  # for the learning-rate curves
            }
            for (part, decay), params in sorted(groups.items())
        ]
        optimizer = torch.optim.AdamW(param_groups, lr=hp.lr)
        estimated = self.trainer.estimated_stepping_batches
        if math.isinf(estimated):
            raise ConfigError(
                f"trainer.max_epochs={self.trainer.max_epochs} trains without end, but the learning-rate schedule "
                "(warm-up, then cosine decay) needs a length: give trainer.max_epochs=N (or trainer.max_steps=N)."
            )
        total = max(1, int(estimated))
        per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = int(hp.warmup_epochs * per_epoch)
        frozen = int(hp.freeze_backbone_epochs * per_epoch)
        lambdas = [
            _warmup_cosine(total, warmup, hp.min_lr_scale, start=frozen if g["part"] == "backbone" else 0)
            for g in param_groups
        ]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def rng_states() -> dict[str, Any]:
    """torch, numpy and Python random states as tensors and plain values."""
    _mt_name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def _warmup_cosine(total: int, warmup: int, floor: float, start: int = 0):
    """LR multiplier: 0 before ``start``, linear warm-up, then cosine decay to ``floor``."""

    def factor(step: int) -> float:
        if step < start:
            return 0.0
        step -= start
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - start - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
