"""Data decisions a run applies on purpose: excluding samples, correcting labels, injecting noise.

Every decision is written to the run's reports, so the data a model saw is versioned with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.manifests import read_table
from datamodules.sources import DataError, Sample, resolve_listed_path

NOISE_TYPES = ("uniform", "class_pair")


def _read_path_table(file: str | os.PathLike, *, option: str, base: Path | None):
    file = Path(file).expanduser()
    if not file.is_file():
        raise DataError(f"{option}={str(file)!r} does not exist. Give a CSV file with a 'path' column.")
    table = read_table(file, option, allow_empty=True)
    if "path" not in table.columns:
        raise DataError(f"{option}: {file} has no 'path' column; its columns are {list(table.columns)}.")
    # Hand-written lists name files relative to the data (folder root or manifest folder).
    return file, table, [resolve_listed_path(raw, base or file.parent) for raw in table["path"]]


def _unknown_paths_error(option: str, file: Path, unknown: list[str], total: int) -> DataError:
    return DataError(
        f"{option}: {len(unknown)} of {total} path(s) in {file} are not in this data set, e.g. {unknown[0]!r}. "
        "Paths must be absolute or relative to the data root, and name files of this data set."
    )


def exclude_samples(
    samples: list[Sample], file: str | os.PathLike, *, base: Path | None = None
) -> tuple[list[Sample], list[dict]]:
    """Drops every sample whose path ``file`` lists; returns (kept, records of the excluded).

    Raises:
        DataError: the file is missing, has no 'path' column, or lists a path not in the data.
    """
    file, _, paths = _read_path_table(file, option="data.exclude", base=base)
    listed = set(paths)
    known = {s.path for s in samples}
    unknown = [p for p in dict.fromkeys(paths) if p not in known]
    if unknown:
        raise _unknown_paths_error("data.exclude", file, unknown, len(listed))
    kept = [s for s in samples if s.path not in listed]
    excluded = [
        {"path": s.path, "label": s.label, "split": s.split or "", "reason": f"listed in {file}"}
        for s in samples
        if s.path in listed
    ]
    return kept, excluded


def relabel_samples(samples: list[Sample], file: str | os.PathLike, *, base: Path | None = None) -> list[dict]:
    """Sets the label of every sample ``file`` lists, in place; returns what changed.

    The file needs columns ``path`` and ``label``; a ``label_suspects.csv`` report (which has
    ``suggested_label`` instead) is accepted as is, applying every suggestion in it.

    Raises:
        DataError: the file or a column is missing, a path is not in the data, or a new
            label is not one of the data's classes (usually a typo).
    """
    file, table, paths = _read_path_table(file, option="data.relabel", base=base)
    column = "label" if "label" in table.columns else "suggested_label" if "suggested_label" in table.columns else None
    if column is None:
        raise DataError(
            f"data.relabel: {file} needs a 'label' column with the corrected label; its columns are "
            f"{list(table.columns)}."
        )
    by_path = {s.path: s for s in samples}
    unknown = [p for p in dict.fromkeys(paths) if p not in by_path]
    if unknown:
        raise _unknown_paths_error("data.relabel", file, unknown, len(set(paths)))
    classes = {s.label for s in samples}
    changes = []
    for row, (path, new) in enumerate(zip(paths, table[column].str.strip(), strict=True)):
        if new not in classes:
            raise DataError(
                f"data.relabel: {file} row {row + 2} gives label {new!r}, which is not a class of this data "
                f"({sorted(classes)[:20]}). Fix the label."
            )
        sample = by_path[path]
        if sample.label != new:
            changes.append({"path": path, "split": sample.split or "", "old_label": sample.label, "new_label": new})
            sample.label = new
    return changes


@dataclass
class InjectedNoise:
    index: int
    path: str
    original_label: str
    noisy_label: str


def inject_label_noise(
    samples: list[Sample], class_names: list[str], *, fraction: float, kind: str, seed: int
) -> list[InjectedNoise]:
    """Flips ``fraction`` of the training labels, reproducibly, in place.

    ``uniform``: a seeded random ``fraction`` of all samples, each to a uniformly random
    *other* class. ``class_pair``: ``fraction`` of each class, all to the next class in
    sorted order (the last to the first): the systematic confusion real annotators make.

    Raises:
        DataError: ``fraction`` is not in [0, 1) or ``kind`` is unknown.
    """
    if not 0 <= fraction < 1:
        raise DataError(f"data.label_noise={fraction} must be a fraction in [0, 1).")
    if kind not in NOISE_TYPES:
        raise DataError(f"data.label_noise_type={kind!r} must be one of {NOISE_TYPES}.")
    if fraction == 0:
        return []
    if len(class_names) < 2:
        raise DataError("data.label_noise needs at least two classes.")
    rng = np.random.default_rng(seed)
    class_id = {c: i for i, c in enumerate(class_names)}
    labels = np.array([class_id[s.label] for s in samples])
    if kind == "uniform":
        chosen = np.sort(rng.choice(len(samples), size=round(fraction * len(samples)), replace=False))
        # Adding 1..C-1 (mod C) to the label picks each other class with equal probability.
        new = (labels[chosen] + rng.integers(1, len(class_names), size=len(chosen))) % len(class_names)
    else:
        picks = []
        for c in range(len(class_names)):
            members = np.flatnonzero(labels == c)
            picks.append(rng.choice(members, size=round(fraction * len(members)), replace=False))
        chosen = np.sort(np.concatenate(picks))
        new = (labels[chosen] + 1) % len(class_names)
    flips = []
    for i, label in zip(chosen.tolist(), new.tolist(), strict=True):
        flips.append(InjectedNoise(i, samples[i].path, samples[i].label, class_names[label]))
        samples[i].label = class_names[label]
    return flips
