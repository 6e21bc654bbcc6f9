"""The torch Dataset: read safely, transform, return ``{"image", "target", "index"}``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

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
