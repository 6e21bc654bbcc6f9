"""What the collector hands every reader: one split's per-sample outputs for one epoch, and the small
numeric helpers that go with them (label statistics, L2 normalisation, the stratified embedding subset)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch


@dataclass
class EpochOutputs:
    """Per-sample outputs of one split for one epoch, one row per sample, sorted by ``index``.

    ``embedding`` holds rows only for the samples in ``embedding_index`` (a bounded,
    stratified subset); everything else covers every sample seen this epoch. ``logits``
    (N x C) are kept only for splits a callback needs them for; the per-sample label
    statistics (``margin``, ``p_target``, ``other_class``) always, at O(N).
    """

    split: str
    epoch: int
    index: np.ndarray  # (N,) int64, unique, ascending
    target: np.ndarray  # (N,) int64
    loss: np.ndarray  # (N,) float32
    margin: np.ndarray  # (N,) logit of the target minus the largest other logit
    p_target: np.ndarray  # (N,) probability of the target class
    other_class: np.ndarray  # (N,) int64, the class with the largest other logit
    logits: np.ndarray | None = None  # (N, C) float32, for splits whose logits a callback asked for
    embedding_index: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # (M,)
    embedding: np.ndarray | None = None  # (M, D) float32

    def __len__(self) -> int:
        return len(self.index)

    @cached_property
    def probs(self) -> np.ndarray:
        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)

    @cached_property
    def pred(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted class."""
        return self.probs[np.arange(len(self)), self.pred]

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.target

    def rows_of(self, indices: np.ndarray) -> np.ndarray:
        """Row numbers of sample ``indices`` (which must be present)."""
        return np.searchsorted(self.index, indices)


def label_statistics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per sample: the target's logit minus the largest other logit, the target's probability,
    and the class of that largest other logit."""
    rows = torch.arange(len(target), device=logits.device)
    given = logits[rows, target]
    others = logits.clone()
    others[rows, target] = float("-inf")
    other_logit, other_class = others.max(dim=1)
    return {
        "margin": given - other_logit,
        "p_target": logits.softmax(dim=1)[rows, target],
        "other_class": other_class,
    }


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine geometry); all-zero rows stay zero."""
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def stratified_subset(targets: np.ndarray, max_samples: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_samples`` samples, every class in proportion (at least one
    each; with more classes than ``max_samples``, a random ``max_samples`` of the classes, one sample each)."""
    n = len(targets)
    if n <= max_samples:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(targets, return_counts=True)
    quota = np.maximum(1, np.floor(counts * max_samples / n)).astype(int)
    # Hand the rounding remainder to the largest classes, never exceeding max_samples.
    for c in np.argsort(-counts)[: max(0, max_samples - quota.sum())]:
        quota[c] += 1
    picks = [
        rng.choice(np.flatnonzero(targets == c), size=min(q, cnt), replace=False)
        for c, q, cnt in zip(classes, quota, counts, strict=True)
    ]
    chosen = np.concatenate(picks)
    if len(chosen) > max_samples:  # more classes than samples allowed: a random one of them each
        chosen = rng.choice(chosen, size=max_samples, replace=False)
    return np.sort(chosen)
