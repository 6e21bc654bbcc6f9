"""Metrics per slice of the data (a camera, an altitude band, the darkest images) and which slices
lag behind: the bias check.

A slice is every sample sharing one value of a metadata column (camera, time of day, ...) or
one quantile bin of a numeric column (altitude, and the image properties brightness,
contrast, sharpness, size, given as columns). For each slice: accuracy with a 95% Wilson
interval, macro-F1 and the count. A slice is **flagged** when its whole interval lies below
the overall accuracy: the gap is larger than chance alone explains at that slice's size
(one-sided, 2.5% per slice; with many slices expect a few chance flags among borderline ones).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from scipy.stats import binomtest
from torchmetrics.functional.classification import multiclass_f1_score

from evaluation.figures import new_figure

# Columns of SliceReport.table, in order:
SLICE_COLUMNS = (
    "column",  # the metadata or property column the slice comes from
    "slice",  # its value, or its bin "[low, high)" for numeric columns
    "kind",  # categorical | numeric (binned)
    "count",  # samples in the slice
    "share",  # count / all samples
    "correct",  # correctly classified samples
    "accuracy",  # correct / count
    "ci_low",  # 95% Wilson interval of the accuracy
    "ci_high",
    "macro_f1",  # over the classes that occur in the slice (as label or prediction)
    "gap",  # accuracy - overall accuracy
    "flagged",  # ci_high < overall accuracy
)
RESERVED = ("target", "prediction", "index", "path", "split", "label")
MISSING = "(missing)"
MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "null", "none", "<na>", "#n/a"})  # read as missing, as pandas does


def wilson_interval(correct: int, count: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``correct / count`` (scipy's ``binomtest``); NaNs for an empty slice."""
    if count == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(correct), int(count)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _format_edges(edges: np.ndarray) -> list[str]:
    # Enough decimals to tell neighbouring edges apart, and two significant digits of the smallest gap.
    gaps = np.diff(edges)
    smallest = gaps[gaps > 0].min() if (gaps > 0).any() else 1.0
    decimals = int(max(0, np.ceil(-np.log10(smallest)) + 1))
    return [f"{e:.{decimals}f}" for e in edges]


def column_groups(
    values: pd.Series, *, bins: int = 4, max_categories: int = 20
) -> tuple[pd.Series | None, str, str | None]:
    """Which slice each sample of one column falls in.

    Numbers (also numbers stored as text, as manifest metadata is) with more than ``bins``
    distinct values are cut at their quantiles into ``bins`` bins, labelled ``[low, high)``;
    other columns keep their values, the ``max_categories - 1`` most frequent of them, the
    rest grouped as ``(other: N values)``. Missing values form their own slice.

    Returns:
        ``(labels, kind, None)`` with one label per sample; or ``(None, kind, reason)`` for a
        column that gives no useful slices (constant, or a different value on every sample).
    """
    present = values.dropna()
    # Manifest cells are text: "", "NaN", "N/A", "null" ... mean missing, not a category that
    # would turn a numeric column into text; infinities are no position on a scale either.
    text_values = present.astype(str).str.strip()
    present = present[~text_values.str.lower().isin(MISSING_TEXT)]
    if present.empty:
        return None, "categorical", "no values"
    numbers = pd.to_numeric(present, errors="coerce")
    infinite = np.isinf(numbers.to_numpy(dtype=float))
    if infinite.any() and numbers[~infinite].notna().all():
        present, numbers = present[~infinite], numbers[~infinite]
        if present.empty:
            return None, "numeric", "no finite values"
    numeric = bool(numbers.notna().all()) and not pd.api.types.is_bool_dtype(present)
    distinct = present.astype(str).nunique()
    if distinct < 2:
        return None, "categorical", "one value only"
    labels = pd.Series(MISSING, index=values.index, dtype=object)
    if numeric and numbers.nunique() > bins:
        edges = np.unique(np.quantile(numbers.to_numpy(dtype=float), np.linspace(0, 1, bins + 1)))
        if len(edges) < 2:
            return None, "numeric", "one value only"
        text = _format_edges(edges)
        names = [f"[{text[i]}, {text[i + 1]})" for i in range(len(edges) - 2)] + [f"[{text[-2]}, {text[-1]}]"]
        which = np.clip(np.searchsorted(edges[1:-1], numbers.to_numpy(dtype=float), side="right"), 0, len(names) - 1)
        labels.loc[present.index] = [names[i] for i in which]
        return labels, "numeric", None
    if numeric:  # a handful of numbers (altitude 50/100/150): each its own slice
        labels.loc[present.index] = [f"{v:g}" for v in numbers]
        return labels, "numeric", None
    text = present.astype(str)
    if distinct == len(text) and distinct > max_categories:
        return None, "categorical", f"a different value on every sample ({distinct}): an identifier, not a group"
    counts = text.value_counts()
    if len(counts) > max_categories:
        keep = set(counts.index[: max_categories - 1])
        other = f"(other: {len(counts) - len(keep)} values)"
        text = text.where(text.isin(keep), other)
    labels.loc[present.index] = text
    return labels, "categorical", None


@dataclass(frozen=True)
class SliceReport:
    """Per-slice metrics of one split.

    Attributes:
        table: one row per slice with ``SLICE_COLUMNS``, lowest accuracy first.
        overall_accuracy: accuracy over all samples.
        overall_macro_f1: macro-F1 over all samples.
        samples: number of samples.
        skipped: columns that gave no slices, with the reason.
    """

    table: pd.DataFrame
    overall_accuracy: float
    overall_macro_f1: float
    samples: int
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def flagged(self) -> pd.DataFrame:
        """The flagged slices, worst first."""
        return self.table[self.table["flagged"]]

    def worst_flagged(self) -> pd.Series | None:
        """The flagged slice with the lowest accuracy, or ``None``."""
        flagged = self.flagged
        return flagged.iloc[0] if len(flagged) else None


def _macro_f1(predictions: np.ndarray, targets: np.ndarray, num_classes: int) -> float:
    return float(
        multiclass_f1_score(torch.tensor(predictions), torch.tensor(targets), num_classes=num_classes, average="macro")
    )


def slice_metrics(
    frame: pd.DataFrame,
    *,
    target: str = "target",
    prediction: str = "prediction",
    columns: Sequence[str] | None = None,
    num_classes: int | None = None,
    bins: int = 4,
    max_categories: int = 20,
    confidence: float = 0.95,
) -> SliceReport:
    """Accuracy, Wilson interval, macro-F1 and count for every slice of every column.

    Args:
        frame: one row per sample: integer class ids in ``target`` and ``prediction``, plus
            metadata and image-property columns.
        target: column of the true class ids.
        prediction: column of the predicted class ids.
        columns: the columns to slice by; every column except ``target``, ``prediction`` and
            ``index``/``path``/``split``/``label`` when ``None``.
        num_classes: number of classes (for macro-F1); the largest id + 1 when ``None``.
        bins: quantile bins for numeric columns (4: quartiles).
        max_categories: most slices a text column gives; rarer values are grouped.
        confidence: level of the Wilson interval.
    """
    for name in (target, prediction):
        if name not in frame.columns:
            raise ValueError(f"slice_metrics: no column {name!r} in the table; columns are {list(frame.columns)}")
    if frame.empty:
        raise ValueError("slice_metrics: the table has no samples")
    frame = frame.reset_index(drop=True)
    targets = frame[target].to_numpy(dtype=np.int64)
    predictions = frame[prediction].to_numpy(dtype=np.int64)
    num_classes = num_classes or int(max(targets.max(), predictions.max())) + 1
    correct = predictions == targets
    overall = float(correct.mean())
    if columns is None:
        columns = [c for c in frame.columns if c not in (target, prediction, *RESERVED)]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"slice_metrics: no column(s) {missing} in the table; columns are {list(frame.columns)}")

    rows, skipped = [], {}
    for column in columns:
        labels, kind, reason = column_groups(frame[column], bins=bins, max_categories=max_categories)
        if labels is None:
            skipped[column] = reason
            continue
        for value, members in labels.groupby(labels, sort=False).groups.items():
            mask = frame.index.isin(members)
            count, hits = int(mask.sum()), int(correct[mask].sum())
            low, high = wilson_interval(hits, count, confidence)
            rows.append(
                {
                    "column": column,
                    "slice": value,
                    "kind": kind,
                    "count": count,
                    "share": count / len(frame),
                    "correct": hits,
                    "accuracy": hits / count,
                    "ci_low": low,
                    "ci_high": high,
                    "macro_f1": _macro_f1(predictions[mask], targets[mask], num_classes),
                    "gap": hits / count - overall,
                    "flagged": bool(high < overall),
                }
            )
    table = pd.DataFrame(rows, columns=list(SLICE_COLUMNS))
    table = table.sort_values(["accuracy", "count"], ascending=[True, False], kind="stable").reset_index(drop=True)
    return SliceReport(
        table=table,
        overall_accuracy=overall,
        overall_macro_f1=_macro_f1(predictions, targets, num_classes),
        samples=len(frame),
        skipped=skipped,
    )


def _name(row: pd.Series) -> str:
    return f"{row['column']} = {row['slice']}"


def slices_markdown(report: SliceReport, max_rows: int = 20) -> str:
    """A markdown summary and table of the worst ``max_rows`` slices, for TensorBoard's text tab."""
    flagged = len(report.flagged)
    lines = [
        f"Overall accuracy {report.overall_accuracy:.1%} on {report.samples} samples; "
        f"{flagged} of {len(report.table)} slices flagged (95% interval entirely below the overall accuracy).",
        "",
        "| slice | n | accuracy | 95% interval | macro-F1 | flagged |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in report.table.head(max_rows).iterrows():
        name = _name(row).replace("|", "\\|")
        lines.append(
            f"| {name} | {row['count']} | {row['accuracy']:.1%} | {row['ci_low']:.1%} - {row['ci_high']:.1%} "
            f"| {row['macro_f1']:.3f} | {'**below**' if row['flagged'] else ''} |"
        )
    if report.skipped:
        lines += ["", "Not sliced: " + "; ".join(f"`{c}` ({why})" for c, why in report.skipped.items())]
    return "\n".join(lines)


def slices_figure(report: SliceReport, max_bars: int = 20, title: str | None = None) -> Figure:
    """Horizontal bars of the worst ``max_bars`` slices (worst on top) with their Wilson intervals,
    flagged slices in red, and the overall accuracy as a dashed line."""
    rows = report.table.head(max_bars)
    fig = new_figure(figsize=(8, 0.32 * max(len(rows), 1) + 1.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    accuracy = rows["accuracy"].to_numpy(dtype=float) * 100
    spread = np.vstack([accuracy - rows["ci_low"].to_numpy() * 100, rows["ci_high"].to_numpy() * 100 - accuracy])
    colours = ["#c81e1e" if f else "#4c78a8" for f in rows["flagged"]]
    ax.barh(y, accuracy, xerr=spread, color=colours, ecolor="#333333", capsize=3, height=0.7)
    ax.set_yticks(y, [f"{_name(r)} (n={r['count']})" for _, r in rows.iterrows()])
    ax.invert_yaxis()  # worst on top
    ax.axvline(
        report.overall_accuracy * 100, color="black", linestyle="--", linewidth=1.2,
        label=f"overall {report.overall_accuracy:.1%}",
    )  # fmt: skip
    # Zoomed to the intervals (in steps of 5 points): slices of a good model all lie in the 90s,
    # where a 0-100 axis hides every difference; the tick labels say where the axis starts.
    lowest = min(float(rows["ci_low"].min()) * 100, report.overall_accuracy * 100) if len(rows) else 0.0
    ax.set_xlim(max(0.0, 5 * np.floor((lowest - 2) / 5)), 100)
    ax.set_xlabel(f"accuracy (%), with 95% Wilson interval; dashed line: overall {report.overall_accuracy:.1%}")
    heading = title or f"Accuracy per slice: worst {len(rows)} of {len(report.table)}; red = interval below overall"
    ax.set_title("\n".join(textwrap.wrap(heading, 80)), fontsize=10)
    return fig
