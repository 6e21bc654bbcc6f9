"""Output filtering: blocked classes are never shown, abstention below thresholds, unfamiliar inputs."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from inference.decisions import ABSTAIN, LABEL, WITHHELD, OutputPolicy, decide, write_predictions

CLASSES = ("cat", "dog", "secret", "fox")


def test_blocked_top_class_is_withheld_without_fallback():
    probs = np.array(
        [
            [0.01, 0.01, 0.97, 0.01],  # a blocked class, very confident
            [0.30, 0.20, 0.45, 0.05],  # a blocked class, unsure
            [0.10, 0.75, 0.10, 0.05],  # allowed, the blocked class is runner-up
            [0.40, 0.10, 0.40, 0.10],  # a tie with a blocked class counts as blocked
        ]
    )
    d = decide(probs, OutputPolicy(CLASSES, blocked_classes={"secret"}, top_k=3))
    assert d.decision.tolist() == [WITHHELD, WITHHELD, LABEL, WITHHELD]
    assert d.label.tolist() == ["", "", "dog", ""]
    # Withheld rows list nothing (their best allowed class would be a fallback); others skip the blocked class.
    assert d.top_classes[0].tolist() == ["", "", ""] and np.isnan(d.top_probabilities[0]).all()
    assert d.top_classes[2].tolist() == ["dog", "cat", "fox"]
    np.testing.assert_allclose(d.top_probabilities[2], [0.75, 0.10, 0.05])  # not renormalised
    assert np.isnan(d.confidence[[0, 1, 3]]).all() and d.confidence[2] == pytest.approx(0.75)
    assert not any("secret" in r for r in d.reason)
    assert d.counts() == {LABEL: 1, ABSTAIN: 0, WITHHELD: 3}


def test_random_rows_never_show_a_blocked_class_and_withhold_exactly_when_one_leads():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(500, 4))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    blocked = {"secret", "cat"}
    d = decide(probs, OutputPolicy(CLASSES, blocked_classes=blocked, top_k=4))
    leads = np.isin(np.array(CLASSES)[probs.argmax(axis=1)], list(blocked))
    assert leads.any() and (~leads).any()
    np.testing.assert_array_equal(d.decision == WITHHELD, leads)
    shown = set(d.label.tolist()) | set(d.top_classes.ravel().tolist())
    assert shown.isdisjoint(blocked)
    assert d.top_classes.shape == (500, 2)  # only two classes are allowed


def test_min_confidence_and_class_thresholds_abstain_with_the_reason():
    probs = np.array(
        [
            [0.90, 0.05, 0.03, 0.02],  # cat 0.90 >= both limits
            [0.55, 0.25, 0.10, 0.10],  # cat below min_confidence 0.6
            [0.05, 0.85, 0.05, 0.05],  # dog below its own threshold 0.9
            [0.02, 0.01, 0.01, 0.96],  # fox never emitted
        ]
    )
    policy = OutputPolicy(CLASSES, min_confidence=0.6, class_thresholds={"dog": 0.9, "fox": math.inf})
    d = decide(probs, policy)
    assert d.decision.tolist() == [LABEL, ABSTAIN, ABSTAIN, ABSTAIN]
    assert d.label.tolist() == ["cat", "", "", ""]
    assert "min_confidence 0.600" in d.reason[1]
    assert "threshold 0.900 for class 'dog'" in d.reason[2]
    assert "never emitted" in d.reason[3]
    assert d.top_classes[1, 0] == "cat"  # abstained rows keep their ranking for review


def test_unfamiliar_inputs_abstain_even_when_confident():
    probs = np.array([[0.97, 0.01, 0.01, 0.01], [0.97, 0.01, 0.01, 0.01]])
    d = decide(
        probs,
        OutputPolicy(CLASSES),
        unfamiliar=np.array([True, False]),
        distance=np.array([0.61, 0.12]),
        distance_threshold=0.3,
    )
    assert d.decision.tolist() == [ABSTAIN, LABEL]
    assert d.reason[0] == "unfamiliar input: distance 0.610 to the training images > threshold 0.300"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"blocked_classes": {"Secret", "wolf"}}, "['Secret', 'wolf'] names classes the model does not have"),
        ({"blocked_classes": set(CLASSES)}, "blocks every class"),
        ({"min_confidence": 1.5}, "min_confidence must be in [0, 1]"),
        ({"class_thresholds": {"owl": 0.5}}, "class thresholds name ['owl']"),
        ({"class_thresholds": {"cat": -0.1}}, "must be in [0, 1]"),
        ({"top_k": 0}, "top_k must be at least 1"),
    ],
)
def test_policy_errors_name_the_option_and_the_valid_classes(kwargs, message):
    with pytest.raises(ValueError) as err:
        OutputPolicy(CLASSES, **kwargs)
    assert message in str(err.value)
    if "blocked_classes" in kwargs and "wolf" in kwargs["blocked_classes"]:
        assert "['cat', 'dog', 'secret', 'fox']" in str(err.value)


def test_logits_are_refused():
    with pytest.raises(ValueError, match="not logits"):
        decide(np.array([[2.0, -1.0, 0.5, 0.1]]), OutputPolicy(CLASSES))
    with pytest.raises(ValueError, match="N x 4"):
        decide(np.ones((2, 3)) / 3, OutputPolicy(CLASSES))


def test_predictions_csv_reads_back_and_never_mentions_a_blocked_class(tmp_path):
    probs = np.array([[0.05, 0.05, 0.85, 0.05], [0.1, 0.7, 0.15, 0.05], [0.4, 0.35, 0.2, 0.05]])
    distance = np.array([0.1, 0.2, 0.9])
    unfamiliar = distance > 0.5
    d = decide(
        probs, OutputPolicy(CLASSES, blocked_classes={"secret"}, top_k=2), unfamiliar=unfamiliar, distance=distance
    )
    out = tmp_path / "predictions.csv"
    write_predictions(out, ["a.png", "b.png", "c.png"], d, distance=distance, unfamiliar=unfamiliar)
    assert "secret" not in out.read_text()
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["path"] for r in rows] == ["a.png", "b.png", "c.png"]
    assert [r["decision"] for r in rows] == [WITHHELD, LABEL, ABSTAIN]
    assert rows[1]["label"] == "dog" and float(rows[1]["confidence"]) == pytest.approx(0.7)
    assert (rows[1]["class_1"], rows[1]["class_2"]) == ("dog", "cat")
    assert float(rows[1]["probability_2"]) == pytest.approx(0.1)
    assert rows[0]["class_1"] == rows[0]["probability_1"] == rows[0]["confidence"] == ""
    assert [r["unfamiliar"] for r in rows] == ["false", "false", "true"]
    assert float(rows[2]["distance"]) == pytest.approx(0.9)
