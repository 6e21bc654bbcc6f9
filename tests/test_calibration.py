"""ECE, the reliability diagram and temperature scaling on a real digit classifier made over-confident."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torchmetrics.classification import MulticlassCalibrationError

from evaluation.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    bound_note,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    reliability_figure,
)


@pytest.fixture(scope="module")
def overconfident() -> dict:
    """Logits of a logistic regression on scikit-learn's digits, times 3: right as often, far surer."""
    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    train, val, test = order[:700], order[700:1250], order[1250:]
    pixels = digits.data / 16.0
    model = LogisticRegression(max_iter=1000, C=5.0).fit(pixels[train], digits.target[train])
    return {
        split: (3.0 * model.decision_function(pixels[idx]), digits.target[idx])
        for split, idx in (("val", val), ("test", test))
    }


def test_temperature_fitted_on_validation_lowers_test_ece(overconfident):
    result = calibrate(*overconfident["val"], *overconfident["test"])
    assert result.temperature > 1.5  # it undoes most of the factor 3
    assert result.ece_after < 0.6 * result.ece_before
    assert result.nll_after < result.nll_before
    record = json.loads(json.dumps(result.to_dict()))
    assert record["fitted_on"] == "val" and record["evaluated_on"] == "test"
    assert record["samples_evaluated"] == len(overconfident["test"][1]) and record["n_bins"] == 15
    # Accuracy is untouched: dividing by T > 0 keeps every argmax.
    logits, _ = overconfident["test"]
    assert (logits.argmax(1) == (logits / result.temperature).argmax(1)).all()


def test_ece_is_torchmetrics_and_the_diagram_bins_add_up_to_it(overconfident):
    logits, targets = overconfident["test"]
    metric = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")
    expected = float(metric(torch.softmax(torch.tensor(logits, dtype=torch.float32), 1), torch.tensor(targets)))
    ece = expected_calibration_error(logits, targets)
    assert ece == pytest.approx(expected, abs=1e-6)
    bins = reliability_bins(logits, targets)
    filled = bins.counts > 0
    from_bins = np.sum(bins.counts[filled] / bins.counts.sum() * np.abs(bins.accuracy - bins.confidence)[filled])
    assert from_bins == pytest.approx(ece, abs=1e-5)
    assert bins.counts.sum() == len(targets) and len(bins.edges) == 16


def test_reliability_figure_shows_the_ece_and_the_counts(overconfident, tmp_path):
    logits, targets = overconfident["test"]
    bins = reliability_bins(logits, targets)
    ece = expected_calibration_error(logits, targets)
    fig = reliability_figure(bins, ece, title="test")
    top, bottom = fig.axes
    assert top.get_title() == f"test: ECE {ece:.1%} (15 bins)"
    assert {t.get_text() for t in bottom.texts} == {str(int(n)) for n in bins.counts if n}
    diagonal = top.lines[0]
    assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
    fig.savefig(tmp_path / "reliability.png")
    assert Image.open(tmp_path / "reliability.png").size[0] > 300


def test_degenerate_inputs_give_a_bounded_temperature_or_a_clear_error():
    targets = np.array([0, 1, 2, 1])
    assert fit_temperature(np.zeros((4, 3)), targets) == 1.0  # constant logits: nothing to fit
    separated = np.eye(3)[targets] * 50.0  # all right with huge margins: NLL keeps falling as T -> 0
    t = fit_temperature(separated, targets)
    assert MIN_TEMPERATURE <= t <= 1.0 and np.isfinite(t)
    all_wrong = np.eye(3)[(targets + 1) % 3] * 50.0  # all wrong, sure of it: T grows to its bound
    hot = fit_temperature(all_wrong, targets)
    assert 1.0 < hot <= MAX_TEMPERATURE
    # A temperature at a bound is said to be one wherever it is reported.
    assert "upper bound" in bound_note(MAX_TEMPERATURE) and "lower bound" in bound_note(MIN_TEMPERATURE)
    assert bound_note(1.3) == "" and (bound_note(hot) != "") == (hot > 0.999 * MAX_TEMPERATURE)
    assert np.isfinite(fit_temperature(np.array([[2.0, -1.0]]), np.array([0])))  # one sample
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_temperature(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="N x C logits and N class ids"):
        fit_temperature(np.zeros((4, 3)), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 2\]"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))
