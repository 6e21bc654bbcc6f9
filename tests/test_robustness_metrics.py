"""Corruption errors against a baseline (Hendrycks' CE, mCE, relative mCE), the robustness table
read back from CSV, and the heatmap."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from evaluation.figures import figure_to_array
from evaluation.robustness import (
    CLEAN,
    TABLE_COLUMNS,
    GridResult,
    corruption_errors,
    heatmap_figure,
    read_robustness_table,
    robustness_summary,
    robustness_table,
)


def grid(clean: float, accuracies: dict[str, list[float]]) -> list[GridResult]:
    cells = [GridResult(CLEAN, 0, 100, clean, clean - 0.01, 1.0)]
    for kind, values in accuracies.items():
        cells += [GridResult(kind, s, 100, a, a - 0.02, 2.0) for s, a in enumerate(values, start=1)]
    return cells


RUN = grid(0.9, {"gaussian_noise": [0.8, 0.7, 0.6, 0.5, 0.4], "defocus_blur": [0.85] * 5})
BASELINE = grid(0.8, {"gaussian_noise": [0.6, 0.5, 0.4, 0.3, 0.2], "defocus_blur": [0.7] * 5})


def test_table_is_tidy_ordered_and_survives_a_csv_round_trip(tmp_path):
    table = robustness_table(reversed(RUN))  # any input order
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert table["corruption"].tolist()[:2] == [CLEAN, "gaussian_noise"]  # clean first, then the reference's order
    assert table.loc[table["corruption"] == "defocus_blur", "family"].unique().tolist() == ["blur"]
    np.testing.assert_allclose(table["error"], 1 - table["accuracy"])
    path = tmp_path / "robustness.csv"
    table.to_csv(path, index=False)
    back = read_robustness_table(path)
    assert back[["corruption", "severity"]].values.tolist() == table[["corruption", "severity"]].values.tolist()
    np.testing.assert_allclose(back["accuracy"], table["accuracy"])
    with pytest.raises(ValueError, match="scored once"):
        robustness_table([*RUN, RUN[1]])
    # A baseline file with a row twice would count its errors twice: refused, naming the row.
    pd.concat([table, table.iloc[[3]]]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="appear once"):
        read_robustness_table(path)


def test_ce_mce_and_relative_mce_follow_hendrycks_definitions(tmp_path):
    table, baseline = robustness_table(RUN), robustness_table(BASELINE)
    errors = corruption_errors(table, baseline).set_index("corruption")
    # Gaussian: run errors 0.2..0.6 (sum 2.0) against 0.4..0.8 (sum 3.0).
    assert errors.loc["gaussian_noise", "ce"] == pytest.approx(2.0 / 3.0)
    # Relative: (2.0 - 5 x 0.1) / (3.0 - 5 x 0.2).
    assert errors.loc["gaussian_noise", "relative_ce"] == pytest.approx(1.5 / 2.0)
    assert errors.loc["defocus_blur", "ce"] == pytest.approx(0.75 / 1.5)
    assert errors.loc["defocus_blur", "relative_ce"] == pytest.approx(0.25 / 0.5)
    assert errors.loc["gaussian_noise", "mean_accuracy"] == pytest.approx(0.6)

    summary = robustness_summary(table, baseline)
    assert summary["mce"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert summary["relative_mce"] == pytest.approx((0.75 + 0.5) / 2)
    assert summary["clean_accuracy"] == pytest.approx(0.9)
    assert summary["mean_accuracy_by_family"] == pytest.approx({"noise": 0.6, "blur": 0.85})
    json.dumps(summary)  # JSON-ready
    # Against itself every CE is 1.
    assert robustness_summary(table, table)["mce"] == pytest.approx(1.0)
    assert robustness_summary(table)["mce"] is None


def test_types_the_baseline_cannot_score_are_left_out_of_the_means():
    table = robustness_table(RUN)
    partial = robustness_table(grid(0.8, {"gaussian_noise": [0.6, 0.5, 0.4, 0.3, 0.2]}))
    summary = robustness_summary(table, partial)
    assert summary["types_without_ce"] == ["defocus_blur"]
    assert summary["mce"] == pytest.approx(2 / 3)
    # A baseline that makes no error under a type (or loses nothing to it) gives that type no CE.
    perfect = robustness_table(grid(1.0, {"gaussian_noise": [1.0] * 5, "defocus_blur": [0.7] * 5}))
    errors = corruption_errors(table, perfect).set_index("corruption")
    assert np.isnan(errors.loc["gaussian_noise", "ce"]) and np.isnan(errors.loc["gaussian_noise", "relative_ce"])
    assert errors.loc["defocus_blur", "ce"] == pytest.approx(0.5)


def test_heatmap_is_annotated_on_a_fixed_0_to_100_scale(tmp_path):
    table = robustness_table(RUN)
    fig = heatmap_figure(table)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "80.0" in texts and "40.0" in texts and "60.0" in texts  # gaussian sev 1, sev 5 and its mean
    assert len(texts) == 2 * 6  # two types x (5 severities + mean)
    assert ax.images[0].get_clim() == (0, 100)
    assert "clean 90.0" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["gaussian noise", "defocus blur"]
    path = tmp_path / "heatmap.png"
    fig.savefig(path)
    assert Image.open(path).size[0] > 400
    pixels = figure_to_array(fig)  # for TensorBoard's add_image
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3 and pixels.shape[1] > 400
    f1 = heatmap_figure(table, metric="macro_f1")
    assert "78.0" in [t.get_text() for t in f1.axes[0].texts]
    with pytest.raises(ValueError, match="metric"):
        heatmap_figure(table, metric="loss")


def test_benchmark_compares_two_runs_type_by_type(tmp_path):
    from benchmarks.robustness_compare import compare, load

    run_dir = tmp_path / "run_basic" / "reports"
    run_dir.mkdir(parents=True)
    robustness_table(BASELINE).to_csv(run_dir / "robustness.csv", index=False)
    robustness_table(RUN).to_csv(tmp_path / "drone.csv", index=False)
    markdown, figures = compare(
        load(str(tmp_path / "run_basic")), load(str(tmp_path / "drone.csv")), ("basic", "drone")
    )
    lines = markdown.splitlines()
    assert lines[0].startswith("| corruption | family | basic accuracy | drone accuracy |")
    assert lines[2] == "| gaussian noise | noise | 40.0% | 60.0% | +20.0 | 0.667 | 0.750 |"
    assert "drone against basic: mCE 0.583, relative mCE 0.625" in markdown
    assert "more accurate on 2 of 2 corruption types" in markdown
    assert figures["types_better"] == 2
    json.dumps(figures, default=float)
