"""The per-sample contract between the model and everything that reads its outputs.

Every step (train, validation, test, predict) makes one forward pass and hands the callbacks a
:class:`StepOutput`: per sample, its index in its split, target, logits, pooled embedding and
loss. The collector (``callbacks.sample_outputs.SampleOutputs``) gathers them per epoch; no
panel runs a second pass over the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from datamodules.catalogue import HELDOUT, PREDICT

# Trainer stage -> the split its batches come from (predict: a K-fold job's held-out fold, or
# unlabelled images).
STAGE_SPLIT = {"train": "train", "sanity_check": "val", "validate": "val", "test": "test", "predict": HELDOUT}
PREDICT_SPLITS = (HELDOUT, PREDICT)
# The key under which a training step's dict carries its StepOutput: Lightning needs
# `training_step` to return a tensor or a dict with "loss", and hands callbacks a new dict.
KEY = "sample_outputs"


@dataclass
class StepOutput:
    """One batch's forward pass, per sample (all tensors detached, except ``loss``).

    Attributes:
        loss: mean loss of the batch (what is optimised).
        index: ``(B,)`` int64 position of each sample in its split.
        target: ``(B,)`` int64 class id.
        logits: ``(B, C)`` raw class scores.
        embedding: ``(B, D)`` pooled features before the classifier.
        sample_loss: ``(B,)`` per-sample loss.
    """

    loss: torch.Tensor
    index: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor
    embedding: torch.Tensor
    sample_loss: torch.Tensor

    def for_training(self) -> dict[str, Any]:
        """What ``training_step`` returns: Lightning's ``{"loss": ...}`` with this record inside."""
        return {"loss": self.loss, KEY: self}

    @staticmethod
    def of(outputs: Any) -> StepOutput | None:
        """The record in what a batch-end hook receives (a StepOutput, or a training step's dict)."""
        if isinstance(outputs, StepOutput):
            return outputs
        if isinstance(outputs, dict) and isinstance(outputs.get(KEY), StepOutput):
            return outputs[KEY]
        return None
