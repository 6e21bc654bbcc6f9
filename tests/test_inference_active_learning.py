""" "Label these next": uncertainty with diversity, so a budget is not spent on copies of one image."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from inference.active_learning import rank_label_next, uncertainty, write_label_next

CLASSES = ["a", "b", "c"]


def _probs(margins: list[float]) -> np.ndarray:
    """Rows whose two leading classes differ by ``margin`` (class a first, b second)."""
    rows = []
    for m in margins:
        p1 = (1 + m) / 2 * 0.9
        rows.append([p1, p1 - m * 0.9, 0.1])
    return np.array(rows)


@pytest.fixture
def duplicates_case() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Five copies of the most uncertain image, three distinct uncertain ones, four confident ones.

    The distinct images point in their own directions (orthogonal), so each is equally far from the rest.
    """
    copies = [np.eye(8)[0]] * 5
    distinct = [np.eye(8)[i] for i in (1, 2, 3)]
    confident = [np.eye(8)[i] for i in (4, 5, 6, 7)]
    embeddings = np.array(copies + distinct + confident)
    margins = [0.02] * 5 + [0.10, 0.20, 0.30] + [0.9, 0.92, 0.95, 0.97]
    paths = [f"copy{i}.png" for i in range(5)] + ["b1.png", "b2.png", "b3.png"] + [f"sure{i}.png" for i in range(4)]
    return _probs(margins), embeddings, paths


def test_copies_of_one_uncertain_image_are_not_all_picked_first(duplicates_case):
    probs, embeddings, paths = duplicates_case
    ranking = rank_label_next(probs, embeddings, method="margin", budget=12)
    ranked = [paths[i] for i in ranking.order]
    assert ranked[0].startswith("copy")  # the most uncertain image, once
    assert ranked[1:4] == ["b1.png", "b2.png", "b3.png"]  # then the most uncertain distinct ones, in order
    assert ranked[4:8] == [f"sure{i}.png" for i in range(4)]  # anything new before a copy of something picked
    assert all(p.startswith("copy") for p in ranked[8:])
    assert sorted(ranking.order.tolist()) == list(range(len(paths)))
    # Uncertainty alone would have spent the first five picks on the copies.
    assert [paths[i] for i in np.argsort(-uncertainty(probs))[:5]] == [f"copy{i}.png" for i in range(5)]


def test_labelled_training_images_push_their_look_alikes_down(duplicates_case):
    probs, embeddings, paths = duplicates_case
    # The uncertain copies are already labelled (a training image at the same spot): a new image goes first.
    ranking = rank_label_next(probs, embeddings, train_embeddings=np.eye(8)[:1], budget=12)
    assert paths[ranking.order[0]] == "b1.png"
    assert {paths[i] for i in ranking.order[-5:]} == {f"copy{i}.png" for i in range(5)}
    assert ranking.distance[0] == pytest.approx(0.0, abs=1e-6)


def test_after_the_budget_the_rest_follow_by_score(duplicates_case):
    probs, embeddings, paths = duplicates_case
    ranking = rank_label_next(probs, embeddings, budget=2)
    assert ranking.diversified == 2
    assert len(ranking.order) == len(paths) and len(set(ranking.order.tolist())) == len(paths)
    assert paths[ranking.order[2]] == "b2.png"  # b1 was picked second; b2 is the next by uncertainty x distance


def test_uncertainty_measures_are_in_zero_one():
    probs = np.array([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.6, 0.3, 0.1]])
    np.testing.assert_allclose(uncertainty(probs, "margin"), [1.0, 0.0, 0.7])
    entropy = uncertainty(probs, "entropy")
    np.testing.assert_allclose(entropy[:2], [1.0, 0.0], atol=1e-12)
    assert 0 < entropy[2] < 1
    with pytest.raises(ValueError, match="must be one of"):
        uncertainty(probs, "variance")


def test_label_next_csv_reads_back(tmp_path, duplicates_case):
    probs, embeddings, paths = duplicates_case
    ranking = rank_label_next(probs, embeddings, budget=12)
    out = tmp_path / "label_next.csv"
    write_label_next(out, ranking, paths, probs, CLASSES)
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert list(rows[0]) == ["rank", "path", "uncertainty", "distance", "predicted_label", "reason"]
    assert [int(r["rank"]) for r in rows] == list(range(1, 13))
    assert [r["path"] for r in rows] == [paths[i] for i in ranking.order]
    assert rows[0]["distance"] == "" and "nothing labelled" in rows[0]["reason"]
    assert float(rows[1]["distance"]) == pytest.approx(1.0)  # orthogonal to the first pick
    assert rows[0]["predicted_label"] == "a" and "margin 0.018 between 'a' and 'b'" in rows[0]["reason"]
    assert all("near-copy of rank 1" in r["reason"] for r in rows[8:])
    assert float(rows[0]["uncertainty"]) == pytest.approx(1 - 0.02 * 0.9)


def test_shapes_and_budget_are_checked():
    with pytest.raises(ValueError, match="embeddings"):
        rank_label_next(np.full((3, 3), 1 / 3), np.eye(4))
    with pytest.raises(ValueError, match="label_budget must be at least 1"):
        rank_label_next(np.full((3, 3), 1 / 3), np.eye(3), budget=0)
