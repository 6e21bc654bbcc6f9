"""DDP with 2 CPU processes: one run folder, and every sample counted exactly once."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.conftest import run_cli, tiny_overrides, write_digits

# 9 classes x 24 images: 45 validation and 171 training images, both odd, so the
# DistributedSampler pads each with a repeated sample.
VAL, TRAIN = 45, 171


@pytest.fixture(scope="module")
def odd_digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("odd_digits"), per_class=24, classes=9)


def _overrides(data_root, tmp_path):
    keep = [o for o in tiny_overrides(data_root, tmp_path) if not o.startswith(("paths.output_dir", "trainer="))]
    # 86 training samples per rank in batches of 17: a last batch of one, which must join the
    # batch before it rather than be dropped (every training sample is seen every epoch).
    return [*keep, "trainer=ddp_sim", f"paths.log_dir={tmp_path / 'logs'}", "data.batch_size=17"]


def _check_run(run_dir, epochs: int) -> None:
    with open(run_dir / "reports" / "val" / "confusion_matrix.csv") as f:
        matrix = np.array([[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]])
    assert matrix.sum() == VAL
    # Accuracy from torchmetrics over the ranks' batches = the de-duplicated confusion matrix's
    # (the evaluation sampler does not pad, so no sample counts twice).
    metrics = json.loads((run_dir / "reports" / "metrics.json").read_text())
    assert metrics["val/acc"] == pytest.approx(np.trace(matrix) / VAL, abs=1e-6)
    metadata = (run_dir / "tensorboard" / f"{epochs - 1:05d}" / "val_embeddings" / "metadata.tsv").read_text()
    indices = [int(line.split("\t")[7]) for line in metadata.splitlines()[1:]]
    assert sorted(indices) == list(range(VAL))  # every point once, none doubled by the padding
    with open(run_dir / "reports" / "label_scores.csv") as f:
        scores = list(csv.DictReader(f))
    assert sorted(int(r["index"]) for r in scores) == list(range(TRAIN))
    assert {r["epochs_seen"] for r in scores} == {str(epochs)}  # each training sample once per epoch
    summary = json.loads((run_dir / "reports" / "data_summary.json").read_text())
    assert summary["used"] == {"train": TRAIN, "val": VAL}
    # What prediction needs, fitted on the gathered outputs and written once, by rank zero.
    index = json.loads((run_dir / "familiarity" / "familiarity.json").read_text())
    assert index["count"] == TRAIN and index["threshold"] > 0
    assert json.loads((run_dir / "reports" / "thresholds.json").read_text())["val_samples"] == VAL


@pytest.mark.slow
def test_ddp_sim_writes_one_run_folder_and_counts_each_sample_once(odd_digits, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train.py", *_overrides(odd_digits, tmp_path), f"hydra.run.dir={run_dir}"])
    _check_run(run_dir, epochs=2)
    assert not (tmp_path / "logs").exists()  # no folder composed by a second rank
    assert result.stdout.count("run folder") == 1  # the summary is printed by rank zero only
    assert "train_ddp_process" not in " ".join(str(p) for p in tmp_path.rglob("*"))


@pytest.mark.slow
def test_ddp_sim_inside_a_multirun(odd_digits, tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(
        [
            "train.py",
            "-m",
            *_overrides(odd_digits, tmp_path),
            "model.lr=1e-3,3e-3",
            "trainer.max_epochs=1",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    for job in jobs:
        _check_run(sweep / job, epochs=1)
    assert not (tmp_path / "logs").exists()
