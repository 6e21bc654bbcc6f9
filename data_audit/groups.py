"""From pairs to findings: duplicate groups, leakage across splits, conflicting labels.

Pairs found by any method are edges of one graph; its connected components
(``scipy.sparse.csgraph``) are the duplicate groups, so a photo, its JPEG re-save and a
resized copy of that re-save are one group even when no single method linked all three.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from data_audit.near_duplicates import METHODS

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}

DUPLICATE_COLUMNS = ("group_id", "group_size", "path", "split", "label", "keep", "method", "distance", "linked_to")
"""``duplicates.csv``: one row per image in a group of two or more, groups in order, each in display order.

group_id: 0, 1, ... (largest groups first). group_size: images in the group. keep: True for the
one image of the group to keep (the first: in the earliest split, then the largest). method,
distance, linked_to: the image's strongest link (``exact`` before ``phash`` before
``embedding``, then the smallest distance) and the image at its other end; distance units as
in :data:`data_audit.near_duplicates.PAIR_COLUMNS`.
"""

LEAKAGE_COLUMNS = ("group_id", "path", "split", "label", "twin_path", "twin_split", "twin_label", "method", "distance")
"""``leakage.csv``: one row per image whose group also has an image in an earlier split
(train before val before test); ``twin_*`` is the group's first image in the earliest split.
Excluding these paths leaves every picture in one split only."""

CONFLICT_COLUMNS = ("group_id", "path", "split", "label", "group_labels", "majority_label", "method", "distance")
"""``conflicting_labels.csv``: every image of a group whose images carry more than one label.
group_labels: the labels present, ``|``-joined; majority_label: the most common one (ties: sorted first)."""


def component_labels(n: int, pairs: pd.DataFrame) -> np.ndarray:
    """Connected-component id of each of ``n`` rows under the edges ``pairs.a - pairs.b``."""
    if pairs.empty:
        return np.arange(n)
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _strongest_links(pairs: pd.DataFrame) -> pd.DataFrame:
    """For every row that has a pair: its best link (method rank, then distance) and the other end."""
    rank = {m: i for i, m in enumerate(METHODS)}
    both = pd.concat(
        [
            pd.DataFrame(
                {"row": pairs["a"], "other": pairs["b"], "method": pairs["method"], "distance": pairs["distance"]}
            ),
            pd.DataFrame(
                {"row": pairs["b"], "other": pairs["a"], "method": pairs["method"], "distance": pairs["distance"]}
            ),
        ],
        ignore_index=True,
    )
    both["rank"] = both["method"].map(rank)
    both = both.sort_values(["row", "rank", "distance", "other"], kind="stable")
    return both.drop_duplicates("row").set_index("row")


def duplicate_table(samples: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Groups of two or more images, as :data:`DUPLICATE_COLUMNS`.

    Args:
        samples: one row per sample (index = row number used in ``pairs``), with columns
            ``path``, ``split``, ``label``, ``width``, ``height``.
        pairs: a pair table (:data:`data_audit.near_duplicates.PAIR_COLUMNS`).
    """
    if pairs.empty:
        return pd.DataFrame(columns=list(DUPLICATE_COLUMNS))
    component = component_labels(len(samples), pairs)
    linked = np.unique(np.concatenate([pairs["a"].to_numpy(), pairs["b"].to_numpy()]))
    links = _strongest_links(pairs)
    table = samples.loc[linked, ["path", "split", "label"]].copy()
    table["component"] = component[linked]
    table["split_rank"] = table["split"].map(SPLIT_ORDER).fillna(len(SPLIT_ORDER))
    area = samples.loc[linked, "width"].fillna(0) * samples.loc[linked, "height"].fillna(0)
    table["neg_area"] = -area
    table["method"] = links.loc[linked, "method"].to_numpy()
    table["distance"] = links.loc[linked, "distance"].to_numpy()
    table["linked_to"] = samples["path"].to_numpy()[links.loc[linked, "other"].to_numpy()]
    table["group_size"] = table.groupby("component")["path"].transform("size")
    table["first_path"] = table.groupby("component")["path"].transform("min")
    table = table.sort_values(
        ["group_size", "first_path", "split_rank", "neg_area", "path"], ascending=[False, True, True, True, True]
    )
    table["group_id"] = pd.factorize(table["component"])[0]
    table["keep"] = ~table["group_id"].duplicated()
    return table.loc[:, list(DUPLICATE_COLUMNS)].reset_index(drop=True)


def leakage_table(duplicates: pd.DataFrame) -> pd.DataFrame:
    """Images that share a group with an image of an earlier split, as :data:`LEAKAGE_COLUMNS`."""
    rows = []
    for group_id, group in duplicates.groupby("group_id", sort=True):
        ranks = group["split"].map(SPLIT_ORDER)
        if ranks.isna().any() or ranks.nunique() < 2:
            continue  # unsplit samples, or one split only: nothing leaks
        first = group.loc[ranks.idxmin()]
        for _, member in group[ranks > ranks.min()].iterrows():
            rows.append(
                {
                    "group_id": group_id,
                    "path": member["path"],
                    "split": member["split"],
                    "label": member["label"],
                    "twin_path": first["path"],
                    "twin_split": first["split"],
                    "twin_label": first["label"],
                    "method": member["method"],
                    "distance": member["distance"],
                }
            )
    return pd.DataFrame(rows, columns=list(LEAKAGE_COLUMNS))


def conflict_table(duplicates: pd.DataFrame) -> pd.DataFrame:
    """Every image of a group whose images carry more than one label, as :data:`CONFLICT_COLUMNS`."""
    if duplicates.empty:
        return pd.DataFrame(columns=list(CONFLICT_COLUMNS))
    labels_per_group = duplicates.groupby("group_id")["label"].nunique()
    conflicted = duplicates[duplicates["group_id"].isin(labels_per_group[labels_per_group > 1].index)].copy()
    if conflicted.empty:
        return pd.DataFrame(columns=list(CONFLICT_COLUMNS))
    grouped = conflicted.groupby("group_id")["label"]
    conflicted["group_labels"] = grouped.transform(lambda s: "|".join(sorted(set(s))))
    conflicted["majority_label"] = grouped.transform(lambda s: sorted(s.value_counts().items(), key=_majority)[0][0])
    return conflicted.loc[:, list(CONFLICT_COLUMNS)].reset_index(drop=True)


def _majority(item: tuple[str, int]) -> tuple[int, str]:
    label, count = item
    return -count, label
