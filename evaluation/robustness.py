"""Scores of the robustness grid: the tidy table, corruption errors (CE, mCE, relative mCE) and a heatmap.

Definitions (Hendrycks & Dietterich, ICLR 2019, section 3): with ``E[s, c]`` the error
(1 - accuracy) under corruption ``c`` at severity ``s`` and ``E_clean`` the clean error,

- ``CE_c = sum_s E[s, c] / sum_s E_baseline[s, c]``; ``mCE`` is its mean over the types;
- ``relative CE_c = sum_s (E[s, c] - E_clean) / sum_s (E_baseline[s, c] - E_baseline_clean)``,
  how much accuracy the corruption costs relative to what it costs the baseline; its mean is
  the relative mCE.

Both are fractions here (the paper prints percentages); below 1 means more robust than the
baseline run. A type the baseline lacks, or on which the baseline makes less than one image's worth of
errors (or, for the relative CE, loses less than that to the corruption), has no CE, and the
means are taken over the others. The relative CE is noisy when the baseline loses little
accuracy to a type: read it together with the plain CE.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from evaluation.figures import new_figure

TABLE_COLUMNS = ("corruption", "family", "severity", "samples", "accuracy", "macro_f1", "error", "seconds")
CLEAN = "clean"  # the corruption name of the uncorrupted row (severity 0)


@dataclass(frozen=True)
class GridResult:
    """One cell of the grid: a model's scores on the split under one corruption type and severity.

    Attributes:
        corruption: the type (``gaussian_noise``, ...), or ``clean`` with severity 0.
        severity: 1-5; 0 for clean.
        samples: images scored.
        accuracy: fraction correct, in [0, 1].
        macro_f1: macro-averaged F1, in [0, 1].
        seconds: wall time of the cell (corrupting, loading and the forward passes).
    """

    corruption: str
    severity: int
    samples: int
    accuracy: float
    macro_f1: float
    seconds: float = float("nan")


def robustness_table(results: Iterable[GridResult]) -> pd.DataFrame:
    """The tidy table for ``reports/robustness.csv``: one row per (corruption, severity), clean first.

    Columns: ``corruption``, ``family`` (noise, blur, weather, digital; clean), ``severity``
    (0 for clean), ``samples``, ``accuracy``, ``macro_f1``, ``error`` (1 - accuracy), ``seconds``.
    """
    from datamodules.corruptions import family
    from datamodules.imagenet_c import CORRUPTIONS

    rows = []
    for result in results:
        row = asdict(result)
        row["family"] = CLEAN if result.corruption == CLEAN else family(result.corruption)
        row["error"] = 1.0 - result.accuracy
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    if table.duplicated(["corruption", "severity"]).any():
        twice = table.loc[table.duplicated(["corruption", "severity"], keep=False), ["corruption", "severity"]]
        raise ValueError(f"each (corruption, severity) must be scored once; repeated: {twice.values.tolist()}")
    order = {name: i for i, name in enumerate([CLEAN, *CORRUPTIONS])}
    table = table.sort_values(
        ["corruption", "severity"], key=lambda col: col.map(order) if col.name == "corruption" else col
    )
    return table.reset_index(drop=True)


def read_robustness_table(path: str | os.PathLike) -> pd.DataFrame:
    """Reads a ``robustness.csv`` written by :func:`robustness_table` (a baseline run's, typically).

    Raises:
        ValueError: naming the file and the columns it lacks.
    """
    from datamodules.imagenet_c import CORRUPTIONS

    table = pd.read_csv(path, dtype={"corruption": str})
    missing = [c for c in ("corruption", "severity", "accuracy") if c not in table.columns]
    if missing:
        raise ValueError(f"{path} is not a robustness table: it lacks the column(s) {missing}")
    # A file handed over is untrusted: every value the scores use is checked to be what it should be.
    unknown = sorted(set(table["corruption"].astype(str)) - {CLEAN, *CORRUPTIONS})
    if unknown:
        raise ValueError(f"{path}: unknown corruption type(s) {unknown[:5]}; known are {[CLEAN, *CORRUPTIONS]}")
    for column, low, high in (("severity", 0, 5), ("accuracy", 0.0, 1.0), ("samples", 0, None)):
        if column not in table.columns:
            continue
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() | (values < low) | ((values > high) if high is not None else False)
        if column in ("severity", "samples"):
            bad |= values.notna() & (values != values.round())
        if bad.any():
            raise ValueError(
                f"{path}: column {column!r} holds {table.loc[bad, column].iloc[0]!r}, "
                f"not a number in [{low}, {high if high is not None else 'inf'}]"
            )
        table[column] = values.astype(int if column in ("severity", "samples") else float)
    repeated = table.duplicated(["corruption", "severity"], keep=False)
    if repeated.any():
        raise ValueError(
            f"{path}: each (corruption, severity) must appear once; repeated: "
            f"{table.loc[repeated, ['corruption', 'severity']].drop_duplicates().values.tolist()[:5]}"
        )
    table["error"] = 1.0 - table["accuracy"]
    return table


def _clean_error(table: pd.DataFrame) -> float:
    clean = table.loc[table["corruption"] == CLEAN, "error"]
    return float(clean.iloc[0]) if len(clean) else float("nan")


def _one_sample(table: pd.DataFrame, kind: str) -> float:
    """One image's share of the error in ``kind``'s cells (1e-9 when the table has no counts)."""
    if "samples" not in table.columns:
        return 1e-9
    counts = table.loc[table["corruption"] == kind, "samples"]
    return 1.0 / float(counts.min()) if len(counts) and counts.min() > 0 else 1e-9


def corruption_errors(table: pd.DataFrame, baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per corruption type: mean accuracy and error over the severities, CE and relative CE against ``baseline``.

    Columns: ``corruption``, ``family``, ``severities`` (how many were scored), ``mean_accuracy``,
    ``mean_error``, ``ce``, ``relative_ce`` (NaN without a baseline or where undefined).
    """
    corrupted = table[table["corruption"] != CLEAN]
    clean_error = _clean_error(table)
    base_clean_error = _clean_error(baseline) if baseline is not None else float("nan")
    rows = []
    for kind, cells in corrupted.groupby("corruption", sort=False):
        ce = relative_ce = float("nan")
        if baseline is not None:
            base = baseline[baseline["corruption"] == kind].set_index("severity")["error"]
            own = cells.set_index("severity")["error"]
            if len(base) and set(own.index) <= set(base.index):
                base = base.loc[own.index]  # the same severities on both sides
                # A denominator under one image's worth of error is noise, not a baseline to divide by.
                floor = _one_sample(baseline, kind)
                if base.sum() >= floor:
                    ce = float(own.sum() / base.sum())
                lost = float((base - base_clean_error).sum())
                if lost >= floor:
                    relative_ce = float((own - clean_error).sum() / lost)
        rows.append(
            {
                "corruption": kind,
                "family": cells["family"].iloc[0] if "family" in cells else "",
                "severities": len(cells),
                "mean_accuracy": float(cells["accuracy"].mean()),
                "mean_error": float(cells["error"].mean()),
                "ce": ce,
                "relative_ce": relative_ce,
            }
        )
    return pd.DataFrame(rows)


def robustness_summary(table: pd.DataFrame, baseline: pd.DataFrame | None = None) -> dict:
    """JSON-ready headline figures: clean accuracy, mean corrupted accuracy (overall and per family),
    mCE and relative mCE (``None`` without a usable baseline), and the types that have no CE."""
    errors = corruption_errors(table, baseline)
    clean = table.loc[table["corruption"] == CLEAN, "accuracy"]

    def mean_or_none(values: pd.Series) -> float | None:
        values = values.dropna()
        return float(values.mean()) if len(values) else None

    return {
        "clean_accuracy": float(clean.iloc[0]) if len(clean) else None,
        "mean_corrupted_accuracy": mean_or_none(errors["mean_accuracy"]),
        "mean_accuracy_by_family": {
            f: float(g["mean_accuracy"].mean()) for f, g in errors.groupby("family", sort=False)
        },
        "mce": mean_or_none(errors["ce"]) if baseline is not None else None,
        "relative_mce": mean_or_none(errors["relative_ce"]) if baseline is not None else None,
        "types": len(errors),
        "types_without_ce": errors.loc[errors["ce"].isna(), "corruption"].tolist() if baseline is not None else [],
    }


def heatmap_figure(table: pd.DataFrame, *, metric: str = "accuracy", title: str | None = None) -> Figure:
    """Type x severity grid of ``metric`` in percent, each cell annotated, colour scale fixed at 0-100%.

    The last column is the mean over the severities; the clean score is in the title.
    """
    if metric not in ("accuracy", "macro_f1"):
        raise ValueError(f"metric must be 'accuracy' or 'macro_f1', got {metric!r}")
    label = {"accuracy": "accuracy", "macro_f1": "macro-F1"}[metric]
    corrupted = table[table["corruption"] != CLEAN]
    grid = corrupted.pivot(index="corruption", columns="severity", values=metric)
    grid = grid.loc[list(dict.fromkeys(corrupted["corruption"]))]  # keep the table's (reference) order
    values = np.column_stack([grid.to_numpy(dtype=float), grid.mean(axis=1).to_numpy()]) * 100
    columns = [str(s) for s in grid.columns] + ["mean"]

    fig = new_figure(figsize=(1.0 * len(columns) + 3.2, 0.42 * len(grid) + 1.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (r, c), value in np.ndenumerate(values):
        if np.isfinite(value):
            # Dark text on the light (high) end of viridis, white on the dark end.
            ax.text(
                c, r, f"{value:.1f}", ha="center", va="center", fontsize=9, color="black" if value > 60 else "white"
            )
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(grid)), [name.replace("_", " ") for name in grid.index])
    ax.set_xlabel("severity")
    ax.axvline(len(columns) - 1.5, color="white", linewidth=2)  # set the mean column apart
    fig.colorbar(image, ax=ax, label=f"{label} (%)")
    if title is None:
        clean = table.loc[table["corruption"] == CLEAN, metric]
        title = f"{label.capitalize()} under corruption (%)"
        if len(clean):
            title += f"; clean {100 * float(clean.iloc[0]):.1f}"
    ax.set_title(title)
    return fig
