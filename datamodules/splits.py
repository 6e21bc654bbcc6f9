"""Seeded, stratified splits: train/val(/test) fractions, and K folds for out-of-sample predictions."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from datamodules.sources import DataError, Sample


def assign_splits(
    samples: list[Sample], *, val_fraction: float, test_fraction: float, seed: int, root: str | os.PathLike = "/"
) -> None:
    """Sets ``split`` on every sample, per class, in place.

    Within a class, samples are ordered by a seeded hash of their path relative to ``root``,
    and the first ones go to validation (then test). The order of a sample does not depend
    on the others, so excluding or relabelling some samples in the next run leaves every
    other sample in its split (up to rounding of the per-class counts): runs before and
    after a data clean-up are compared on the same validation images.

    Written per class instead of with sklearn's ``train_test_split(stratify=...)``: that one
    needs the held-out part to hold at least one sample of every class overall and fails on
    small classes with a message that names no class; here every class gets at least one
    validation sample (and one test sample when ``test_fraction > 0``) or a clear error.

    Raises:
        DataError: a class has too few images for the requested split.
    """
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be fractions "
            "in (0, 1) that add up to less than 1."
        )
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)

    def key(sample: Sample) -> bytes:
        relative = os.path.relpath(sample.path, root) if os.path.isabs(sample.path) else sample.path
        return hashlib.sha256(f"{seed}\0{Path(relative).as_posix()}".encode()).digest()

    for label in sorted(by_class):
        members = by_class[label]
        n_val = max(1, round(len(members) * val_fraction))
        n_test = max(1, round(len(members) * test_fraction)) if test_fraction > 0 else 0
        if len(members) - n_val - n_test < 1:
            need = 2 + (test_fraction > 0)
            raise DataError(
                f"class {label!r} has {len(members)} readable image(s); splitting it into train/val"
                f"{'/test' if n_test else ''} needs at least {need}. Add images to that class, remove it, "
                "or give an explicit split (train/ and val/ folders, or a 'split' column)."
            )
        for rank, sample in enumerate(sorted(members, key=key)):
            sample.split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"


def fold_of_each(labels: list[int], *, num_folds: int, seed: int) -> np.ndarray:
    """Stratified fold id (0..num_folds-1) of each training sample; seeded, so every job agrees."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    if counts[counts > 0].min() < num_folds:
        small = int(np.flatnonzero((counts > 0) & (counts < num_folds))[0])
        raise DataError(
            f"data.num_folds={num_folds} needs at least {num_folds} training images per class; class id {small} "
            f"has {counts[small]}. Use fewer folds."
        )
    folds = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        folds[held_out] = fold
    return folds


def assign_missing_splits(samples: list[Sample], val_fraction, test_fraction, seed, root) -> int:
    """Splits samples that have none; carves validation from train when a source gives train but no val.

    Returns the number of validation samples carved from train (0 when the source had val).
    """
    if all(s.split is None for s in samples):
        # By the labels as found: a relabelled image keeps its split and moves no other image.
        assign_splits(samples, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, root=root)
        return 0
    if any(s.split == "val" for s in samples):
        return 0
    train = [s for s in samples if s.split == "train"]
    if not train:
        return 0
    assign_splits(train, val_fraction=val_fraction, test_fraction=0.0, seed=seed, root=root)
    return sum(s.split == "val" for s in train)


def class_names_of(by_split: dict[str, list[Sample]], data_root: Path) -> list[str]:
    if not by_split["train"]:
        raise DataError(f"no readable training images in {data_root}.")
    if not by_split["val"]:
        raise DataError(f"no readable validation images in {data_root}: add a val split.")
    names = sorted({s.label for s in by_split["train"]})
    if len(names) < 2:
        raise DataError(
            f"{data_root} has only one class ({names[0]!r}): a classifier needs at least two. "
            "Add a folder (or manifest label) for each other class."
        )
    known = set(names)
    for split in ("val", "test"):
        unseen = sorted({s.label for s in by_split[split]} - known)
        if unseen:
            example = next(s.path for s in by_split[split] if s.label == unseen[0])
            raise DataError(
                f"the {split} split has label(s) {unseen} that no training image has (e.g. {example}). "
                "A model cannot learn a class it never sees: add training images of it or drop them."
            )
    return names
