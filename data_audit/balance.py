"""Class balance: how many images each class has in each split, and what that means for accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from data_audit.groups import SPLIT_ORDER


@dataclass
class BalanceSummary:
    """What the counts mean.

    Attributes:
        classes: number of classes.
        imbalance_ratio: images of the largest class / images of the smallest (training split
            if there is one, else all); 1.0 is balanced, ``inf`` when a class has none there.
        majority_class: the largest class of that split.
        majority_accuracy: per split, the accuracy of always predicting ``majority_class``:
            the floor any model must beat (0.1 for ten balanced classes, 0.9 when one class
            is 90% of the images).
        notes: plain-language warnings (one class, a class missing from a split, ...).
    """

    classes: int
    imbalance_ratio: float
    majority_class: str | None
    majority_accuracy: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


BALANCE_COLUMNS = ("label", "<split>...", "total", "share")
"""``class_balance.csv``: one row per class (sorted by name): ``label``, one count column per
split present (``train``, ``val``, ``test``; ``all`` when the samples have no split), ``total``
and ``share`` (the class's fraction of all images)."""


def class_balance(samples: pd.DataFrame) -> tuple[pd.DataFrame, BalanceSummary]:
    """Counts per class and split, and the summary of what they mean.

    Args:
        samples: one row per sample with columns ``label`` and ``split`` (``split`` may be empty
            or None for unsplit data, counted as ``all``).
    """
    if samples.empty:
        return pd.DataFrame(columns=["label", "total", "share"]), BalanceSummary(
            0, float("nan"), None, {}, ["no images"]
        )
    split = samples["split"].fillna("").replace("", "all")
    counts = pd.crosstab(samples["label"].astype(str), split)
    counts = counts[sorted(counts.columns, key=lambda s: (SPLIT_ORDER.get(s, len(SPLIT_ORDER)), s))]
    counts["total"] = counts.sum(axis=1)
    counts["share"] = counts["total"] / counts["total"].sum()
    table = counts.reset_index().rename(columns={"row_0": "label"})
    table.columns.name = None
    table = table.rename(columns={table.columns[0]: "label"})

    reference = "train" if "train" in counts.columns else "total"
    sizes = counts[reference]
    notes = []
    if len(counts) == 1:
        notes.append(f"only one class ({counts.index[0]!r}): a classifier needs at least two")
    majority = str(sizes.idxmax())
    ratio = float(sizes.max() / sizes.min()) if sizes.min() > 0 else float("inf")
    accuracy = {}
    for column in [c for c in counts.columns if c not in ("total", "share")]:
        n = counts[column].sum()
        accuracy[column] = float(counts.loc[majority, column] / n) if n else float("nan")
        missing = counts.index[counts[column] == 0].tolist()
        if missing and len(counts) > 1:
            notes.append(f"{len(missing)} class(es) have no {column} images: {missing[:10]}")
    if ratio >= 10:
        notes.append(
            f"the largest class has {ratio:.0f}x the images of the smallest: accuracy is dominated by "
            f"{majority!r}; read per-class recall or balanced accuracy as well"
        )
    return table, BalanceSummary(len(counts), ratio, majority, accuracy, notes)
