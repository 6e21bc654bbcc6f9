"""Running a trained model over unlabelled images: the model (a checkpoint in PyTorch, or an export
through onnxruntime / TorchScript), and the no-grad loop that streams ``predictions.csv``.

No Trainer: prediction has no loss, no metrics and no callbacks, so a plain loop over the data
module's prediction loader (the same safe reading and evaluation transform as validation) is all
it takes. Rows are written as batches come (:class:`runs.files.CsvStream`), so memory stays one
batch whatever the number of images, except with ``rank=label_next``, which keeps the
probabilities and embeddings of every image for the ranking (N x (C + D) float32: 5 KB an image
for a 1,280-wide embedding).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax

from datamodules.transforms import Preprocessing
from inference.decisions import DECISIONS, LABEL, OutputPolicy, decide, prediction_header, prediction_rows
from inference.familiarity import FamiliarityIndex
from runs.checkpoints import TrainedCheckpoint, load_file
from runs.files import CsvStream


@dataclass
class PredictionModel:
    """What prediction needs of a model, whichever way it is stored.

    Attributes:
        class_names: the classes, in logit order.
        preprocessing: the evaluation transform's settings.
        temperature: probabilities are ``softmax(logits / temperature)``.
        description: one line for the summary.
        run: ``(N, 3, H, W)`` normalised images -> ``(N, C)`` logits and ``(N, D)`` embeddings (or ``None``).
        thresholds: per-class thresholds that came with the model (an export's sidecar), else empty.
        blocked_classes: classes the model's export blocks, else empty.
        familiarity: the unfamiliar-input index that came with the model (an export), else ``None``.
        has_embedding: whether :meth:`outputs` returns embeddings.
        module: the checkpoint's ``ImageClassifier`` (``None`` for an export).
    """

    class_names: list[str]
    preprocessing: Preprocessing
    temperature: float
    description: str
    run: Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray | None]]  # images -> (logits, embeddings or None)
    thresholds: dict[str, float] = field(default_factory=dict)
    blocked_classes: tuple[str, ...] = ()
    familiarity: FamiliarityIndex | None = None
    has_embedding: bool = True
    module: torch.nn.Module | None = None  # the checkpoint's LightningModule (None for an export)

    def outputs(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        return self.run(images)


def checkpoint_model(trained: TrainedCheckpoint, device: str) -> PredictionModel:
    """The checkpoint's classifier on ``device``, in eval mode, computing logits and embeddings in one pass."""
    from models.classifier import ImageClassifier  # Lightning: imported only when a checkpoint is used

    model = ImageClassifier(
        name=trained.name,
        num_classes=len(trained.class_names),
        class_names=trained.class_names,
        pretrained=False,
        preprocessing=trained.preprocessing,
    )
    model.load_state_dict(load_file(trained.path)["state_dict"])
    model.eval().to(device)

    @torch.inference_mode()
    def run(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        logits, embedding = model.forward_with_embedding(images.to(device, non_blocking=True))
        return logits.float().cpu().numpy(), embedding.float().cpu().numpy()

    return PredictionModel(
        class_names=list(trained.class_names),
        preprocessing=Preprocessing.from_dict(trained.preprocessing),
        temperature=trained.temperature or 1.0,
        description=f"{trained.path} (epoch {trained.epoch}, {trained.name}, PyTorch on {device})",
        run=run,
        module=model,
    )


def exported_model(path: str | Path) -> PredictionModel:
    """An exported model (``.onnx`` through onnxruntime, or TorchScript) with what its sidecar says.

    Raises:
        FileNotFoundError: the model, its sidecar or its index is missing.
        inference.sidecar.SidecarError: the sidecar is invalid.
    """
    from inference.export import ExportedClassifier

    exported = ExportedClassifier(path)
    sidecar = exported.sidecar
    runtime = "onnxruntime" if sidecar.model_format == "onnx" else "TorchScript"
    return PredictionModel(
        class_names=list(sidecar.classes),
        preprocessing=sidecar.preprocessing,
        temperature=sidecar.temperature,
        description=f"{exported.path} ({sidecar.model_format}, {runtime} on the CPU)",
        run=lambda images: exported.outputs(images.numpy()),
        thresholds=dict(sidecar.thresholds),
        blocked_classes=tuple(sidecar.blocked_classes),
        familiarity=exported.familiarity(),
        has_embedding=exported.has_embedding,
    )


@dataclass
class PredictionTotals:
    """What one prediction run found: counts for the summary, and what ``rank=label_next`` needs."""

    decisions: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    unfamiliar: int = 0
    images: int = 0
    seconds: float = 0.0
    positions: list[np.ndarray] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "predicted": self.images,
            "decisions": {d: self.decisions.get(d, 0) for d in DECISIONS},
            "labels": dict(self.labels.most_common()),
            "unfamiliar": self.unfamiliar,
            "seconds": round(self.seconds, 2),
            "images_per_second": round(self.images / self.seconds, 1) if self.seconds > 0 else None,
        }


def predict(
    model: PredictionModel,
    loader,
    paths: list[str],
    policy: OutputPolicy,
    out_path: str | Path,
    *,
    familiarity: FamiliarityIndex | None = None,
    keep: bool = False,
    progress: bool = True,
    on_failure=None,
) -> PredictionTotals:
    """Predicts every batch of ``loader`` and streams the rows of ``predictions.csv`` to ``out_path``.

    Args:
        model: the model.
        loader: batches ``{"image", "index", "failed"}`` of the data module's prediction loader.
        paths: the file of each sample index.
        policy: the output filtering (blocked classes, thresholds, top-k).
        out_path: where ``predictions.csv`` goes (atomically, once every batch is done).
        familiarity: the unfamiliar-input index; ``None``: no distances, nothing flagged.
        keep: keep every image's probabilities and embeddings (for ``rank=label_next``).
        progress: show a progress bar (images) on stderr.
        on_failure: called with ``(index, reason)`` for each file that fails to load.
    """
    from tqdm import tqdm

    totals = PredictionTotals()
    k = min(policy.top_k, int(policy.allowed.sum()))
    bar = tqdm(total=len(paths), unit="img", desc="predict", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    with CsvStream(out_path, prediction_header(k)) as out, bar:
        for batch in loader:
            failed = batch.get("failed") or []
            for index, reason in failed:
                if on_failure is not None:
                    on_failure(int(index), reason)
            images, index = batch["image"], batch["index"].numpy()
            if images.numel():
                _predict_batch(model, images, index, paths, policy, out, familiarity, totals, keep)
            bar.update(len(index) + len(failed))
    totals.seconds = time.perf_counter() - start
    return totals


def _predict_batch(model, images, index, paths, policy, out, familiarity, totals, keep) -> None:
    logits, embedding = model.outputs(images)
    probs = softmax(logits.astype(np.float64) / model.temperature, axis=1)
    flags = familiarity.flag(embedding) if familiarity is not None and embedding is not None else None
    decisions = decide(
        probs,
        policy,
        unfamiliar=None if flags is None else flags.unfamiliar,
        distance=None if flags is None else flags.distance,
        distance_threshold=None if flags is None else flags.threshold,
    )
    out.write(
        prediction_rows(
            [paths[i] for i in index],
            decisions,
            distance=None if flags is None else flags.distance,
            unfamiliar=None if flags is None else flags.unfamiliar,
        )
    )
    totals.images += len(index)
    totals.decisions.update(decisions.decision.tolist())
    totals.labels.update(decisions.label[decisions.decision == LABEL].tolist())
    totals.unfamiliar += 0 if flags is None else int(flags.unfamiliar.sum())
    if keep:
        totals.positions.append(index)
        totals.probabilities.append(probs.astype(np.float32))
        if embedding is not None:
            totals.embeddings.append(embedding.astype(np.float32))
