"""Per-class confidence thresholds that reach a target precision, chosen on validation and
checked on test.

For each class ``c``, the candidates are the validation samples the model predicts as ``c``
(``argmax``), ranked by confidence (the probability of ``c``, after calibration). The
threshold is the **lowest** confidence ``t`` at which the samples with confidence ``>= t``
reach ``target_precision`` while at least ``min_support`` of them remain: the lowest such
threshold emits the most labels. A class that never reaches the target with that support
gets no threshold (``math.inf``): it is never emitted, and the report names it.

``min_support`` (default 20) keeps a threshold from resting on a handful of lucky samples:
below 20, one error moves precision by more than five points, and a precision of 20/20 still
has a 95% lower bound of only 0.84. ``require_lower_bound=True`` goes further and asks the
Wilson 95% lower bound of the validation precision to reach the target, which trades
coverage for a precision that holds on new data with high probability; the default uses the
point estimate, whose test precision scatters around the target.

On test, each class's emitted labels are counted and their precision is given with a 95%
Wilson interval (``scipy.stats.binomtest``), which keeps close to its nominal coverage for
proportions near 1 and small counts, where the normal approximation does not.

``thresholds.csv`` columns: ``class``; ``threshold`` (emit when confidence >= it; 1 when
not reached); ``reached`` (``true``/``false``: ``false`` means never emitted);
``target_precision``; ``min_support``; ``val_emitted`` and ``val_precision`` (at the
threshold; for a class that did not reach it, the best precision seen with enough support);
``test_emitted``, ``test_precision``, ``test_precision_low``, ``test_precision_high`` (the
95% interval) and ``test_recall`` (emitted and correct over the test samples of the class);
test columns are blank without a test split, precisions blank without a sample.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import binomtest

from runs.files import format_float, read_csv, write_csv

HEADER = (
    "class",
    "threshold",
    "reached",
    "target_precision",
    "min_support",
    "val_emitted",
    "val_precision",
    "test_emitted",
    "test_precision",
    "test_precision_low",
    "test_precision_high",
    "test_recall",
)
NEVER = math.inf
# Float rounding must not turn an exact 19/20 into a miss of 0.95.
_EPS = 1e-12


@dataclass(frozen=True)
class ClassThreshold:
    """One class's threshold and how it does.

    Attributes:
        class_name: the class.
        threshold: emit the class when its confidence is at least this; ``math.inf``: never.
        val_emitted: validation samples predicted as the class at or above the threshold.
        val_precision: their precision; for an unreached class, the best seen with enough support (NaN: none).
        test_emitted: test samples emitted as the class (0 before :func:`evaluate_thresholds`).
        test_correct: how many of them are right.
        test_precision: ``test_correct / test_emitted`` (NaN when nothing is emitted).
        test_precision_low: lower end of its 95% interval.
        test_precision_high: upper end of its 95% interval.
        test_recall: emitted and correct over the test samples whose true class it is.
    """

    class_name: str
    threshold: float
    val_emitted: int
    val_precision: float
    test_emitted: int = 0
    test_correct: int = 0
    test_precision: float = math.nan
    test_precision_low: float = math.nan
    test_precision_high: float = math.nan
    test_recall: float = math.nan

    @property
    def reached(self) -> bool:
        return self.threshold != NEVER


@dataclass(frozen=True)
class ThresholdReport:
    """Thresholds for every class, with the overall coverage and precision on test.

    Attributes:
        target_precision: the precision each class was asked to reach.
        min_support: the fewest validation samples a threshold could rest on.
        classes: one entry per class, in class-id order.
        test_count: test samples.
        test_emitted: test samples that got a label.
        test_correct: how many of those labels are right.
        coverage: ``test_emitted / test_count``.
        precision: ``test_correct / test_emitted``, with ``precision_low``/``precision_high`` its 95% interval.
    """

    target_precision: float
    min_support: int
    classes: tuple[ClassThreshold, ...]
    test_count: int = 0
    test_emitted: int = 0
    test_correct: int = 0
    coverage: float = math.nan
    precision: float = math.nan
    precision_low: float = math.nan
    precision_high: float = math.nan

    def thresholds(self) -> dict[str, float]:
        """``{class: threshold}`` for :class:`inference.decisions.OutputPolicy` (``inf``: never emitted)."""
        return {c.class_name: c.threshold for c in self.classes}

    def unreached(self) -> list[str]:
        """The classes that never reached the target precision, so are never emitted."""
        return [c.class_name for c in self.classes if not c.reached]


def precision_interval(correct: int, total: int, confidence_level: float = 0.95) -> tuple[float, float]:
    """The Wilson interval of ``correct / total``; ``(nan, nan)`` when ``total`` is 0."""
    if total == 0:
        return math.nan, math.nan
    ci = binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence_level, method="wilson")
    return float(ci.low), float(ci.high)


def _check(probabilities: np.ndarray, targets: np.ndarray, num_classes: int, split: str) -> tuple:
    probs = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.ndim != 2 or probs.shape[1] != num_classes or targets.shape != (len(probs),):
        raise ValueError(
            f"{split}: need N x {num_classes} probabilities and N targets, got {probs.shape} and {targets.shape}"
        )
    if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(
            f"{split}: targets must be class ids in [0, {num_classes}), got {targets.min()}..{targets.max()}"
        )
    return probs.argmax(axis=1), probs.max(axis=1), targets


def fit_thresholds(
    probabilities: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    *,
    target_precision: float = 0.95,
    min_support: int = 20,
    require_lower_bound: bool = False,
) -> ThresholdReport:
    """Chooses each class's lowest threshold that reaches ``target_precision`` on validation.

    Args:
        probabilities: ``(N, C)`` calibrated validation probabilities.
        targets: ``(N,)`` true class ids.
        class_names: the ``C`` class names, in class-id order.
        target_precision: the precision each emitted class must reach, in (0, 1].
        min_support: the fewest validation samples at or above a threshold.
        require_lower_bound: ask the Wilson 95% lower bound, not the point estimate, to reach the target.

    Returns:
        A report with validation figures only; pass it to :func:`evaluate_thresholds` for test.

    Raises:
        ValueError: ``target_precision`` outside (0, 1], ``min_support < 1`` or mismatched shapes.
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"predict.target_precision must be in (0, 1], got {target_precision}")
    if min_support < 1:
        raise ValueError(f"min_support must be at least 1, got {min_support}")
    predicted, confidence, targets = _check(probabilities, targets, len(class_names), "validation")
    classes = []
    for c, name in enumerate(class_names):
        mine = predicted == c
        # Cumulative counts down the confidence ranking, read at the last sample of each distinct
        # value: sklearn's precision_recall_curve gives no count per threshold and warns on a class
        # with no correct prediction, and this is three lines.
        order = np.argsort(-confidence[mine], kind="stable")
        conf = confidence[mine][order]
        correct = np.cumsum(targets[mine][order] == c)
        last = np.r_[conf[1:] != conf[:-1], True] if len(conf) else np.zeros(0, dtype=bool)
        support = np.flatnonzero(last) + 1
        precision = correct[last] / np.maximum(support, 1)
        enough = support >= min_support
        ok = enough & (precision >= target_precision - _EPS)
        if require_lower_bound:
            for i in np.flatnonzero(ok):
                ok[i] = precision_interval(correct[last][i], support[i])[0] >= target_precision - _EPS
        if ok.any():
            i = np.flatnonzero(ok)[-1]  # the lowest threshold: the most samples
            classes.append(ClassThreshold(name, float(conf[last][i]), int(support[i]), float(precision[i])))
        else:
            best = float(precision[enough].max()) if enough.any() else math.nan
            classes.append(ClassThreshold(name, NEVER, 0, best))
    return ThresholdReport(target_precision, min_support, tuple(classes))


def evaluate_thresholds(
    report: ThresholdReport, probabilities: np.ndarray, targets: np.ndarray, *, confidence_level: float = 0.95
) -> ThresholdReport:
    """Applies the thresholds to the test split: coverage, and precision with its interval, per class and overall.

    A test sample is emitted as its most likely class when its confidence reaches that class's
    threshold (blocked classes and ``min_confidence`` are the output policy's business, not this one's).
    """
    predicted, confidence, targets = _check(probabilities, targets, len(report.classes), "test")
    limits = np.array([c.threshold for c in report.classes])
    emitted = confidence >= limits[predicted]
    right = emitted & (predicted == targets)
    classes = []
    for c, entry in enumerate(report.classes):
        n_emitted, n_right = int((emitted & (predicted == c)).sum()), int((right & (predicted == c)).sum())
        low, high = precision_interval(n_right, n_emitted, confidence_level)
        n_true = int((targets == c).sum())
        classes.append(
            replace(
                entry,
                test_emitted=n_emitted,
                test_correct=n_right,
                test_precision=n_right / n_emitted if n_emitted else math.nan,
                test_precision_low=low,
                test_precision_high=high,
                test_recall=n_right / n_true if n_true else math.nan,
            )
        )
    total, n_emitted, n_right = len(targets), int(emitted.sum()), int(right.sum())
    low, high = precision_interval(n_right, n_emitted, confidence_level)
    return replace(
        report,
        classes=tuple(classes),
        test_count=total,
        test_emitted=n_emitted,
        test_correct=n_right,
        coverage=n_emitted / total if total else math.nan,
        precision=n_right / n_emitted if n_emitted else math.nan,
        precision_low=low,
        precision_high=high,
    )


def write_thresholds(path: str | os.PathLike, report: ThresholdReport) -> None:
    """Writes ``thresholds.csv`` (columns in the module docstring); test columns blank if never evaluated."""
    tested = report.test_count > 0
    rows = []
    for c in report.classes:
        scores = (c.test_precision, c.test_precision_low, c.test_precision_high, c.test_recall)
        test = [c.test_emitted, *map(format_float, scores)] if tested else [""] * 5
        rows.append(
            [
                c.class_name,
                format_float(c.threshold if c.reached else 1.0, 17),
                str(c.reached).lower(),
                format_float(report.target_precision),
                report.min_support,
                c.val_emitted,
                format_float(c.val_precision),
                *test,
            ]
        )
    write_csv(path, HEADER, rows)


def read_thresholds(path: str | os.PathLike, class_names: Sequence[str]) -> dict[str, float]:
    """Reads ``thresholds.csv`` back as ``{class: threshold}`` (``inf`` for a class never emitted).

    Args:
        path: the file.
        class_names: the model's classes; the file must list exactly these, once each.

    Raises:
        ValueError: a missing column, classes that differ from the model's (named), a repeated
            class, a ``reached`` other than true/false, or a number outside [0, 1].
    """
    rows = read_csv(path, required=("class", "threshold", "reached"))
    listed = [r["class"] for r in rows]
    repeated = sorted({n for n in listed if listed.count(n) > 1})
    missing, extra = sorted(set(class_names) - set(listed)), sorted(set(listed) - set(class_names))
    if repeated or missing or extra:
        raise ValueError(
            f"{path} does not fit this model: missing classes {missing}, unknown classes {extra}, repeated {repeated}. "
            f"The model's classes are {list(class_names)}; use the thresholds.csv of the same run."
        )
    thresholds = {}
    for line, row in enumerate(rows, start=2):
        reached = row["reached"].strip().lower()
        if reached not in ("true", "false"):
            raise ValueError(f"{path} line {line}: reached must be true or false, got {row['reached']!r}")
        for column in ("threshold", "target_precision", "val_precision", "test_precision", "test_recall"):
            text = (row.get(column) or "").strip()
            if column != "threshold" and not text:
                continue
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{path} line {line}: {column} must be a number, got {text!r}") from None
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{path} line {line}: {column} must be in [0, 1], got {value}")
        thresholds[row["class"]] = float(row["threshold"]) if reached == "true" else NEVER
    return thresholds
