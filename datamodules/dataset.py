"""The torch Dataset: read safely, transform, return ``{"image", "target", "index"}``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, default_collate

from datamodules.image_io import UnreadableImageError, read_rgb


class ImageDataset(Dataset):
    """Images of one split; ``index`` is the sample's position in that split.

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

    def __getitem__(self, index: int) -> dict:
        try:
            image = read_rgb(self.paths[index])
        except UnreadableImageError as err:
            return {"index": index, "error": str(err)}
        if self.transform is not None:
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


class NoSingletonBatchSampler(BatchSampler):
    """Batches like :class:`~torch.utils.data.BatchSampler`, except that a last batch of a
    single sample joins the batch before it.

    A training batch of one breaks BatchNorm on 1x1 feature maps; dropping the sample instead
    (``drop_last``) would leave a different training sample out of every epoch, and with it
    out of the per-sample training statistics. Lightning re-creates this class with a
    DistributedSampler under DDP (same constructor as BatchSampler).
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
