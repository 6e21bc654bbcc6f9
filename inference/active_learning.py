""" "Label these next": which unlabelled images a labelling budget should go to.

Two things make an image worth labelling: the model is unsure about it (uncertainty), and it
is unlike what is labelled already and what is picked before it (diversity). Uncertainty
alone spends a budget on twenty copies of the same confusing frame; diversity alone spends it
on images the model already gets right.

The ranking is a k-centre greedy selection (Sener & Savarese 2018, "Active Learning for
Convolutional Neural Networks: A Core-Set Approach") weighted by uncertainty, as in hybrid
methods such as BADGE (Ash et al. 2020), whose embeddings grow with uncertainty. The distances
start as each image's cosine distance to the nearest training embedding (or infinity without
them), and each step picks
the image with the largest ``uncertainty x distance``, then lowers every other image's
distance to at most its distance to the one picked. A near-copy of a picked image has a
distance near 0, so it waits until everything distinct has been picked; among images equally
far from the rest, the most uncertain come first.

Uncertainty, in [0, 1], higher = less sure:

- ``margin``: ``1 - (p1 - p2)``, one minus the gap between the two most likely classes (the
  images nearest a decision boundary);
- ``entropy``: the entropy of the probabilities over ``log C`` (unsure across many classes).

Cost: ``budget`` steps over N images of D values, O(budget x N x D); the rows after the budget
follow in the order of the last step's scores, not re-diversified. k-centre greedy is written
here because no kept library offers it on precomputed embeddings, and it is ten lines.

``label_next.csv`` columns: ``rank`` (1 = label first), ``path``, ``uncertainty``,
``distance`` (cosine, to the training images and the images ranked before it, when it was
picked; blank when there was nothing to compare with), ``predicted_label``, ``reason``.
Blocked classes (``predict.blocked_classes``) are never named here either: a row whose most
likely class is blocked has no predicted label, and a blocked runner-up is called "a blocked
class" in the reason. Such images are still ranked like any other: the model's uncertainty is
over every class.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from inference.familiarity import FamiliarityIndex, normalize
from runs.files import format_float, write_csv

UNCERTAINTY_METHODS = ("margin", "entropy")
HEADER = ("rank", "path", "uncertainty", "distance", "predicted_label", "reason")
DEFAULT_BUDGET = 1000
# Closer than this (cosine) to an image ranked earlier counts as a near-copy in the reason.
NEAR_COPY_DISTANCE = 1e-3


def uncertainty(probabilities: np.ndarray, method: str = "margin") -> np.ndarray:
    """``(N,)`` uncertainty in [0, 1] (higher = less sure) by ``margin`` or ``entropy`` (see the module docstring)."""
    if method not in UNCERTAINTY_METHODS:
        raise ValueError(f"predict.uncertainty must be one of {UNCERTAINTY_METHODS}, got {method!r}")
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be N x C with C >= 2, got shape {probs.shape}")
    if method == "margin":
        top2 = np.sort(probs, axis=1)[:, -2:]
        return np.clip(1.0 - (top2[:, 1] - top2[:, 0]), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, probs * np.log(probs), 0.0)
    return np.clip(-terms.sum(axis=1) / math.log(probs.shape[1]), 0.0, 1.0)


@dataclass(frozen=True)
class LabelNextRanking:
    """Unlabelled images in the order to label them.

    Attributes:
        order: ``(N,)`` row indices into the inputs, label-first first.
        uncertainty: ``(N,)`` per input row (not reordered).
        distance: ``(N,)`` per input row: its cosine distance to the training and earlier-ranked images when ranked.
        nearest_rank: ``(N,)`` per input row: the 1-based rank of the closest earlier-ranked image (0: a training
            image or none).
        diversified: how many leading entries of ``order`` came from the greedy selection.
    """

    order: np.ndarray
    uncertainty: np.ndarray
    distance: np.ndarray
    nearest_rank: np.ndarray
    diversified: int


def rank_label_next(
    probabilities: np.ndarray,
    embeddings: np.ndarray,
    *,
    method: str = "margin",
    train_embeddings: np.ndarray | None = None,
    budget: int = DEFAULT_BUDGET,
) -> LabelNextRanking:
    """Ranks unlabelled images by uncertainty combined with diversity.

    Args:
        probabilities: ``(N, C)`` calibrated probabilities of the unlabelled images.
        embeddings: ``(N, D)`` their pooled embeddings.
        method: ``margin`` or ``entropy``.
        train_embeddings: ``(M, D)`` embeddings of the labelled training images: images close to them
            rank later. Without them, only the images picked so far count.
        budget: how many images the greedy selection picks (the rest follow by their last score).

    Raises:
        ValueError: mismatched shapes, an unknown ``method`` or ``budget < 1``.
    """
    u = uncertainty(probabilities, method)
    points = normalize(embeddings)
    if len(points) != len(u):
        raise ValueError(f"{len(u)} rows of probabilities but {len(points)} embeddings")
    if budget < 1:
        raise ValueError(f"predict.label_budget must be at least 1, got {budget}")
    n = len(u)
    distance = np.full(n, np.inf)
    if train_embeddings is not None and len(train_embeddings):
        distance = FamiliarityIndex(train_embeddings, k=1).distances(points).astype(np.float64)
    nearest = np.zeros(n, dtype=np.int64)
    at_pick = np.zeros(n)
    nearest_at_pick = np.zeros(n, dtype=np.int64)
    picked = np.zeros(n, dtype=bool)
    order = []
    # With no labelled images every distance is infinite: the first pick is the most uncertain.
    for rank in range(1, min(budget, n) + 1):
        score = np.where(picked, -1.0, np.where(np.isinf(distance), 1e9, distance) * (u + 1e-9))
        i = int(np.argmax(score))
        order.append(i)
        picked[i] = True
        at_pick[i], nearest_at_pick[i] = distance[i], nearest[i]
        closer = 1.0 - points @ points[i]
        update = closer < distance
        distance[update] = np.clip(closer[update], 0.0, None)
        nearest[update] = rank
    rest = np.flatnonzero(~picked)
    rest = rest[np.argsort(-(distance[rest] * u[rest]), kind="stable")]
    at_pick[rest], nearest_at_pick[rest] = distance[rest], nearest[rest]
    ranked = np.array(order + rest.tolist(), dtype=np.int64)
    return LabelNextRanking(ranked, u, at_pick, nearest_at_pick, len(order))


def write_label_next(
    path: str | os.PathLike,
    ranking: LabelNextRanking,
    paths: Sequence[str],
    probabilities: np.ndarray,
    class_names: Sequence[str],
    *,
    method: str = "margin",
    blocked_classes: Collection[str] = (),
) -> None:
    """Writes ``label_next.csv`` (columns in the module docstring), one row per image, label-first first."""
    if len(paths) != len(ranking.order):
        raise ValueError(f"{len(paths)} paths for {len(ranking.order)} ranked images")
    probs = np.asarray(probabilities)
    top2 = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    rows = []
    blocked = set(blocked_classes)

    def shown(name: str) -> str:
        return "a blocked class" if name in blocked else repr(name)

    for rank, i in enumerate(ranking.order, start=1):
        first, second = class_names[top2[i, 0]], class_names[top2[i, 1]]
        unsure = (
            f"margin {probs[i, top2[i, 0]] - probs[i, top2[i, 1]]:.3f} between {shown(first)} and {shown(second)}"
            if method == "margin"
            else f"normalised entropy {ranking.uncertainty[i]:.3f}"
        )
        d = ranking.distance[i]
        if math.isinf(d):
            where = "nothing labelled to compare with"
        elif ranking.nearest_rank[i] and d < NEAR_COPY_DISTANCE:
            where = f"near-copy of rank {ranking.nearest_rank[i]}"
        elif ranking.nearest_rank[i]:
            where = f"distance {d:.3f}, closest to rank {ranking.nearest_rank[i]}"
        else:
            where = f"distance {d:.3f} to the nearest training image"
        tail = "" if rank <= ranking.diversified else " (after the budget: not diversified)"
        rows.append(
            [
                rank,
                paths[i],
                format_float(ranking.uncertainty[i]),
                "" if math.isinf(d) else format_float(d),
                "" if first in blocked else first,
                f"{unsure}; {where}{tail}",
            ]
        )
    write_csv(path, HEADER, rows)
