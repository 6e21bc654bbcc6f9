"""Streaming a list of image files through a model in batches, for prediction.

No labels, no splits: a path in, a tensor out. Files that cannot be read are reported with
their reason and never stop the run: the scan (:func:`datamodules.image_io.scan_images`)
finds most of them before the first batch, and a file that fails later (it changed on disk,
or the transform refuses it) is dropped from its batch and reported too. Memory stays one
batch per worker whatever the number of files, so a folder of a million images streams.

Example::

    stream = ImageStream(paths, transform, batch_size=64, num_workers=4)
    for batch in stream:                       # len(stream) batches at most: wrap it in a progress bar
        logits = model(batch.images)           # rows belong to paths[batch.indices]
    stream.unreadable                          # [UnreadableInput(path, reason, found_by), ...]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.image_io import UnreadableImageError, read_rgb, scan_images

Transform = Callable[[np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class UnreadableInput:
    """A file left out, why, and when it was found (``scan`` before streaming, ``load`` while reading)."""

    path: str
    reason: str
    found_by: str


@dataclass
class ImageBatch:
    """One batch: ``images`` ``(B, C, H, W)`` of the files at ``indices`` (positions in the path list).

    ``failed`` lists the files of this batch that could not be read; ``images`` is ``None`` when all failed.
    """

    images: torch.Tensor | None
    indices: torch.Tensor
    failed: list[UnreadableInput] = field(default_factory=list)


class ImageFiles(Dataset):
    """Reads ``paths[positions[i]]`` as upright RGB and applies ``transform``; a failure is returned, not raised.

    Args:
        paths: every input path.
        positions: which of them to serve (the readable ones).
        transform: an ``H x W x 3`` uint8 array to a ``C x H x W`` float tensor (the eval transform).
    """

    def __init__(self, paths: Sequence[str], positions: Sequence[int], transform: Transform) -> None:
        self.paths = paths
        self.positions = positions
        self.transform = transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        position = self.positions[i]
        path = self.paths[position]
        try:
            image = read_rgb(path)
        except UnreadableImageError as err:
            return position, None, str(err)
        try:
            return position, self.transform(image), None
        except Exception as err:  # one odd image must not end a run over a whole folder
            return position, None, f"cannot be preprocessed ({type(err).__name__}: {err})"


class _Collate:
    """Stacks the images that loaded and keeps the failures (a class, not a closure: workers may pickle it)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __call__(self, items: list[tuple[int, torch.Tensor | None, str | None]]) -> ImageBatch:
        good = [(p, image) for p, image, _ in items if image is not None]
        failed = [UnreadableInput(self.paths[p], reason, "load") for p, image, reason in items if image is None]
        images = torch.stack([image for _, image in good]) if good else None
        return ImageBatch(images, torch.tensor([p for p, _ in good], dtype=torch.int64), failed)


class ImageStream:
    """Batches of images from a list of files, in the order given, with every unreadable file reported.

    Args:
        paths: the image files.
        transform: an ``H x W x 3`` uint8 array to a ``C x H x W`` float tensor.
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0: read in this process).
        scan: ``fast``, ``full`` or ``off``: how files are checked before streaming
            (:func:`datamodules.image_io.scan_images`); with ``off`` failures are still found while reading.

    Attributes:
        unreadable: the files left out so far, scan failures first, then those found while streaming.
    """

    def __init__(
        self,
        paths: Sequence[str],
        transform: Transform,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        scan: str = "fast",
    ) -> None:
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        self.paths = [str(p) for p in paths]
        reasons = scan_images(self.paths, mode=scan)
        self.unreadable = [UnreadableInput(p, reasons[p], "scan") for p in self.paths if p in reasons]
        self.positions = [i for i, p in enumerate(self.paths) if p not in reasons]
        self.transform = transform
        self.batch_size = batch_size
        self.num_workers = num_workers

    def __len__(self) -> int:
        """Batches to come (at most: a batch whose files all fail to load is skipped)."""
        return math.ceil(len(self.positions) / self.batch_size)

    def __iter__(self) -> Iterator[ImageBatch]:
        loader = DataLoader(
            ImageFiles(self.paths, self.positions, self.transform),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=_Collate(self.paths),
        )
        for batch in loader:
            self.unreadable.extend(batch.failed)
            if batch.images is not None:
                yield batch
