"""The shortcut check: can a metadata column alone predict the label?

If every tank photo came from camera B, "camera B" predicts "tank", and a network can learn
the camera's colour cast or watermark instead of the tank; it then fails on the first tank
another camera shoots. This check fits, for each column on its own, a cross-validated simple
classifier and compares its accuracy with always guessing the most common class.

The classifier: the column's slices (values, or quantile bins of numbers, as
``evaluation.slices.column_groups`` makes them) one-hot encoded into an L2-regularised
logistic regression (scikit-learn). On one categorical variable that is a per-value table of
class frequencies, shrunk towards the overall class balance so that a rare value seen a few
times cannot look predictive; binning numbers finds non-monotone links too (a class shot
only at mid altitude).

A column is **warned** about when both hold (defaults):

- ``lift >= 0.2``: it closes at least a fifth of the gap between guessing the majority class
  and a perfect score, ``lift = (accuracy - majority_rate) / (1 - majority_rate)``;
- ``p_value <= 0.001``: a one-sided binomial test of the cross-validated hits against the
  majority rate, so small data cannot trip the warning by luck.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from evaluation.slices import RESERVED, column_groups

# Columns of ShortcutReport.table, in order:
SHORTCUT_COLUMNS = (
    "column",
    "kind",  # categorical | numeric (binned)
    "groups",  # distinct values or bins the classifier saw
    "accuracy",  # cross-validated accuracy of predicting the label from this column alone
    "majority_rate",  # accuracy of always guessing the most common class
    "lift",  # (accuracy - majority_rate) / (1 - majority_rate); 0 = no better than guessing, 1 = perfect
    "p_value",  # one-sided binomial test of the hits against the majority rate
    "warn",  # lift >= min_lift and p_value <= alpha
    "strongest",  # the value that points at one class most clearly, e.g. "S3: 96% tank (n=50)"
)


@dataclass(frozen=True)
class ShortcutReport:
    """Attributes:
    table: one row per column with ``SHORTCUT_COLUMNS``, highest lift first.
    messages: one plain-language warning per warned column.
    skipped: columns not checked, with the reason.
    """

    table: pd.DataFrame
    messages: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def warned(self) -> list[str]:
        return self.table.loc[self.table["warn"], "column"].tolist()


def _strongest(groups: pd.Series, labels: np.ndarray, class_names: Sequence[str] | None, min_count: int) -> str:
    best, text = -1.0, ""
    for value, members in pd.Series(labels).groupby(groups.to_numpy()):
        if len(members) < min_count:
            continue
        counts = members.value_counts()
        share = counts.iloc[0] / len(members)
        if share > best:
            name = class_names[counts.index[0]] if class_names is not None else counts.index[0]
            best, text = share, f"{value}: {share:.0%} {name} (n={len(members)})"
    return text


def shortcut_check(
    frame: pd.DataFrame,
    *,
    target: str = "target",
    columns: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    folds: int = 5,
    bins: int = 10,
    max_categories: int = 50,
    min_lift: float = 0.2,
    alpha: float = 0.001,
    seed: int = 0,
) -> ShortcutReport:
    """How well each metadata column alone predicts the label, and which columns to worry about.

    Args:
        frame: one row per sample: the integer class id in ``target`` and the metadata columns.
        target: column of the class ids.
        columns: the columns to check; every column except the reserved ones
            (``target``/``prediction``/``index``/``path``/``split``/``label``) when ``None``.
            Image properties (brightness, ...) are not metadata: leave them out.
        class_names: names of the class ids, for the messages.
        folds: cross-validation folds (fewer when the rarest class has fewer samples).
        bins: quantile bins for numeric columns.
        max_categories: most distinct values kept per text column; rarer ones are grouped.
        min_lift: the lift from which a column is warned about.
        alpha: the largest p-value at which a column is warned about.
        seed: shuffling of the folds.
    """
    if target not in frame.columns:
        raise ValueError(f"shortcut_check: no column {target!r} in the table; columns are {list(frame.columns)}")
    frame = frame.reset_index(drop=True)
    labels = frame[target].to_numpy(dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    if columns is None:
        columns = [c for c in frame.columns if c not in (target, *RESERVED)]
    majority = counts.max() / len(labels)
    rows, messages, skipped = [], [], {}
    if len(classes) < 2:
        return ShortcutReport(
            pd.DataFrame(columns=list(SHORTCUT_COLUMNS)), [], dict.fromkeys(columns, "one class only")
        )
    if counts.min() < 2:
        # Cross-validation cannot hold out a class of one sample and still train on it.
        rare = int((counts < 2).sum())
        return ShortcutReport(
            pd.DataFrame(columns=list(SHORTCUT_COLUMNS)),
            [],
            dict.fromkeys(columns, f"{rare} class(es) with a single training sample: no cross-validation"),
        )
    cv = StratifiedKFold(min(folds, int(counts.min())), shuffle=True, random_state=seed)
    model = make_pipeline(OneHotEncoder(handle_unknown="ignore"), LogisticRegression(max_iter=1000))
    for column in columns:
        groups, kind, reason = column_groups(frame[column], bins=bins, max_categories=max_categories)
        if groups is None:
            skipped[column] = reason
            continue
        with warnings.catch_warnings():
            # A fold may lack a rare class; the classifier then never predicts it, which is the point.
            warnings.simplefilter("ignore", UserWarning)
            predicted = cross_val_predict(model, groups.to_numpy(dtype=str).reshape(-1, 1), labels, cv=cv)
        hits = int((predicted == labels).sum())
        accuracy = hits / len(labels)
        lift = (accuracy - majority) / (1 - majority) if majority < 1 else 0.0
        p_value = float(binomtest(hits, len(labels), majority, alternative="greater").pvalue)
        warn = bool(lift >= min_lift and p_value <= alpha)
        strongest = _strongest(groups, labels, class_names, min_count=5)
        rows.append(
            {
                "column": column,
                "kind": kind,
                "groups": int(groups.nunique()),
                "accuracy": accuracy,
                "majority_rate": float(majority),
                "lift": float(lift),
                "p_value": p_value,
                "warn": warn,
                "strongest": strongest,
            }
        )
        if warn:
            messages.append(
                f"metadata column {column!r} predicts the label: {accuracy:.0%} accuracy from it alone "
                f"(cross-validated) against {majority:.0%} for always guessing the most common class"
                + (f"; e.g. {strongest}" if strongest else "")
                + f". The model may be learning the {column}, not the object: check how the images were "
                "collected, balance the classes across its values, or compare the slices per value."
            )
    table = pd.DataFrame(rows, columns=list(SHORTCUT_COLUMNS))
    table = table.sort_values("lift", ascending=False, kind="stable").reset_index(drop=True)
    return ShortcutReport(table=table, messages=messages, skipped=skipped)
