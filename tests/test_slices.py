"""Per-slice metrics, the bias flag and the shortcut check on a synthetic evaluation table where
one camera's images are darker, fewer and wrong more often, and one metadata column is planted
to predict the label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from evaluation.shortcuts import SHORTCUT_COLUMNS, shortcut_check
from evaluation.slices import (
    SLICE_COLUMNS,
    column_groups,
    slice_metrics,
    slices_figure,
    slices_markdown,
    wilson_interval,
)

CLASSES = ["car", "person", "tree", "truck"]


def evaluation_table(seed: int = 0) -> pd.DataFrame:
    """1,200 predictions: cameras A and B (500 each, 90% right) and C (200, darker, 55% right)."""
    rng = np.random.default_rng(seed)
    camera = np.array(["A"] * 500 + ["B"] * 500 + ["C"] * 200)
    n = len(camera)
    target = rng.integers(0, len(CLASSES), n)
    right = rng.random(n) < np.where(camera == "C", 0.55, 0.9)
    wrong = (target + rng.integers(1, len(CLASSES), n)) % len(CLASSES)
    # The planted column: the site gives the class away 85% of the time.
    site = np.where(rng.random(n) < 0.85, target, rng.integers(0, len(CLASSES), n))
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "path": [f"img_{i:05d}.jpg" for i in range(n)],
            "target": target,
            "prediction": np.where(right, target, wrong),
            "camera": camera,
            "altitude": rng.uniform(30, 120, n).round(1).astype(str),  # numbers stored as text, as in a manifest
            "time_of_day": rng.choice(["dawn", "day", "dusk"], n),
            "site": [f"S{s}" for s in site],
            "flight_id": [f"F{i}" for i in range(n)],  # an identifier: no slices
            "operator": rng.choice([f"op{i:02d}" for i in range(40)], n),  # many values: grouped
            "brightness": np.where(camera == "C", rng.normal(60, 10, n), rng.normal(130, 25, n)),
            "sharpness": rng.gamma(2.0, 50.0, n),
        }
    )


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return evaluation_table()


def test_the_worst_flagged_slice_is_the_dark_camera(table):
    report = slice_metrics(table, num_classes=len(CLASSES))
    assert list(report.table.columns) == list(SLICE_COLUMNS)
    worst = report.worst_flagged()
    assert (worst["column"], worst["slice"]) == ("camera", "C")
    assert worst["count"] == 200 and worst["ci_high"] < report.overall_accuracy
    assert worst["ci_low"] < worst["accuracy"] < worst["ci_high"]
    flagged = set(zip(report.flagged["column"], report.flagged["slice"], strict=True))
    assert ("camera", "A") not in flagged and ("camera", "B") not in flagged
    assert any(column == "brightness" for column, _ in flagged)  # the darkest bin holds camera C
    # Sorted worst first; counts add up within each column.
    assert report.table["accuracy"].is_monotonic_increasing
    assert report.table.groupby("column")["count"].sum().eq(len(table)).all()
    assert report.overall_accuracy == pytest.approx((table["target"] == table["prediction"]).mean())


def test_columns_become_readable_slices(table):
    report = slice_metrics(table, num_classes=len(CLASSES))
    by_column = report.table.groupby("column")["slice"].apply(set)
    assert report.skipped == {"flight_id": "a different value on every sample (1200): an identifier, not a group"}
    assert "index" not in by_column and "path" not in by_column and "target" not in by_column
    assert by_column["time_of_day"] == {"dawn", "day", "dusk"}
    assert len(by_column["altitude"]) == 4 and all(s.startswith("[") for s in by_column["altitude"])
    assert any(s.startswith("(other: ") for s in by_column["operator"]) and len(by_column["operator"]) == 20
    labels, kind, _ = column_groups(pd.Series(["1.5", "2", None, "", "3.25", "4", "10", "12"]), bins=2)
    assert kind == "numeric"
    assert (
        labels.tolist() == ["[1.5, 3.6)", "[1.5, 3.6)", "(missing)", "(missing)"] + ["[1.5, 3.6)"] + ["[3.6, 12.0]"] * 3
    )
    few, kind, _ = column_groups(pd.Series([50, 100, 100, 150]), bins=4)
    assert kind == "numeric" and few.tolist() == ["50", "100", "100", "150"]
    assert column_groups(pd.Series(["x"] * 5))[2] == "one value only"


def test_wilson_interval_matches_the_formula():
    low, high = wilson_interval(7, 10)
    z = 1.959963984540054
    centre = (0.7 + z**2 / 20) / (1 + z**2 / 10)
    half = z / (1 + z**2 / 10) * np.sqrt(0.7 * 0.3 / 10 + z**2 / 400)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)


def test_markdown_and_bar_chart_show_the_worst_first(table, tmp_path):
    report = slice_metrics(table, num_classes=len(CLASSES))
    text = slices_markdown(report, max_rows=10)
    lines = text.splitlines()
    assert lines[0].startswith(f"Overall accuracy {report.overall_accuracy:.1%} on 1200 samples")
    assert lines[4].startswith("| camera = C | 200 |") and lines[4].endswith("| **below** |")
    assert "`flight_id`" in text
    fig = slices_figure(report, max_bars=12)
    ax = fig.axes[0]
    assert len(ax.patches) == 12
    assert ax.get_yticklabels()[0].get_text() == "camera = C (n=200)"
    red = tuple(np.round(ax.patches[0].get_facecolor()[:3], 2))
    assert red == (0.78, 0.12, 0.12)  # flagged bars are red
    overall = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert overall and overall[0].get_xdata()[0] == pytest.approx(report.overall_accuracy * 100)
    fig.savefig(tmp_path / "slices.png")
    assert Image.open(tmp_path / "slices.png").size[1] > 300


def test_missing_value_text_and_infinities_do_not_turn_a_numeric_column_into_text():
    # A manifest column read as text: 100 altitudes, one "NaN", one "N/A", one "inf".
    altitude = pd.Series([str(v) for v in range(100)] + ["NaN", "N/A", "inf"])
    labels, kind, reason = column_groups(altitude, bins=4)
    assert (kind, reason) == ("numeric", None)
    counts = labels.value_counts()
    assert counts["(missing)"] == 3 and counts.drop("(missing)").tolist() == [25, 25, 25, 25]
    assert not any("nan" in str(label) for label in counts.index)


def test_shortcut_check_skips_a_class_with_one_training_sample():
    frame = pd.DataFrame({"camera": ["a", "b"] * 10 + ["a"], "target": [0] * 20 + [1]})
    report = shortcut_check(frame, columns=["camera"], class_names=["car", "person"])
    assert report.warned == [] and report.table.empty
    assert "single training sample" in report.skipped["camera"]


def test_shortcut_check_warns_on_the_planted_column_only(table):
    metadata = ["camera", "altitude", "time_of_day", "site", "flight_id", "operator"]
    report = shortcut_check(table, columns=metadata, class_names=CLASSES)
    assert list(report.table.columns) == list(SHORTCUT_COLUMNS)
    assert report.warned == ["site"]
    site = report.table.set_index("column").loc["site"]
    assert site["accuracy"] > 0.8 and site["majority_rate"] < 0.3 and site["lift"] > 0.7
    assert site["strongest"].startswith("S")
    others = report.table.set_index("column").drop(index="site")
    assert (others["lift"] < 0.1).all()
    assert "flight_id" in report.skipped
    assert len(report.messages) == 1 and "'site' predicts the label" in report.messages[0]


def test_shortcut_check_does_not_warn_on_small_noisy_data():
    rng = np.random.default_rng(3)
    small = pd.DataFrame({"target": rng.integers(0, 3, 40), "camera": rng.choice(["A", "B", "C", "D", "E"], 40)})
    assert shortcut_check(small).warned == []
    one_class = shortcut_check(pd.DataFrame({"target": [1] * 10, "camera": ["A", "B"] * 5}))
    assert one_class.warned == [] and one_class.skipped == {"camera": "one class only"}
