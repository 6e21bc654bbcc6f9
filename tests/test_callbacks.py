"""The review panels, read back from the written TensorBoard event files and report files."""

from __future__ import annotations

import csv
import io
import itertools
import math
import re

import numpy as np
import pytest
from PIL import Image

from callbacks.confusion_matrix import ConfusionMatrix, confused_pairs
from callbacks.embedding_projector import METADATA_HEADER, SPRITE_LIMIT, centroid_distances, sprite_thumb_size
from callbacks.hardest_errors import nearest
from callbacks.sample_outputs import stratified_subset

VAL_SIZE = 60  # 10 classes x 6 (val_fraction 0.2 of 30)
TEST_SIZE = 30


@pytest.fixture(scope="module")
def events(trained):
    """{tag: [(step, payload)]} of every image and text summary the run wrote."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = trained[0]
    accumulator = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0, "scalars": 0}
    )
    accumulator.Reload()
    return accumulator


def _read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_image_tags_and_steps(events):
    tags = set(events.Tags()["images"])
    per_epoch = ["val/confusion_matrix", "val/embedding_map", "val/hardest_errors", "val/confident_mistakes"]
    for tag in per_epoch:
        assert [e.step for e in events.Images(tag)] == [0, 1, 2], tag  # one per epoch, step = epoch
    # Nearest training images need the previous epoch's training embeddings: from epoch 1 on.
    assert [e.step for e in events.Images("val/hardest_errors_neighbours")] == [1, 2]
    assert [e.step for e in events.Images("train/augmentation_preview")] == [0]
    assert [e.step for e in events.Images("train/label_suspects")] == [2]
    assert [e.step for e in events.Images("train/data_map")] == [2]
    for tag in ("test/confusion_matrix", "test/hardest_errors", "test/embedding_map"):
        assert tag in tags
    matrix = events.Images("val/confusion_matrix")[-1]
    assert matrix.width >= 800 and matrix.height >= 500
    image = Image.open(io.BytesIO(matrix.encoded_image_string))
    assert image.size == (matrix.width, matrix.height)
    assert np.asarray(image).std() > 10  # not a blank canvas


def test_confusion_matrix_csv_agrees_with_the_split_and_the_text(trained, events):
    run_dir = trained[0]
    rows = _read_csv(run_dir / "reports" / "val" / "confusion_matrix.csv")
    assert rows[0][1:] == [f"digit_{c}" for c in range(10)]
    matrix = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert matrix.sum() == VAL_SIZE
    assert matrix.sum(axis=1).tolist() == [6] * 10
    test_rows = _read_csv(run_dir / "reports" / "test" / "confusion_matrix.csv")
    assert sum(int(v) for row in test_rows[1:] for v in row[1:]) == TEST_SIZE
    text = events.Tensors("val/confused_pairs/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert f"{VAL_SIZE} samples" in text
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    assert off.max() > 0  # a 3-epoch tiny model makes mistakes; the text must list the largest pair first
    first = re.search(r"\| (\S+) → (\S+) \| (\d+) \|", text)
    assert int(first.group(3)) == off.max()
    assert matrix[int(first.group(1)[-1]), int(first.group(2)[-1])] == off.max()
    per_class = {r[0]: r for r in _read_csv(run_dir / "reports" / "val" / "per_class_metrics.csv")[1:]}
    for c in range(10):
        assert int(per_class[f"digit_{c}"][4]) == 6
        assert float(per_class[f"digit_{c}"][2]) == pytest.approx(matrix[c, c] / 6, abs=1e-6)  # recall
    hardest = _read_csv(run_dir / "reports" / "val" / "hardest.csv")
    assert len(hardest) - 1 == VAL_SIZE - np.trace(matrix)  # every mistake, once
    losses = [float(r[7]) for r in hardest[1:]]
    assert losses == sorted(losses, reverse=True)


def test_projector_files_parse_with_one_metadata_row_per_point(trained):
    run_dir = trained[0] / "tensorboard"
    config = (run_dir / "projector_config.pbtxt").read_text()
    for step in ("00000", "00001", "00002"):
        assert f"{step}/val_embeddings" in config
    folder = run_dir / "00002" / "val_embeddings"
    metadata = (folder / "metadata.tsv").read_text().splitlines()
    vectors = (folder / "tensors.tsv").read_text().splitlines()
    assert metadata[0].split("\t") == METADATA_HEADER
    assert len(metadata) - 1 == len(vectors) == VAL_SIZE
    indices = [int(line.split("\t")[7]) for line in metadata[1:]]
    assert sorted(indices) == list(range(VAL_SIZE))
    # One sprite per split, written at the first epoch; every later entry points at it.
    sprites = re.findall(r'tensor_name: "val_embeddings:\d+".*?image_path: "([^"]+)"', config, re.S)
    assert sprites == ["00000/val_embeddings/sprite.png"] * 3
    assert not (folder / "sprite.png").exists()
    sprite = Image.open(run_dir / sprites[0])
    side = math.ceil(math.sqrt(VAL_SIZE)) * 48
    assert sprite.size == (side, side)
    points = _read_csv(trained[0] / "reports" / "val" / "embedding_points.csv")
    matrix = np.array(
        [[int(v) for v in row[1:]] for row in _read_csv(trained[0] / "reports" / "val" / "confusion_matrix.csv")[1:]]
    )
    assert sum(r[2] == "yes" for r in points[1:]) == np.trace(matrix)


def test_sprite_stays_within_the_projector_limit():
    for n in (10, 2000, 10000, 100000):
        size = sprite_thumb_size(n, 64)
        assert math.ceil(math.sqrt(n)) * size <= SPRITE_LIMIT and size >= 1


def test_confused_pairs_and_the_many_class_figure():
    rng = np.random.default_rng(0)
    matrix = np.diag(np.full(40, 20)) + rng.integers(0, 3, (40, 40))
    matrix[3, 7] = 15
    pairs = confused_pairs(matrix, 5)
    assert pairs[0][:3] == (3, 7, 15)
    assert all(a[2] >= b[2] for a, b in itertools.pairwise(pairs))
    image = ConfusionMatrix._pairs_figure(pairs, [f"class_{i}" for i in range(40)], "val epoch 0")
    assert image.shape[2] == 3 and image.shape[1] >= 800


def test_centroid_distances_match_the_definition():
    emb = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [12.0, 0.0]])
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    own, predicted = centroid_distances(emb, target, pred, 2)
    assert own.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert predicted.tolist() == [1.0, 9.0, 1.0, 1.0]


def test_stratified_subset_is_bounded_and_keeps_every_class():
    targets = np.repeat(np.arange(5), [1000, 500, 100, 10, 1])
    subset = stratified_subset(targets, 200, seed=0)
    assert len(subset) <= 200 and len(np.unique(subset)) == len(subset)
    counts = np.bincount(targets[subset], minlength=5)
    assert counts.min() >= 1 and counts[0] > counts[1] > counts[2]
    assert np.array_equal(subset, stratified_subset(targets, 200, seed=0))
    # More classes than samples allowed: one sample each of a random choice of classes, not the first ones.
    many = np.repeat(np.arange(300), 3)
    subset = stratified_subset(many, 200, seed=0)
    assert len(subset) == 200 and len(np.unique(many[subset])) == 200
    assert many[subset].max() > 250


def test_nearest_uses_cosine_similarity():
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [10.0, 1.0]])
    assert nearest(np.array([[0.1, 1.0]]), pool, 2).tolist() == [[1, 2]]


def test_every_tag_belongs_to_one_plugin(trained):
    """TensorBoard files a tag under the first plugin that writes it: an image and a text on one
    tag would hide one of them in the real UI."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    plugins: dict[str, set[str]] = {}
    for path in (trained[0] / "tensorboard").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                kind = value.metadata.plugin_data.plugin_name or value.WhichOneof("value")
                plugins.setdefault(value.tag, set()).add(kind)
    shared = {tag: kinds for tag, kinds in plugins.items() if len(kinds) > 1}
    assert not shared
    assert "train/label_suspects_table/text_summary" in plugins
