"""Per-class thresholds for a target precision: chosen on validation, checked on test, saved and read back."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from inference.thresholds import (
    HEADER,
    evaluate_thresholds,
    fit_thresholds,
    precision_interval,
    read_thresholds,
    write_thresholds,
)

CLASSES = ["a", "b", "c"]


def _calibrated(n: int, seed: int, hard_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A model whose confidence is its probability of being right (a calibrated model, by construction).

    ``hard_class`` is predicted often but never with more than 60% precision.
    """
    rng = np.random.default_rng(seed)
    predicted = rng.integers(0, 3, n)
    confidence = rng.uniform(0.4, 1.0, n)
    if hard_class is not None:
        confidence[predicted == hard_class] = rng.uniform(0.34, 0.6, (predicted == hard_class).sum())
    right = rng.random(n) < confidence
    targets = np.where(right, predicted, (predicted + rng.integers(1, 3, n)) % 3)
    probs = np.empty((n, 3))
    probs[:] = ((1 - confidence) / 2)[:, None]
    probs[np.arange(n), predicted] = confidence
    return probs, targets


def _brute_force(probs, targets, c, target, min_support):
    """The lowest threshold reaching ``target`` with ``min_support``, by trying every observed confidence."""
    predicted, confidence = probs.argmax(1), probs.max(1)
    for t in np.sort(np.unique(confidence[predicted == c])):
        chosen = (predicted == c) & (confidence >= t)
        if chosen.sum() >= min_support and (targets[chosen] == c).mean() >= target:
            return t
    return math.inf


def test_threshold_is_the_lowest_that_reaches_the_target_with_enough_support():
    probs, targets = _calibrated(3000, seed=1)
    probs = np.round(probs, 2)  # ties between confidences, as real probabilities have
    report = fit_thresholds(probs, targets, CLASSES, target_precision=0.9, min_support=25)
    for c, entry in enumerate(report.classes):
        assert entry.threshold == _brute_force(probs, targets, c, 0.9, 25)
        chosen = (probs.argmax(1) == c) & (probs.max(1) >= entry.threshold)
        assert entry.val_emitted == chosen.sum() >= 25
        assert entry.val_precision == pytest.approx((targets[chosen] == c).mean())
        assert entry.val_precision >= 0.9


def test_a_class_that_cannot_reach_the_target_is_never_emitted_and_reported():
    probs, targets = _calibrated(2000, seed=2, hard_class=1)
    report = fit_thresholds(probs, targets, CLASSES, target_precision=0.95)
    assert report.unreached() == ["b"]
    assert report.thresholds()["b"] == math.inf and report.classes[1].val_emitted == 0
    assert 0.4 < report.classes[1].val_precision < 0.95  # the best it got, for the report
    tested = evaluate_thresholds(report, *_calibrated(2000, seed=3, hard_class=1))
    assert tested.classes[1].test_emitted == 0 and math.isnan(tested.classes[1].test_precision)


@pytest.mark.parametrize("require_lower_bound", [False, True])
def test_precision_chosen_on_validation_holds_on_test_within_its_interval(require_lower_bound):
    val, test = _calibrated(6000, seed=4), _calibrated(6000, seed=5)
    report = fit_thresholds(*val, CLASSES, target_precision=0.95, require_lower_bound=require_lower_bound)
    tested = evaluate_thresholds(report, *test)
    assert tested.test_count == 6000 and 0.05 < tested.coverage < 0.5
    assert tested.precision_low <= tested.precision <= tested.precision_high
    assert tested.precision_high >= 0.95  # the target lies within (or below) the 95% interval
    if require_lower_bound:
        assert tested.precision >= 0.95
    for entry in tested.classes:
        if not entry.reached:
            continue
        assert entry.test_precision_high >= 0.95
        assert entry.test_correct <= entry.test_emitted
    # Asking the lower bound to reach the target costs coverage.
    point = evaluate_thresholds(fit_thresholds(*val, CLASSES, target_precision=0.95), *test)
    assert tested.coverage <= point.coverage


def test_wilson_interval_matches_the_textbook_formula():
    low, high = precision_interval(19, 20)
    z, p, n = 1.959963984540054, 0.95, 20
    centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert low == pytest.approx((centre - half) / (1 + z * z / n))
    assert high == pytest.approx((centre + half) / (1 + z * z / n))
    assert all(math.isnan(v) for v in precision_interval(0, 0))


def test_csv_round_trip_keeps_every_threshold_exactly(tmp_path):
    val, test = _calibrated(3000, seed=6, hard_class=2), _calibrated(3000, seed=7, hard_class=2)
    report = evaluate_thresholds(fit_thresholds(*val, CLASSES, target_precision=0.9), *test)
    path = tmp_path / "reports" / "thresholds.csv"
    write_thresholds(path, report)
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert list(rows[0]) == list(HEADER)
    assert [r["reached"] for r in rows] == ["true", "true", "false"]
    assert rows[2]["threshold"] == "1"
    assert int(rows[0]["test_emitted"]) == report.classes[0].test_emitted
    assert float(rows[0]["test_precision_low"]) == pytest.approx(report.classes[0].test_precision_low)
    assert read_thresholds(path, CLASSES) == report.thresholds()  # exact: a sample at the threshold stays in


def test_untested_report_leaves_the_test_columns_blank(tmp_path):
    report = fit_thresholds(*_calibrated(1000, seed=8), CLASSES, target_precision=0.8)
    write_thresholds(tmp_path / "t.csv", report)
    rows = list(csv.DictReader((tmp_path / "t.csv").read_text().splitlines()))
    assert {r["test_emitted"] for r in rows} == {""}
    assert read_thresholds(tmp_path / "t.csv", CLASSES) == report.thresholds()


def _rewrite(path, column, row, value):
    rows = list(csv.DictReader(path.read_text().splitlines()))
    rows[row][column] = value
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("class", "z", r"missing classes \['a'\], unknown classes \['z'\]"),
        ("class", "b", r"repeated \['b'\]"),
        ("threshold", "1.2", "threshold must be in \\[0, 1\\], got 1.2"),
        ("threshold", "high", "threshold must be a number"),
        ("test_precision", "-0.1", "test_precision must be in \\[0, 1\\]"),
        ("reached", "yes", "reached must be true or false"),
    ],
)
def test_reading_checks_classes_and_ranges(tmp_path, column, value, message):
    path = tmp_path / "thresholds.csv"
    write_thresholds(path, evaluate_thresholds(fit_thresholds(*_calibrated(800, 9), CLASSES), *_calibrated(800, 10)))
    _rewrite(path, column, 0, value)
    with pytest.raises(ValueError, match=message):
        read_thresholds(path, CLASSES)


def test_bad_arguments_are_named():
    probs, targets = _calibrated(100, seed=11)
    with pytest.raises(ValueError, match="target_precision must be in"):
        fit_thresholds(probs, targets, CLASSES, target_precision=1.5)
    with pytest.raises(ValueError, match="targets must be class ids"):
        fit_thresholds(probs, targets + 3, CLASSES)
    with pytest.raises(ValueError, match="N x 3 probabilities"):
        fit_thresholds(probs[:, :2], targets, CLASSES)


def test_the_output_policy_emits_exactly_what_the_test_evaluation_counted():
    from inference.decisions import LABEL, OutputPolicy, decide

    val, (probs, targets) = _calibrated(3000, seed=12, hard_class=0), _calibrated(3000, seed=13, hard_class=0)
    report = evaluate_thresholds(fit_thresholds(*val, CLASSES, target_precision=0.9), probs, targets)
    decisions = decide(probs, OutputPolicy(tuple(CLASSES), class_thresholds=report.thresholds()))
    emitted = decisions.decision == LABEL
    assert emitted.sum() == report.test_emitted
    assert (decisions.label[emitted] == np.array(CLASSES)[targets[emitted]]).sum() == report.test_correct
    assert "a" not in set(decisions.label)  # the class that never reached 0.9
