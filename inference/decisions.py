"""Output filtering: what a prediction may show, and why a row shows nothing.

Every row of calibrated class probabilities gets one decision:

- ``label``: the most likely class is emitted.
- ``withheld``: a blocked class (``predict.blocked_classes``) is the most likely one (ties
  included). Nothing is emitted and there is **no fallback** to the next class: when the model's
  best guess is a class that must not be shown, the image most likely *is* that class, so the
  runner-up is a label the model itself believes to be wrong, and showing it would be a
  confident mistake on exactly the images that matter most. An operator who wants a fallback
  can read it nowhere in the output on purpose: withheld rows list no classes at all.
- ``abstain``: the most likely class is allowed but the model is not sure enough: its
  probability is below ``min_confidence`` or below the class's own threshold (from
  ``thresholds.csv``; a class that never reached the target precision is never emitted), or
  the input is unfamiliar (far from every training image).

Blocked classes are never listed anywhere in the output: not as the label, not among the
top-k columns (which rank only the allowed classes, with their unrenormalised probabilities,
so a reader sees how much probability the shown classes really hold) and not by name in a
reason. ``label`` and ``abstain`` rows list the top-k allowed classes (abstained rows keep them
for the person who reviews them); ``withheld`` rows list none, since their top allowed class is
precisely the fallback refused above.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from runs.files import format_float, write_csv

LABEL, ABSTAIN, WITHHELD = "label", "abstain", "withheld"
DECISIONS = (LABEL, ABSTAIN, WITHHELD)
# Probabilities a little outside [0, 1] are float rounding from softmax, not an error.
_PROBABILITY_SLACK = 1e-5


@dataclass(frozen=True)
class OutputPolicy:
    """What a prediction may emit.

    Args:
        class_names: the model's classes, in class-id order.
        blocked_classes: classes that are never emitted nor listed, whatever their probability.
        min_confidence: abstain when the most likely class's probability is below this (0: never).
        class_thresholds: per-class minimum probability, e.g. from ``thresholds.csv``; a class
            missing from the mapping has only ``min_confidence``; ``math.inf`` means the class
            is never emitted (it did not reach the target precision on validation).
        top_k: how many allowed classes each row lists (fewer when fewer are allowed).

    Raises:
        ValueError: a blocked or thresholded class the model does not have (the message lists
            the classes it has), every class blocked, a confidence outside [0, 1], or ``top_k < 1``.

    Example::

        policy = OutputPolicy(("cat", "dog", "person"), blocked_classes={"person"}, min_confidence=0.6)
        decisions = decide(probabilities, policy)
    """

    class_names: tuple[str, ...]
    blocked_classes: frozenset[str] = frozenset()
    min_confidence: float = 0.0
    class_thresholds: Mapping[str, float] = field(default_factory=dict)
    top_k: int = 3

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.class_names)
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "blocked_classes", frozenset(str(n) for n in self.blocked_classes))
        object.__setattr__(self, "class_thresholds", {str(k): float(v) for k, v in self.class_thresholds.items()})
        if not names or len(set(names)) != len(names):
            raise ValueError(f"class_names must be non-empty and unique, got {list(names)}")
        unknown = sorted(self.blocked_classes - set(names))
        if unknown:
            raise ValueError(
                f"predict.blocked_classes={unknown} names classes the model does not have. "
                f"Its classes are {list(names)}; fix the spelling or remove them."
            )
        if self.blocked_classes >= set(names):
            raise ValueError(f"predict.blocked_classes blocks every class {list(names)}: nothing could ever be shown.")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"predict.min_confidence must be in [0, 1], got {self.min_confidence}")
        unknown = sorted(set(self.class_thresholds) - set(names))
        if unknown:
            raise ValueError(
                f"class thresholds name {unknown}, which the model does not have; its classes are {list(names)}"
            )
        bad = {k: v for k, v in self.class_thresholds.items() if not (0.0 <= v <= 1.0 or v == math.inf)}
        if bad:
            raise ValueError(f"class thresholds must be in [0, 1] (or inf: never emitted), got {bad}")
        if self.top_k < 1:
            raise ValueError(f"predict.top_k must be at least 1, got {self.top_k}")

    @property
    def allowed(self) -> np.ndarray:
        """Boolean mask over classes: True where a class may be emitted and listed."""
        return np.array([n not in self.blocked_classes for n in self.class_names])

    def thresholds(self) -> np.ndarray:
        """Per class, the probability a label needs to be emitted: the larger of both limits."""
        return np.array([max(self.min_confidence, self.class_thresholds.get(n, 0.0)) for n in self.class_names])


@dataclass(frozen=True)
class Decisions:
    """The decision for each of N rows.

    Attributes:
        decision: ``(N,)`` one of :data:`DECISIONS`.
        label: ``(N,)`` the emitted class name; ``""`` unless the decision is ``label``.
        confidence: ``(N,)`` the probability of the most likely allowed class; NaN when withheld.
        top_classes: ``(N, k)`` allowed class names, most likely first; ``""`` when withheld.
        top_probabilities: ``(N, k)`` their probabilities; NaN when withheld.
        reason: one sentence per row saying why.
    """

    decision: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    top_classes: np.ndarray
    top_probabilities: np.ndarray
    reason: list[str]

    def __len__(self) -> int:
        return len(self.decision)

    def counts(self) -> dict[str, int]:
        """Rows per decision (every decision present, zero included)."""
        found = Counter(self.decision.tolist())
        return {d: found.get(d, 0) for d in DECISIONS}

    def label_counts(self) -> dict[str, int]:
        """Emitted rows per class, most frequent first."""
        return dict(Counter(self.label[self.decision == LABEL].tolist()).most_common())


def decide(
    probabilities: np.ndarray,
    policy: OutputPolicy,
    *,
    unfamiliar: np.ndarray | None = None,
    distance: np.ndarray | None = None,
    distance_threshold: float | None = None,
) -> Decisions:
    """Decides, for each row, what may be shown.

    Args:
        probabilities: ``(N, C)`` class probabilities, already calibrated (temperature-scaled).
        policy: the classes and limits.
        unfamiliar: ``(N,)`` booleans, True for inputs far from the training data; they abstain.
        distance: ``(N,)`` each input's distance to the training data, quoted in the reason.
        distance_threshold: the distance beyond which an input is unfamiliar, quoted in the reason.

    Returns:
        The decisions; ``withheld`` takes precedence over ``abstain``, which lists every reason that applies.

    Raises:
        ValueError: ``probabilities`` is not ``(N, len(class_names))`` finite values in [0, 1], or
            ``unfamiliar``/``distance`` do not have N values.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    names = np.array(policy.class_names, dtype=object)
    if probs.ndim != 2 or probs.shape[1] != len(names):
        raise ValueError(f"probabilities must be N x {len(names)} (one column per class), got shape {probs.shape}")
    in_range = probs.min(initial=0) >= -_PROBABILITY_SLACK and probs.max(initial=0) <= 1 + _PROBABILITY_SLACK
    if not (np.isfinite(probs).all() and in_range):
        raise ValueError("probabilities must be finite and in [0, 1]: pass softmax outputs, not logits")
    n = len(probs)
    unfamiliar = np.zeros(n, dtype=bool) if unfamiliar is None else np.asarray(unfamiliar, dtype=bool)
    if unfamiliar.shape != (n,) or (distance is not None and np.shape(distance) != (n,)):
        raise ValueError(f"unfamiliar and distance need one value per row ({n})")

    allowed = policy.allowed
    open_probs = np.where(allowed, probs, -np.inf)
    k = min(policy.top_k, int(allowed.sum()))
    order = np.argsort(-open_probs, axis=1, kind="stable")[:, :k]
    top_probs = np.take_along_axis(probs, order, axis=1)
    top_names = names[order]
    confidence = top_probs[:, 0].copy()
    best = order[:, 0]
    # Ties count as blocked: a blocked class as likely as the best allowed one is not outranked.
    withheld = probs[:, ~allowed].max(axis=1, initial=-np.inf) >= confidence
    needed = policy.thresholds()[best]
    low = confidence < needed

    decision = np.where(withheld, WITHHELD, np.where(low | unfamiliar, ABSTAIN, LABEL)).astype(object)
    label = np.where(decision == LABEL, top_names[:, 0], "").astype(object)
    confidence[withheld] = np.nan
    top_probs[withheld] = np.nan
    top_names[withheld] = ""

    reasons = []
    for i in range(n):
        if withheld[i]:
            reasons.append("withheld: a blocked class is the most likely (predict.blocked_classes); no fallback")
            continue
        why = []
        if unfamiliar[i]:
            why.append(_unfamiliar(None if distance is None else float(distance[i]), distance_threshold))
        if low[i]:
            why.append(_below(policy, top_names[i, 0], confidence[i], needed[i]))
        if why:
            reasons.append("; ".join(why))
        else:
            at_least = f" >= {needed[i]:.3f}" if needed[i] > 0 else ""
            reasons.append(f"confidence {confidence[i]:.3f}{at_least}")
    return Decisions(decision, label, confidence, top_names, top_probs, reasons)


def _unfamiliar(distance: float | None, threshold: float | None) -> str:
    if distance is None:
        return "unfamiliar input"
    limit = "" if threshold is None else f" > threshold {threshold:.3f}"
    return f"unfamiliar input: distance {distance:.3f} to the training images{limit}"


def _below(policy: OutputPolicy, name: str, confidence: float, needed: float) -> str:
    own = policy.class_thresholds.get(name, 0.0)
    if own == math.inf:
        return f"class {name!r} is never emitted: it did not reach the target precision on validation"
    if own > policy.min_confidence:
        return f"confidence {confidence:.3f} < threshold {own:.3f} for class {name!r}"
    return f"confidence {confidence:.3f} < min_confidence {needed:.3f}"


def prediction_header(top_k: int) -> list[str]:
    """The columns of ``predictions.csv`` for ``top_k`` listed classes."""
    ranked = [col for r in range(1, top_k + 1) for col in (f"class_{r}", f"probability_{r}")]
    return ["path", "decision", "label", "confidence", *ranked, "distance", "unfamiliar", "reason"]


def prediction_rows(
    paths: Sequence[str],
    decisions: Decisions,
    *,
    distance: np.ndarray | None = None,
    unfamiliar: np.ndarray | None = None,
) -> list[list]:
    """The rows of ``predictions.csv`` for ``paths`` (columns in :func:`write_predictions`), in the order given."""
    if len(paths) != len(decisions):
        raise ValueError(f"{len(paths)} paths for {len(decisions)} decisions")
    k = decisions.top_classes.shape[1]
    rows = []
    for i, p in enumerate(paths):
        ranked = []
        for r in range(k):
            ranked += [decisions.top_classes[i, r], format_float(decisions.top_probabilities[i, r])]
        rows.append(
            [
                p,
                decisions.decision[i],
                decisions.label[i],
                format_float(decisions.confidence[i]),
                *ranked,
                "" if distance is None else format_float(float(distance[i])),
                "" if unfamiliar is None else str(bool(unfamiliar[i])).lower(),
                decisions.reason[i],
            ]
        )
    return rows


def write_predictions(
    path: str | os.PathLike,
    paths: Sequence[str],
    decisions: Decisions,
    *,
    distance: np.ndarray | None = None,
    unfamiliar: np.ndarray | None = None,
) -> None:
    """Writes ``predictions.csv``: one row per image, in the order given.

    Columns: ``path``; ``decision`` (label / abstain / withheld); ``label`` (blank unless
    emitted); ``confidence``; ``class_r``/``probability_r`` for the top-k allowed classes
    (blank when withheld); ``distance`` to the training data and ``unfamiliar`` (blank without
    an index); ``reason``. ``predict.py`` streams the same rows batch by batch
    (:func:`prediction_rows`).
    """
    rows = prediction_rows(paths, decisions, distance=distance, unfamiliar=unfamiliar)
    write_csv(path, prediction_header(decisions.top_classes.shape[1]), rows)
