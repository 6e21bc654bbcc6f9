"""What callers take from the findings: paths to drop, a pass/fail check, and images to show.

These are the functions the training run, the ``audit.py`` command and the TensorBoard
galleries call; they only read the tables of an :class:`~data_audit.audit.AuditFindings`, or of
the same findings read back from the report files (:class:`~data_audit.saved.AuditTables`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from data_audit.audit import AuditFindings
from data_audit.quality import FLAGS

if TYPE_CHECKING:
    from data_audit.saved import AuditTables

    Findings = AuditFindings | AuditTables

FAIL_KINDS = ("leakage", "conflicting_labels", "duplicates", "exact_duplicates", "unreadable", *FLAGS)
"""What ``audit.fail_on`` may list: the finding kinds, and each quality flag by name."""

# Quality flags whose score is worse when high (the others are worse when low).
_HIGH_IS_WORSE = {"bright", "odd_aspect_ratio"}


def leaked_paths(findings: Findings, splits: Iterable[str] = ("val", "test")) -> list[str]:
    """Val/test images with a twin in an earlier split: drop them and the metrics are honest."""
    splits = set(splits)
    return findings.leakage.loc[findings.leakage["split"].isin(splits), "path"].tolist()


def conflicting_paths(findings: Findings) -> list[str]:
    """Every image of a duplicate group that carries more than one label (a certain label error)."""
    return findings.conflicts["path"].tolist()


def redundant_paths(findings: Findings) -> list[str]:
    """Every duplicate except the one kept per group (the first in display order)."""
    duplicates = findings.duplicates
    return duplicates.loc[~duplicates["keep"].astype(bool), "path"].tolist()


def _paths_of(findings: Findings, kind: str) -> list[str]:
    if kind == "leakage":
        return findings.leakage["path"].tolist()
    if kind == "conflicting_labels":
        return conflicting_paths(findings)
    if kind == "duplicates":
        return redundant_paths(findings)
    if kind == "exact_duplicates":
        d = findings.duplicates
        return d.loc[~d["keep"].astype(bool) & (d["method"] == "exact"), "path"].tolist()
    if kind == "unreadable":
        return findings.exclusions["path"].tolist()
    return findings.quality.loc[findings.quality[kind].astype(bool), "path"].tolist()


def fail_on_check(findings: Findings, kinds: Iterable[str], *, show: int = 20) -> str | None:
    """Returns the error message for ``audit.fail_on``, or None when none of ``kinds`` was found.

    Args:
        findings: the audit's findings.
        kinds: names from :data:`FAIL_KINDS`.
        show: files listed per kind in the message.

    Raises:
        ValueError: a kind is not in :data:`FAIL_KINDS` (the message lists them).
    """
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in FAIL_KINDS]
    if unknown:
        raise ValueError(f"audit.fail_on={kinds} has unknown kind(s) {unknown}; choose from {list(FAIL_KINDS)}.")
    parts = []
    for kind in kinds:
        paths = _paths_of(findings, kind)
        if paths:
            more = f"\n    ... and {len(paths) - show} more" if len(paths) > show else ""
            parts.append(f"  {kind}: {len(paths)} file(s)\n    " + "\n    ".join(paths[:show]) + more)
    if not parts:
        return None
    return (
        "The data audit found what audit.fail_on stops on:\n"
        + "\n".join(parts)
        + "\nFix or exclude these files (data.exclude=<run>/reports/audit/<file>.csv), or remove the kind from "
        "audit.fail_on."
    )


@dataclass
class DuplicateGroup:
    """One group for a gallery: its images in display order (the kept one first)."""

    group_id: int
    paths: list[str]
    splits: list[str | None]
    labels: list[str]
    methods: list[str]
    distances: list[float]

    @property
    def conflicting(self) -> bool:
        return len(set(self.labels)) > 1

    @property
    def leaking(self) -> bool:
        return len({s for s in self.splits if s}) > 1


def duplicate_groups(findings: Findings, max_groups: int | None = None) -> list[DuplicateGroup]:
    """The duplicate groups, largest first, each in display order."""
    groups = []
    for group_id, group in findings.duplicates.groupby("group_id", sort=True):
        if max_groups is not None and len(groups) >= max_groups:
            break
        groups.append(
            DuplicateGroup(
                group_id=int(group_id),
                paths=group["path"].tolist(),
                splits=group["split"].tolist(),
                labels=group["label"].tolist(),
                methods=group["method"].tolist(),
                distances=group["distance"].astype(float).tolist(),
            )
        )
    return groups


@dataclass
class LeakedPair:
    """A val/test image beside its twin in an earlier split (a leakage gallery's row)."""

    path: str
    split: str
    twin_path: str
    twin_split: str
    method: str
    distance: float


def leaked_pairs(findings: Findings, max_pairs: int | None = None) -> list[LeakedPair]:
    """Leaked images with their twins, in group order."""
    rows = findings.leakage if max_pairs is None else findings.leakage.head(max_pairs)
    return [
        LeakedPair(r.path, r.split, r.twin_path, r.twin_split, r.method, float(r.distance))
        for r in rows.itertuples(index=False)
    ]


def quality_outliers(findings: Findings, flag: str, limit: int | None = None) -> pd.DataFrame:
    """The images raising ``flag``, worst first: ``path``, ``split``, ``label``, ``score``.

    Raises:
        ValueError: ``flag`` is not in :data:`data_audit.quality.FLAGS`.
    """
    if flag not in FLAGS:
        raise ValueError(f"quality flag {flag!r} is not one of {list(FLAGS)}")
    q = findings.quality
    flagged = q.loc[q[flag].astype(bool), ["path", "split", "label", f"{flag}_score"]].rename(
        columns={f"{flag}_score": "score"}
    )
    flagged = flagged.sort_values("score", ascending=flag not in _HIGH_IS_WORSE, kind="stable")
    return (flagged if limit is None else flagged.head(limit)).reset_index(drop=True)


def class_samples(findings: AuditFindings, per_class: int = 8, seed: int = 0) -> dict[str, list[str]]:
    """A seeded random sample of readable images per class (the "look at your data" grid), classes sorted."""
    rng = np.random.default_rng(seed)
    out = {}
    for label, group in sorted(findings.images.groupby("label"), key=lambda item: str(item[0])):
        paths = group["path"].to_numpy()
        chosen = rng.choice(len(paths), size=min(per_class, len(paths)), replace=False)
        out[str(label)] = paths[np.sort(chosen)].tolist()
    return out


def conflict_suggestions(conflicts: pd.DataFrame, predicted: Mapping[str, str] | None = None) -> dict[str, str]:
    """The label to suggest for every image of a group with conflicting labels (``conflicting_labels.csv``).

    One label per group, so that relabelling by the suggestions makes the copies agree instead
    of swapping their labels: the group's majority label; on a tie, the label the model predicts
    for most of the group's images (among the group's labels); then the first in sorted order.

    Args:
        conflicts: the conflict table (``group_id``, ``path``, ``label``).
        predicted: ``{path: predicted label}`` where the model's prediction is known.
    """
    suggestions: dict[str, str] = {}
    for _, group in conflicts.groupby("group_id", sort=True):
        counts = group["label"].astype(str).value_counts()
        tied = sorted(counts.index[counts == counts.max()])
        votes = Counter(predicted[p] for p in group["path"] if predicted and predicted.get(p) in tied)
        if len(tied) > 1 and votes:
            most = max(votes.values())
            tied = [label for label in tied if votes.get(label, 0) == most]
        suggestions.update({path: tied[0] for path in group["path"]})
    return suggestions
