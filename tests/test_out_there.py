"""How the evaluation checks are judged, on a held-out CSV data set (tests/checks_data.py) where camera C's
images are darker, out of focus and fewer, and the ``site`` column is planted to predict the label.

One small model is trained through ``train.py`` with the slice, calibration and activation-map panels
and the corruption grid at test time; every check reads what the run wrote: report files, the
checkpoint, TensorBoard event files and the end-of-run summary.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from evaluation.robustness import CLEAN
from runs.checkpoints import read_checkpoint
from tests.checks_data import write_planted_manifest
from tests.conftest import compose_config

# The types the issue lists for noise and blur (glass blur, added from ImageNet-C, is checked apart).
NOISE_AND_BLUR = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur")
SPLITS = {"train": 480, "val": 160, "test": 240}
OFF = (
    "embedding_projector", "label_suspects", "early_stopping", "hardest_errors", "confusion_matrix",
    "per_class_metrics", "augmentation_preview", "heldout_predictions",
)  # fmt: skip


def planted_overrides(manifest, run_dir) -> list[str]:
    return [
        "data=csv",
        f"data.manifest={manifest}",
        "data.image_size=32",
        "data.crop_pct=1.0",  # the 32 px images as they are
        "data.num_workers=0",
        "data.batch_size=32",
        "augment=none",
        "model=scratch",
        "model.name=test_convnext",
        "model.label_smoothing=0.2",  # an under-confident model: something for the temperature to fix
        "trainer=cpu",
        "trainer.max_epochs=20",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        "callbacks=[default,robustness_grid]",
        "robustness=cifar",  # the parameters for small inputs
        "robustness.num_workers=0",
        # Panels these checks do not read, off (or less often) to save time.
        *(f"callbacks.{name}=null" for name in OFF),
        "callbacks.slice_metrics.every_n_epochs=3",
        "callbacks.calibration.every_n_epochs=3",
        "callbacks.activation_maps.every_n_epochs=0",
        f"paths.output_dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(run folder, end-of-run output, manifest) of one training on the planted data."""
    from train import train

    root = tmp_path_factory.mktemp("planted")
    manifest = write_planted_manifest(root / "data", SPLITS)
    run_dir = root / "run"
    printed = io.StringIO()
    threads = torch.get_num_threads()
    # A 32 px model gains nothing from a second thread, and on a busy machine two OpenMP threads
    # wait for each other most of the time.
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(printed):
            train(compose_config(planted_overrides(manifest, run_dir)))
    finally:
        torch.set_num_threads(threads)
    return run_dir, printed.getvalue(), manifest


@pytest.fixture(scope="module")
def events(planted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(planted[0] / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _text(events, tag: str) -> str:
    return events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


def _summary(printed: str, key: str) -> str:
    return next(line for line in printed.splitlines() if line.startswith(f"{key:<13}"))


@pytest.mark.slow
def test_the_worst_flagged_slice_is_the_dark_camera(planted, events):
    run_dir, printed, _ = planted
    table = pd.read_csv(run_dir / "reports" / "test" / "slices.csv", dtype={"slice": str})
    flagged = table[table["flagged"]]
    worst = flagged.iloc[0]
    assert (worst["column"], worst["slice"]) == ("camera", "C")
    overall = json.loads((run_dir / "reports" / "metrics.json").read_text())["test/acc"]
    assert worst["ci_high"] < overall and worst["accuracy"] == table["accuracy"].min()
    cameras = table[table["column"] == "camera"].set_index("slice")
    assert cameras["count"].sum() == SPLITS["test"] and cameras.loc["C", "count"] < cameras.loc["A", "count"] / 2
    assert not cameras.loc[["A", "B"], "flagged"].any()
    # Every metadata column and image property gives slices; the planted column is just another one here.
    assert {"camera", "altitude", "time_of_day", "site", "image_brightness", "image_contrast"} <= set(table["column"])
    assert "| camera = C |" in _text(events, "test/slices").split("\n")[4]
    assert len(events.Images("test/slices")) == 1 and [e.step for e in events.Images("val/slices")] == [
        2,
        5,
        8,
        11,
        14,
        17,
    ]
    assert "worst camera = C" in _summary(printed, "slices")


@pytest.mark.slow
def test_the_shortcut_check_warns_on_the_planted_column_only(planted, events):
    run_dir, printed, _ = planted
    with open(run_dir / "reports" / "shortcuts.csv") as f:
        rows = {r["column"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"camera", "altitude", "time_of_day", "site"}
    assert [c for c, r in rows.items() if r["warn"] == "True"] == ["site"]
    assert float(rows["site"]["accuracy"]) > 0.8 and float(rows["camera"]["lift"]) < 0.1
    text = _text(events, "train/shortcuts")
    assert text.count("**Warning**") == 1 and "'site' predicts the label" in text
    assert "site" in _summary(printed, "shortcuts") and "camera" not in _summary(printed, "shortcuts")


@pytest.mark.slow
def test_temperature_scaling_lowers_test_ece(planted, events):
    run_dir, printed, _ = planted
    record = json.loads((run_dir / "reports" / "calibration.json").read_text())
    assert record["evaluated_on"] == "test" and record["samples_evaluated"] == SPLITS["test"]
    assert record["ece_after"] < 0.7 * record["ece_before"]
    assert record["nll_after"] < record["nll_before"]
    assert record["temperature"] < 1  # label smoothing made the model under-confident
    assert read_checkpoint(run_dir / "checkpoints" / "best.ckpt").temperature == pytest.approx(record["temperature"])
    assert events.Scalars("test/ece_calibrated")[-1].value == pytest.approx(record["ece_after"], abs=1e-6)
    assert f"{record['ece_before']:.2%} -> {record['ece_after']:.2%}" in _summary(printed, "calibration")


@pytest.mark.slow
def test_the_grid_covers_every_type_and_severity_and_falls_with_severity(planted, events):
    run_dir, printed, _ = planted
    table = pd.read_csv(run_dir / "reports" / "robustness.csv")
    corrupted = table[table["corruption"] != CLEAN]
    assert corrupted.groupby("corruption")["severity"].apply(sorted).map(lambda s: s == [1, 2, 3, 4, 5]).all()
    assert corrupted["corruption"].nunique() == 14 and len(table) == 71
    assert (table["samples"] == SPLITS["test"]).all()
    grid = corrupted.pivot(index="corruption", columns="severity", values="accuracy")
    clean = float(table.loc[table["corruption"] == CLEAN, "accuracy"].iloc[0])
    assert clean == pytest.approx(json.loads((run_dir / "reports" / "metrics.json").read_text())["test/acc"])
    for kind in NOISE_AND_BLUR:
        curve = grid.loc[kind].to_numpy()
        assert (np.diff(curve) <= 0).all(), f"{kind}: {curve}"  # never rises with severity
        assert curve[-1] < clean - 0.05, f"{kind}: {curve}"
    # Glass blur is not asserted: the reference's parameters do not grow together (at CIFAR-10-C's
    # severities the blur is 0.05, 0.25, 0.4, 0.25, 0.4 px and the shuffle passes 1, 1, 1, 2, 2).
    summary = json.loads((run_dir / "reports" / "robustness.json").read_text())
    assert summary["types"] == 14 and summary["mce"] is None and summary["seconds"] > 0
    assert summary["mean_corrupted_accuracy"] < clean
    assert len(events.Images("test/robustness_heatmap")) == 1
    assert "mean corrupted accuracy" in _summary(printed, "robustness")


@pytest.mark.slow
def test_eval_reproduces_the_grid_and_scores_against_a_baseline(planted, tmp_path):
    from eval import evaluate

    run_dir = planted[0]
    cfg = compose_config(
        [
            f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
            "trainer=cpu",
            "+trainer.enable_progress_bar=false",
            "callbacks=none",
            "data.num_workers=0",
            "splits=[test]",
            "robustness=cifar",
            "robustness.kinds=[gaussian_noise,defocus_blur]",
            "robustness.num_workers=2",  # other workers and batches than the training run: the same pixels
            "robustness.batch_size=50",
            f"robustness.baseline={run_dir}",
            f"paths.output_dir={tmp_path / 'eval'}",
        ],
        config_name="eval",
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluate(cfg)
    again = pd.read_csv(tmp_path / "eval" / "reports" / "robustness.csv")
    first = pd.read_csv(run_dir / "reports" / "robustness.csv")
    first = first[first["corruption"].isin([CLEAN, "gaussian_noise", "defocus_blur"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), first.drop(columns="seconds"))
    errors = pd.read_csv(tmp_path / "eval" / "reports" / "corruption_errors.csv").set_index("corruption")
    assert errors["ce"].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)  # the same model against itself
    summary = json.loads((tmp_path / "eval" / "reports" / "robustness.json").read_text())
    assert summary["mce"] == pytest.approx(1.0, abs=1e-5) and summary["baseline"] == str(run_dir)
    assert "mCE 1.000" in _summary(printed.getvalue(), "robustness")


@pytest.mark.slow
def test_the_grid_under_ddp_counts_every_image_once(planted, tmp_path):
    from tests.conftest import run_cli

    run_dir = planted[0]
    out = tmp_path / "ddp"
    run_cli(
        [
            "eval.py",
            f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
            "trainer=ddp_sim",
            "callbacks=review",
            "callbacks.activation_maps.every_n_epochs=0",
            "data.num_workers=0",
            "robustness=cifar",
            "robustness.kinds=[shot_noise,zoom_blur]",
            "robustness.num_workers=0",
            f"hydra.run.dir={out}",
        ]
    )
    scored = pd.read_csv(out / "reports" / "robustness.csv")
    first = pd.read_csv(run_dir / "reports" / "robustness.csv")
    first = first[first["corruption"].isin([CLEAN, "shot_noise", "zoom_blur"])].reset_index(drop=True)
    # Each process scored its half of the test images; the sums are the single-process grid's.
    pd.testing.assert_frame_equal(scored.drop(columns="seconds"), first.drop(columns="seconds"))
    calibration = json.loads((out / "reports" / "calibration.json").read_text())
    assert calibration["source"].startswith("saved in") and calibration["samples_evaluated"] == SPLITS["test"]
    slices = pd.read_csv(out / "reports" / "test" / "slices.csv", dtype={"slice": str})
    assert slices.groupby("column")["count"].sum().eq(SPLITS["test"]).all()
