"""The throughput benchmark runs end to end on a CPU, tiny: lookout's own training job with every panel,
the bare loop and the loader figures."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import gpu_throughput


@pytest.mark.slow
def test_throughput_benchmark_runs_tiny_on_a_cpu(tmp_path):
    out = tmp_path / "throughput.json"
    argv = ["--device", "cpu", "--model", "test_efficientnet", "--images", "120", "--classes", "3"]
    argv += ["--source-size", "96", "72", "--image-size", "32", "--batch-size", "8", "--steps", "4", "--warmup", "1"]
    argv += ["--workers", "0", "--repeats", "1", "--drone-workers", "0,1", "--out", str(out)]
    argv += ["--work-dir", str(tmp_path / "work"), "+trainer.enable_progress_bar=false"]
    gpu_throughput.main(argv)
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["settings"]["channels_last"] is False
    (bare,), (lookout,) = result["runs"]["bare"], result["runs"]["lookout"]
    assert bare["images"] == lookout["images"] == 3 * 8  # steps 1..3 of batch 8, timed alike
    assert result["ratio_lookout_to_bare"] == pytest.approx(lookout["img_per_s"] / bare["img_per_s"])
    assert math.isfinite(result["ratio_lookout_to_bare"]) and result["loader_alone_img_per_s"] > 0
    assert [d["workers"] for d in result["drone_loader"]] == [0, 1]
    assert all(d["img_per_s_per_worker"] > 0 for d in result["drone_loader"])
    # The lookout side is train.py's job with its panels on: it wrote its reports.
    run = tmp_path / "work" / "run0"
    assert (run / "reports" / "val" / "confusion_matrix.csv").is_file()
    assert (run / "reports" / "label_scores.csv").is_file()
    assert "augment=drone" not in " ".join(result["settings"]["lookout_overrides"])
