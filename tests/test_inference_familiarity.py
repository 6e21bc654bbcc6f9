"""Unfamiliar inputs: nearest-neighbour distances to the training embeddings, on real digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.model_selection import train_test_split

from inference.familiarity import EMBEDDINGS_FILE, SETTINGS_FILE, FamiliarityIndex, unfamiliar_auroc


@pytest.fixture(scope="module")
def digit_embeddings() -> dict[str, np.ndarray]:
    """PCA features learned on digits 0-4 (train); 5-9 are classes the features never saw."""
    pixels, labels = load_digits(return_X_y=True)
    known = labels < 5
    train, rest = train_test_split(pixels[known] / 16, test_size=0.4, random_state=0, stratify=labels[known])
    val, test = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    features = PCA(n_components=20, random_state=0).fit(train)
    return {
        "train": features.transform(train),
        "val": features.transform(val),
        "test": features.transform(test),
        "unseen": features.transform(pixels[~known] / 16),
    }


def test_unseen_digits_are_far_and_flagged(digit_embeddings):
    index = FamiliarityIndex(digit_embeddings["train"], k=10)
    threshold = index.calibrate(digit_embeddings["val"], quantile=0.95)
    known, unseen = index.flag(digit_embeddings["test"]), index.flag(digit_embeddings["unseen"])
    assert known.threshold == threshold == index.threshold
    assert unfamiliar_auroc(known.distance, unseen.distance) > 0.95
    assert unfamiliar_auroc(known.unfamiliar, unseen.unfamiliar) > 0.85
    assert known.unfamiliar.mean() < 0.1  # about the 5% chosen on validation
    assert unseen.unfamiliar.mean() > 0.7
    assert ((known.distance >= 0) & (known.distance <= 2)).all()


def test_distance_is_the_kth_nearest_cosine_distance():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    index = FamiliarityIndex(train * 5, k=2)  # scale does not matter: cosine
    # [1, 0.1]: nearest (1, 0) then (1, 1) at cosine 0.7777; the second-nearest gives the distance.
    query = np.array([[1.0, 0.1]])
    expected = 1 - (1.1 / np.sqrt(2)) / np.linalg.norm(query)
    np.testing.assert_allclose(index.distances(query), [expected], atol=1e-6)
    assert FamiliarityIndex(train, k=50).k == 4  # capped at the number of training embeddings


def test_save_load_round_trip_gives_identical_distances(tmp_path, digit_embeddings):
    index = FamiliarityIndex(digit_embeddings["train"], k=7)
    index.calibrate(digit_embeddings["val"], quantile=0.9)
    folder = index.save(tmp_path / "familiarity")
    loaded = FamiliarityIndex.load(folder)
    assert (loaded.k, loaded.threshold, loaded.quantile, len(loaded)) == (7, index.threshold, 0.9, len(index))
    for split in ("test", "unseen"):
        queries = digit_embeddings[split]
        np.testing.assert_array_equal(loaded.distances(queries), index.distances(queries))
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    assert settings["count"] == len(digit_embeddings["train"]) and settings["dim"] == 20


def test_loading_refuses_pickles_and_mismatched_files(tmp_path):
    folder = FamiliarityIndex(np.eye(3), k=1, threshold=0.5).save(tmp_path / "index")
    assert FamiliarityIndex.load(folder).threshold == 0.5
    np.save(folder / EMBEDDINGS_FILE, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        FamiliarityIndex.load(folder)
    np.save(folder / EMBEDDINGS_FILE, np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="come from different runs"):
        FamiliarityIndex.load(folder)
    np.save(folder / EMBEDDINGS_FILE, np.eye(3, dtype=np.float32))
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    (folder / SETTINGS_FILE).write_text(json.dumps({**settings, "threshold": "0.5"}))
    with pytest.raises(ValueError, match="threshold must be a number or null"):
        FamiliarityIndex.load(folder)


def test_flag_needs_a_threshold_and_matching_dimensions():
    index = FamiliarityIndex(np.eye(3))
    with pytest.raises(ValueError, match="call calibrate"):
        index.flag(np.eye(3))
    with pytest.raises(ValueError, match="index was built on 3"):
        index.distances(np.ones((2, 4)))
    with pytest.raises(ValueError, match="both known"):
        unfamiliar_auroc(np.array([]), np.array([1.0]))
