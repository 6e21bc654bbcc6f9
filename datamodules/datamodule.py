"""The thin LightningDataModule: datasets, transforms, samplers and loaders over a sample catalogue."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from datamodules import transforms
from datamodules.catalogue import HELDOUT, PREDICT, Catalogue
from datamodules.dataset import EpochShuffle, ImageDataset, NoSingletonBatchSampler, collate_skipping_failures
from datamodules.transforms import Preprocessing
from runs.errors import ConfigError


@dataclass(frozen=True)
class LoaderOptions:
    """How batches are served (``data.batch_size`` ...), checked before any file is read.

    Attributes:
        batch_size: training batch size per device.
        eval_batch_size: validation/test/predict batch size per device; ``None`` is twice ``batch_size``.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory (faster copies to a GPU).

    Raises:
        ConfigError: a value of the wrong type or out of range; the message names the option.
    """

    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int = 2
    pin_memory: bool = False

    def __post_init__(self) -> None:
        for name, value, minimum in (
            ("batch_size", self.batch_size, 1),
            ("eval_batch_size", self.eval_batch_size, 1),
            ("num_workers", self.num_workers, 0),
        ):
            if value is None and name == "eval_batch_size":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"data.{name}={value!r} must be an integer >= {minimum}.")
        if not isinstance(self.pin_memory, bool):
            raise ConfigError(f"data.pin_memory={self.pin_memory!r} must be true or false.")


class ImageDataModule(LightningDataModule):
    """Serves the samples of a :class:`~datamodules.catalogue.Catalogue` as batches.

    Training batches are augmented and shuffled per epoch from the run's seed (see
    :class:`~datamodules.dataset.EpochShuffle`); validation, test and prediction batches get the
    evaluation transform, in index order, divided between DDP ranks without padding, so every
    metric counts each sample once. A file that fails to load mid-epoch is dropped from its batch
    and reported (:meth:`report_load_failures`).

    Args:
        catalogue: the samples, classes and splits.
        preprocessing: input size, crop and normalisation the model expects.
        augment: ``{"crop": {...}, "ops": {name: albumentations config or None}}``; ``None``
            trains on the evaluation transform.
        loader: batch sizes, workers, pinned memory.
        seed: the run's seed: shuffling, augmentation and worker seeds derive from it.
        folder: the run folder (:class:`runs.folder.RunFolder`) for ``augment.yaml`` and the
            unreadable list; ``None`` writes nothing.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        preprocessing: Preprocessing,
        *,
        augment: Mapping | None = None,
        loader: LoaderOptions | None = None,
        seed: int = 0,
        folder=None,
    ) -> None:
        super().__init__()
        self.catalogue = catalogue
        self.preprocessing = preprocessing
        self.augment = dict(augment or {"crop": {"mode": "center"}, "ops": {}})
        self.loader = loader or LoaderOptions()
        self.seed = seed
        self.folder = folder
        self.load_failures: list[dict] = []
        self._datasets: dict[str, ImageDataset] = {}
        self._first_epoch = 0  # the training epoch a fit starts at (> 0 when resumed)

    # ------------------------------------------------------------------ the catalogue's view
    @property
    def class_names(self) -> list[str]:
        return self.catalogue.class_names

    @property
    def samples(self):
        """Split name -> samples in index order."""
        return self.catalogue.splits

    def targets(self, split: str) -> np.ndarray:
        return self.catalogue.targets(split)

    # ------------------------------------------------------------------ transforms
    def train_transform(self, *, normalize: bool = True):
        ops = transforms.instantiate_ops(self.augment.get("ops") or {})
        return transforms.build_train_transform(
            **vars(self.preprocessing),
            crop=self.augment.get("crop") or {"mode": "center"},
            ops=ops,
            seed=self.seed,
            normalize=normalize,
        )

    def eval_transform(self):
        return self.preprocessing.eval_transform()

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        train, evaluation = self.train_transform(), self.eval_transform()
        for split, group in self.samples.items():
            self._datasets[split] = ImageDataset(
                [s.path for s in group], self.targets(split), train if split == "train" else evaluation
            )
        if self.folder is not None and (self.trainer is None or self.trainer.is_global_zero):
            transforms.save_pipelines(self.folder.report("augment.yaml"), train=train, eval=evaluation)

    def dataset(self, split: str) -> ImageDataset:
        self.setup()
        if split not in self._datasets:
            raise ConfigError(f"this data has no {split!r} split (it has {sorted(self._datasets)}).")
        return self._datasets[split]

    def _loader(self, split: str, *, train: bool = False) -> DataLoader:
        dataset = self.dataset(split)
        workers = self.loader.num_workers
        common = {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": self.loader.pin_memory,
            "collate_fn": collate_skipping_failures,
            # Worker seeds from the loader's own generator: iterating a loader never draws from the
            # global random state, which dropout uses (and a resumed run restores).
            "generator": torch.Generator().manual_seed(self.seed),
        }
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if train:
            order = EpochShuffle(len(dataset), seed=self.seed, rank=rank, world_size=world)
            # Lightning creates the first iterator of a fit, whose workers start drawing indices at
            # once, before it calls set_epoch (and, on resume, before it restores the loops): the
            # sampler must start at the epoch the fit starts at.
            order.set_epoch(self._first_epoch)
            batches = NoSingletonBatchSampler(order, batch_size=self.loader.batch_size, drop_last=False)
            return DataLoader(dataset, batch_sampler=batches, **common)
        batch_size = self.loader.eval_batch_size or 2 * self.loader.batch_size
        if world > 1 and len(dataset) >= world:
            # Without padding: the DistributedSampler Lightning would add repeats samples to
            # even out the ranks, and the repeats would count twice in val/test accuracy and F1.
            # Safe for evaluation (no gradient sync), as long as every rank gets a sample.
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **common)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(HELDOUT if HELDOUT in self.samples else PREDICT)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        failed = batch.pop("failed", None) if isinstance(batch, dict) else None
        if failed:
            from models.outputs import STAGE_SPLIT  # here: models imports the data layer

            split = STAGE_SPLIT[self.trainer.state.stage.value]
            if split == HELDOUT and HELDOUT not in self.samples:
                split = PREDICT
            for index, reason in failed:
                sample = self.samples[split][index]
                self.load_failures.append(
                    {"path": sample.path, "label": sample.label, "split": split, "reason": reason, "found_by": "load"}
                )
                warnings.warn(
                    f"skipped a file that failed to load during {split}: {sample.path}: {reason}", stacklevel=1
                )
        return batch

    def report_load_failures(self) -> list[dict]:
        """Files that failed to load during the run, from every rank; added to the catalogue's
        unreadable list and ``reports/unreadable.csv``. Call on every rank (a collective under DDP)."""
        failures = self.load_failures
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, failures)
            failures = [f for part in gathered for f in part]
        new = self.catalogue.add_load_failures(failures)
        is_zero = self.trainer is None or self.trainer.is_global_zero
        if new and is_zero and self.folder is not None:
            self.catalogue.write_unreadable(self.folder)
        self.load_failures = []
        return new

    def state_dict(self) -> dict[str, Any]:
        # Saved at the end of a training epoch: a fit resumed from this checkpoint starts at the next.
        trainer = self.trainer
        return {"next_epoch": trainer.current_epoch + 1} if trainer is not None and trainer.training else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restored (before the optimizers and loaders are set up) when a fit resumes."""
        next_epoch = state_dict.get("next_epoch", 0)
        self._first_epoch = next_epoch if isinstance(next_epoch, int) and next_epoch >= 0 else 0
