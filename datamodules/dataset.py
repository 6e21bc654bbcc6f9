"""The torch Dataset (read safely, transform, return ``{"image", "target", "index"}``) and the samplers
that decide the order, the per-sample augmentation seeds and each DDP rank's share."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler, default_collate

from datamodules.image_io import UnreadableImageError, read_rgb


class ImageDataset(Dataset):
    """Images of one split; ``index`` is the sample's position in that split.

    A key is an index, or ``(index, seed)``: the training sampler passes a seed for every draw, and the
    augmentation pipeline is re-seeded with it, so what a sample looks like in an epoch depends on
    (seed, epoch, index) only, not on DataLoader workers, batch order or an interruption.

    A file that cannot be read (it passed the pre-flight scan but changed since, or the scan
    was off) does not stop the epoch: the item carries the reason instead of an image and
    :func:`collate_skipping_failures` moves it out of the batch, to be reported.

    Args:
        paths: image file paths.
        targets: class id of each path.
        transform: albumentations pipeline called as ``transform(image=array)``; ``None``
            returns the uint8 ``H x W x 3`` array.
    """

    def __init__(self, paths: Sequence[str], targets: Sequence[int], transform: Callable | None) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = list(paths)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        try:
            image = read_rgb(self.paths[index])
        except UnreadableImageError as err:
            return {"index": index, "error": str(err)}
        if self.transform is not None:
            if seed is not None and hasattr(self.transform, "set_random_state"):
                # One generator for the whole pipeline, drawn from this sample's own seed.
                self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
            image = self.transform(image=image)["image"]
        return {"image": image, "target": int(self.targets[index]), "index": index}


def collate_skipping_failures(items: list[dict]) -> dict:
    """Collates readable items; unreadable ones go to ``batch["failed"]`` as ``(index, reason)``."""
    good = [item for item in items if "error" not in item]
    failed = [(item["index"], item["error"]) for item in items if "error" in item]
    if good:
        batch = default_collate(good)
    else:
        batch = {
            "image": torch.empty(0),
            "target": torch.empty(0, dtype=torch.long),
            "index": torch.empty(0, dtype=torch.long),
        }
    batch["failed"] = failed
    return batch


class EpochShuffle(Sampler):
    """A new order every epoch, drawn from ``(seed, epoch)`` and not from the global random state,
    with a per-draw augmentation seed; under DDP, this rank's share of it.

    Because nothing depends on what was drawn before, a run resumed at epoch k shuffles and
    augments exactly like an uninterrupted one. Under DDP the order is padded with repeats (as
    torch's DistributedSampler does) so that every rank takes the same number of steps; the
    per-sample outputs are de-duplicated by index when gathered.

    Args:
        num_samples: size of the split.
        seed: the run's seed.
        rank: this process's rank.
        world_size: number of processes.

    Yields:
        ``(index, augmentation seed)`` keys for :class:`ImageDataset`.
    """

    def __init__(self, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples, self.seed, self.rank, self.world_size = num_samples, int(seed), rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before every training epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed % 2**32, self.epoch])
        order = rng.permutation(self.num_samples).tolist()
        seeds = rng.integers(0, 2**63 - 1, size=self.num_samples)
        total = len(self) * self.world_size
        order += order[: total - len(order)]
        for index in order[self.rank : total : self.world_size]:
            yield index, int(seeds[index])


class NoSingletonBatchSampler(BatchSampler):
    """Batches like :class:`~torch.utils.data.BatchSampler`, except that a last batch of a
    single sample joins the batch before it.

    A training batch of one breaks BatchNorm on 1x1 feature maps; dropping the sample instead
    (``drop_last``) would leave a different training sample out of every epoch, and with it
    out of the per-sample training statistics.
    """

    def __iter__(self):
        batches = super().__iter__()
        previous = next(batches, None)
        for batch in batches:
            if len(batch) == 1 and self.batch_size > 1:  # only the last batch can be short
                previous = [*previous, *batch]
            else:
                yield previous
                previous = batch
        if previous is not None:
            yield previous

    def __len__(self) -> int:
        n = super().__len__()
        singleton = self.batch_size > 1 and not self.drop_last and len(self.sampler) % self.batch_size == 1
        return n - 1 if singleton and n > 1 else n
