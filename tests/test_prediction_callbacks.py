"""What training leaves for prediction: per-class thresholds fitted on the best checkpoint's validation
outputs (with the run's temperature) and checked on test, and the unfamiliar-input index of the best
checkpoint's training embeddings with its threshold set on validation. Both are recomputed here from
best.ckpt, independently of the callbacks."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.special import softmax

from callbacks import ClassThresholds, UnfamiliarInputs
from datamodules import Catalogue, ImageDataModule, LoaderOptions
from inference.familiarity import FamiliarityIndex
from inference.prediction import checkpoint_model
from inference.thresholds import fit_thresholds, precision_interval
from runs.checkpoints import read_checkpoint
from tests.conftest import compose_config, tiny_overrides

TEMPERATURE = 1.7


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits_folder):
    """A tiny run whose calibration (written before the run, as the calibration callback would) has T = 1.7."""
    from train import train

    run_dir = tmp_path_factory.mktemp("thresholds") / "run"
    (run_dir / "reports").mkdir(parents=True)
    (run_dir / "reports" / "calibration.json").write_text(json.dumps({"temperature": TEMPERATURE}))
    cfg = compose_config(
        [
            *tiny_overrides(digits_folder, run_dir),
            "data.test_fraction=0.2",
            "callbacks.class_thresholds.target_precision=0.8",
            "callbacks.class_thresholds.min_support=3",
            "callbacks.unfamiliar_inputs.max_train_images=100",
            "callbacks.embedding_projector=null",
            "callbacks.hardest_errors=null",
            "callbacks.label_suspects=null",
            "callbacks.augmentation_preview=null",
            "callbacks.calibration=null",  # it would fit its own temperature over the planted one
        ]
    )
    return run_dir, train(cfg)


def _outputs(run_dir, split: str):
    """Logits, embeddings and targets of ``split`` under best.ckpt, computed here."""
    model = checkpoint_model(read_checkpoint(run_dir / "checkpoints" / "best.ckpt"), "cpu")
    catalogue = Catalogue.load(run_dir / "catalogue.json")
    targets = catalogue.targets(split)
    catalogue.splits = {"val": catalogue.splits[split]}  # served as validation: the evaluation transform
    data = ImageDataModule(catalogue, model.preprocessing, loader=LoaderOptions(eval_batch_size=32, num_workers=0))
    parts = [model.outputs(b["image"]) for b in data.val_dataloader()]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), targets


def test_thresholds_come_from_the_best_checkpoints_validation_outputs_at_the_runs_temperature(run):
    run_dir, metrics = run
    logits, _, targets = _outputs(run_dir, "val")
    names = json.loads((run_dir / "reports" / "classes.json").read_text())
    expected = fit_thresholds(
        softmax(logits / TEMPERATURE, axis=1), targets, names, target_precision=0.8, min_support=3
    )
    with open(run_dir / "reports" / "thresholds.csv", newline="") as f:
        rows = {r["class"]: r for r in csv.DictReader(f)}
    assert any(c.reached for c in expected.classes)  # the comparison covers real thresholds
    for c in expected.classes:
        saved = rows[c.class_name]
        assert saved["reached"] == str(c.reached).lower()
        if c.reached:
            assert float(saved["threshold"]) == pytest.approx(c.threshold, abs=1e-5)
    summary = json.loads((run_dir / "reports" / "thresholds.json").read_text())
    assert (
        summary["temperature"] == TEMPERATURE
        and summary["epoch"] == read_checkpoint(run_dir / "checkpoints" / "best.ckpt").epoch
    )

    # Test: coverage and precision with its 95% interval, as logged, written and recomputed.
    test_logits, _, test_targets = _outputs(run_dir, "test")
    probs = softmax(test_logits / TEMPERATURE, axis=1)
    limits = np.array([float(rows[n]["threshold"]) if rows[n]["reached"] == "true" else np.inf for n in names])
    emitted = probs.max(axis=1) >= limits[probs.argmax(axis=1)]
    correct = int((emitted & (probs.argmax(axis=1) == test_targets)).sum())
    assert metrics["test/thresholds_coverage"] == pytest.approx(emitted.mean(), abs=1e-6)
    assert summary["test_labelled"] == emitted.sum() and summary["test_samples"] == len(test_targets)
    if emitted.any():
        assert metrics["test/thresholds_precision"] == pytest.approx(correct / emitted.sum(), abs=1e-6)
        assert summary["test_precision_95ci"] == pytest.approx(list(precision_interval(correct, int(emitted.sum()))))
    assert all(r["test_emitted"] != "" for r in rows.values())


def test_the_index_holds_the_best_checkpoints_embeddings_with_a_validation_threshold(run):
    run_dir, _ = run
    index = FamiliarityIndex.load(run_dir / "familiarity")
    assert len(index) == 100 and index.info["epoch"] == read_checkpoint(run_dir / "checkpoints" / "best.ckpt").epoch
    _, val_embeddings, _ = _outputs(run_dir, "val")  # every validation image is in the collector's subset here
    assert index.threshold == pytest.approx(float(np.quantile(index.distances(val_embeddings), 0.95)), abs=1e-4)
    _, train_embeddings, _ = _outputs(run_dir, "train")
    # Each indexed embedding is a training image's under best.ckpt, with the evaluation transform.
    nearest = FamiliarityIndex(train_embeddings, k=1).distances(index.embeddings)
    assert nearest.max() <= 1e-4


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ClassThresholds(target_precision=0), r"target_precision=0\) must be in \(0, 1\]"),
        (lambda: ClassThresholds(min_support=0), r"min_support=0\) must be a positive integer"),
        (lambda: UnfamiliarInputs(max_train_images=0), r"max_train_images=0\) must be a positive integer"),
        (lambda: UnfamiliarInputs(quantile=1.0), r"quantile=1.0\) must be in \(0, 1\)"),
    ],
)
def test_arguments_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_bad_calibration_file_is_named(tmp_path):
    from callbacks.class_thresholds import run_temperature
    from runs.folder import RunFolder

    folder = RunFolder(tmp_path)
    assert run_temperature(folder) is None
    folder.write_json("calibration.json", {"temperature": -1})
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        run_temperature(folder)
    folder.write_json("calibration.json", {"temperature": 0.5})
    assert run_temperature(folder) == 0.5 and not math.isnan(run_temperature(folder))
