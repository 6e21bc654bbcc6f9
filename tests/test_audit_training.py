"""The data audit at the start of training: report files, TensorBoard panels, leaked images set aside with
both accuracies reported, conflicting labels first among the label suspects, ``audit.fail_on``, and
DDP ranks other than zero never auditing."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil

import pandas as pd
import pytest

from datamodules import Catalogue
from runs.audit_step import AuditError
from tests.conftest import compose_config, tiny_overrides, write_digits


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    """Digits in train/val/test folders, with known leaks and one conflicting copy.

    Returns (data root, leaked copies, the two paths of the conflict).
    """
    root = tmp_path_factory.mktemp("leaky")
    flat = write_digits(root / "flat", per_class=30, classes=4)
    for folder in sorted(flat.iterdir()):
        for i, image in enumerate(sorted(folder.iterdir())):
            split = "train" if i < 22 else "val" if i < 27 else "test"
            (root / split / folder.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / split / folder.name / image.name)
    shutil.rmtree(flat)
    leaks = set()
    for folder in sorted((root / "train").iterdir()):
        images = sorted(folder.iterdir())
        for image, split in ((images[0], "val"), (images[1], "val"), (images[2], "test")):
            copy = root / split / folder.name / f"leak_{image.name}"
            shutil.copy(image, copy)
            leaks.add(str(copy))
    source = sorted((root / "train" / "digit_0").iterdir())[5]
    conflict = root / "train" / "digit_1" / f"conflict_{source.name}"
    shutil.copy(source, conflict)
    return root, leaks, {str(source), str(conflict)}


@pytest.fixture(scope="module")
def leaky_run(leaky, tmp_path_factory):
    """A tiny training run on the leaky data with audit.drop_leaked=true; returns (run folder, metrics, stdout)."""
    from train import train

    run_dir = tmp_path_factory.mktemp("leaky_run") / "run"
    cfg = compose_config([*tiny_overrides(leaky[0], run_dir), "audit.drop_leaked=true", "audit.progress=false"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        metrics = train(cfg)
    return run_dir, metrics, out.getvalue()


@pytest.mark.slow
def test_leaked_images_are_set_aside_and_both_accuracies_reported(leaky, leaky_run):
    _, leaks, _ = leaky
    run_dir, metrics, stdout = leaky_run
    leakage = pd.read_csv(run_dir / "reports" / "audit" / "leakage.csv", dtype=str)
    assert leaks <= set(leakage["path"])
    catalogue = Catalogue.load(run_dir / "catalogue.json")
    aside = {s.path for split in ("leaked_val", "leaked_test") for s in catalogue.splits[split]}
    assert aside == set(leakage["path"])
    assert not aside & {s.path for split in ("train", "val", "test") for s in catalogue.splits[split]}
    n_val, n_leaked = len(catalogue.splits["val"]), len(catalogue.splits["leaked_val"])
    assert n_leaked == 8 and n_val == 20
    # The accuracy with the leaked images is the sample-weighted mix of the honest split and the leaked one.
    for split in ("val", "test"):
        without, leaked = metrics[f"{split}/acc_without_leaked"], metrics[f"leaked_{split}/acc"]
        n, k = len(catalogue.splits[split]), len(catalogue.splits[f"leaked_{split}"])
        assert metrics[f"{split}/acc_with_leaked"] == pytest.approx((without * n + leaked * k) / (n + k))
    # Measured with the best checkpoint's weights: the honest test accuracy is the run's test/acc.
    assert metrics["test/acc_without_leaked"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    saved = json.loads((run_dir / "reports" / "metrics.json").read_text())
    assert saved["val/acc_with_leaked"] == metrics["val/acc_with_leaked"]
    assert "leaked_val 8" in stdout and "val/acc" in stdout and "without the 8 leaked images" in stdout
    assert "duplicate groups" in stdout and "reports/audit/audit.md" in stdout
    samples = pd.read_csv(run_dir / "reports" / "samples.csv", dtype=str)
    assert samples.loc[samples["split"] == "leaked_val", "index"].astype(int).tolist() == list(range(n_leaked))


@pytest.mark.slow
def test_the_audit_panels_are_logged_at_fit_start(leaky_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, _ = leaky_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    for tag in ("audit/look_at_your_data", "audit/duplicate_groups", "audit/leakage", "audit/class_balance"):
        assert [e.step for e in events.Images(tag)] == [0], tag
    look = events.Images("audit/look_at_your_data")[0]
    assert look.height > 4 * 96  # one row per class (4 classes)
    summary = events.Tensors("audit/summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "groups with conflicting labels | 1 (2 images)" in summary


@pytest.mark.slow
def test_conflicting_labels_come_first_among_the_label_suspects(leaky, leaky_run):
    _, _, conflict = leaky
    run_dir, _, _ = leaky_run
    with open(run_dir / "reports" / "label_suspects.csv") as f:
        rows = list(csv.DictReader(f))
    first = rows[: len(conflict)]
    assert {r["path"] for r in first} == conflict
    assert {r["method"] for r in first} == {"conflicting_labels"} and {r["score"] for r in first} == {"1.0"}
    assert len({r["suggested_label"] for r in first}) == 1  # one label per group: relabelling makes them agree
    assert all(r["method"] != "conflicting_labels" for r in rows[len(conflict) :])
    catalogue = Catalogue.load(run_dir / "catalogue.json")
    for r in first:
        assert catalogue.splits[r["split"]][int(r["index"])].path == r["path"]


def test_fail_on_stops_training_before_it_starts(leaky, tmp_path):
    from train import train

    root, leaks, _ = leaky
    run_dir = tmp_path / "run"
    cfg = compose_config([*tiny_overrides(root, run_dir), "audit.fail_on=[leakage]", "audit.progress=false"])
    with pytest.raises(AuditError, match="leakage: 12 file") as raised:
        train(cfg)
    assert sorted(leaks)[0] in str(raised.value)
    assert f"data.exclude={run_dir / 'reports' / 'audit'}/<file>.csv" in str(raised.value)
    assert (run_dir / "reports" / "audit" / "leakage.csv").is_file()
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "catalogue.json").exists()


def test_only_global_rank_zero_audits(leaky, tmp_path):
    """Other ranks load the catalogue rank zero saved after its audit; they never call the audit step."""
    from runs import build
    from runs.folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    calls = []
    options = {"source": "folder", "root": str(leaky[0]), "scan": "off"}
    build.catalogue(options, folder, child=False, before_save=calls.append)
    assert len(calls) == 1

    def fail(_):
        raise AssertionError("a rank other than zero ran the audit")

    loaded = build.catalogue(options, folder, child=True, before_save=fail)
    assert loaded.used() == calls[0].used()


def test_the_default_run_audits_and_sets_nothing_aside(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, metrics, _ = trained
    summary = json.loads((run_dir / "reports" / "audit" / "audit.json").read_text())
    assert summary["mode"] == "cheap" and summary["counts"]["audited"] == 300
    assert not any(k.startswith("leaked_") for k in json.loads((run_dir / "catalogue.json").read_text())["splits"])
    assert not any("leaked" in k for k in metrics)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "audit/look_at_your_data" in events.Tags()["images"]


def test_the_leakage_pass_runs_in_the_models_precision(leaky, tmp_path):
    # The with/without-leaked pass runs the model outside Lightning's loops: a bf16-true model
    # takes its batches cast as those loops cast them.
    from train import train

    cfg = compose_config(
        [
            *tiny_overrides(leaky[0], tmp_path / "run"),
            "audit.drop_leaked=true",
            "audit.progress=false",
            "trainer.precision=bf16-true",
            "trainer.max_epochs=1",
        ]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = train(cfg)
    assert 0 <= metrics["val/acc_with_leaked"] <= 1 and 0 <= metrics["leaked_val/acc"] <= 1
