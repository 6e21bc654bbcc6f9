"""Running the robustness grid: a model over every (corruption type, severity) cell of a split.

A plain no-grad loop over one DataLoader, not Lightning's test loop. The grid is 14 types x 5
severities + clean = 71 evaluations of the same images: through the Trainer each would start
its loader workers anew, log ``test/acc`` over the run's own, and feed every review panel
again. Here each item of one dataset is a (sample, cell) pair, in sample-major order, so a
worker decodes and resizes each file once and corrupts that copy for every cell (it keeps the
last decoded sample), one pool of workers serves the whole grid, and each forward pass
batches several cells.

What each image goes through is the checkpoint's evaluation transform (resize, centre crop,
normalisation) with the corruption inserted before the normalisation, as
:func:`datamodules.corruptions.with_corruption` does: the corruption sees the uint8 image at
the model's input size. Each corrupted image is deterministic: its seed comes from the
sample's stable index and the corruption type (:func:`datamodules.corruptions.sample_seed`),
whatever the worker count, batch size or DDP rank.

The caller picks the samples (a stratified subset, one DDP rank's share) and sums the
confusion counts across ranks; :func:`grid_results` turns them into
:class:`~evaluation.robustness.GridResult` cells.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.corruptions import SEVERITIES, CorruptionSuite, sample_seed
from datamodules.dataset import collate_skipping_failures
from datamodules.image_io import UnreadableImageError, read_rgb
from evaluation.robustness import CLEAN, GridResult

Cell = tuple[str, int]  # (corruption type or "clean", severity; 0 for clean)


def grid_cells(suite: CorruptionSuite, kinds: Sequence[str] | None = None) -> list[Cell]:
    """The clean cell, then every severity of every type of ``suite`` (or of ``kinds``), in the reference's order."""
    kinds = list(suite.kinds if kinds is None else kinds)
    repeated = sorted({k for k in kinds if kinds.count(k) > 1})
    if repeated:
        raise ValueError(f"robustness.kinds lists {repeated} more than once; each type is scored once")
    for kind in kinds:
        suite.params(kind, SEVERITIES[0])  # an unknown or unconfigured type fails here, not in a worker
    return [(CLEAN, 0), *((kind, severity) for kind in kinds for severity in SEVERITIES)]


def split_at_normalize(eval_transform: A.Compose) -> tuple[A.Compose, A.Compose]:
    """``eval_transform`` cut just before its ``Normalize``: (resize and crop, normalise and to-tensor).

    Raises:
        ValueError: the pipeline has no ``Normalize`` step.
    """
    steps = list(eval_transform.transforms)
    at = next((i for i, step in enumerate(steps) if isinstance(step, A.Normalize)), None)
    if at is None:
        names = [type(step).__name__ for step in steps]
        raise ValueError(f"the eval pipeline has no Normalize step to insert the corruption before: {names}")
    return A.Compose(steps[:at], strict=True), A.Compose(steps[at:], strict=True)


@dataclass(frozen=True)
class GridSamples:
    """The images to score: file paths, their stable indices within the split (the corruption seeds
    derive from them) and their class ids."""

    paths: Sequence[str]
    indices: np.ndarray
    targets: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.paths) == len(self.indices) == len(self.targets):
            raise ValueError(
                f"GridSamples: {len(self.paths)} paths, {len(self.indices)} indices and {len(self.targets)} targets"
            )

    def __len__(self) -> int:
        return len(self.paths)


class GridDataset(Dataset):
    """Every (sample, cell) pair, sample-major: item ``k`` is sample ``k // len(cells)`` under cell ``k % len(cells)``.

    Returns ``{"image", "target", "index", "cell", "seconds"}`` (``seconds``: time spent corrupting),
    or ``{"index", "error"}`` for a file that cannot be read.
    """

    def __init__(
        self,
        samples: GridSamples,
        cells: Sequence[Cell],
        head: A.Compose,
        tail: A.Compose,
        suite: CorruptionSuite,
        seed,
    ) -> None:
        self.samples, self.cells, self.head, self.tail, self.suite, self.seed = (
            samples,
            list(cells),
            head,
            tail,
            suite,
            seed,
        )
        self._kept: tuple[int, np.ndarray | str] | None = None  # the last decoded sample (per worker)

    def __len__(self) -> int:
        return len(self.samples) * len(self.cells)

    def _prepared(self, position: int) -> np.ndarray | str:
        if self._kept is None or self._kept[0] != position:
            try:
                image = self.head(image=read_rgb(self.samples.paths[position]))["image"]
            except UnreadableImageError as err:
                image = str(err)
            self._kept = (position, image)
        return self._kept[1]

    def __getitem__(self, item: int) -> dict:
        position, cell = divmod(item, len(self.cells))
        index = int(self.samples.indices[position])
        image = self._prepared(position)
        if isinstance(image, str):
            return {"index": index, "error": image}
        kind, severity = self.cells[cell]
        seconds = 0.0
        if kind != CLEAN:
            start = time.perf_counter()
            image = self.suite.apply(image, kind, severity, sample_seed(index, kind, self.seed))
            seconds = time.perf_counter() - start
        return {
            "image": self.tail(image=image)["image"],
            "target": int(self.samples.targets[position]),
            "index": index,
            "cell": cell,
            "seconds": seconds,
        }


@dataclass
class GridScores:
    """Raw counts of one grid run (one rank's share, or summed over ranks).

    Attributes:
        cells: the (type, severity) cells, in order.
        confusion: ``cells x C x C`` counts, true class down, predicted class across.
        corrupt_seconds: per cell, time spent corrupting (summed over workers).
        forward_seconds: per cell, its share of the forward passes' time.
        failed: ``{index: reason}`` of samples whose file could not be read (left out of every cell).
        wall_seconds: wall time of the whole run.
    """

    cells: list[Cell]
    confusion: np.ndarray
    corrupt_seconds: np.ndarray
    forward_seconds: np.ndarray
    failed: dict[int, str]
    wall_seconds: float


def score_grid(
    model: Callable[[torch.Tensor], torch.Tensor],
    samples: GridSamples,
    eval_transform: A.Compose,
    suite: CorruptionSuite,
    *,
    num_classes: int,
    cells: Sequence[Cell] | None = None,
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
    convert_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> GridScores:
    """Scores ``model`` on ``samples`` under every cell; no gradients, the model's mode untouched.

    Args:
        model: maps a normalised ``B x 3 x H x W`` batch to ``B x C`` logits; in eval mode.
        samples: the images to score.
        eval_transform: the checkpoint's evaluation pipeline (it must end with ``Normalize`` and
            the tensor conversion).
        suite: the corruption parameters.
        num_classes: number of classes ``C``.
        cells: which cells; :func:`grid_cells` of ``suite`` when ``None``.
        seed: the grid's seed (``robustness.seed``), mixed with each sample's index.
        batch_size: items per forward pass.
        num_workers: DataLoader worker processes that read and corrupt the images.
        device: where the model is.
        forward_context: a context for the forward passes (mixed precision, for instance).
        convert_input: casts a float32 batch to the model's precision (Lightning's
            ``precision_plugin.convert_input``: 16-true, bf16-true and 64-true models need it).
    """
    cells = list(cells if cells is not None else grid_cells(suite))
    head, tail = split_at_normalize(eval_transform)
    dataset = GridDataset(samples, cells, head, tail, suite, seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_skipping_failures,
        pin_memory=torch.device(device).type == "cuda",
    )
    confusion = np.zeros((len(cells), num_classes, num_classes), dtype=np.int64)
    corrupt_seconds = np.zeros(len(cells))
    forward_seconds = np.zeros(len(cells))
    failed: dict[int, str] = {}
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            failed.update(batch["failed"])
            if not len(batch["index"]):
                continue
            cell = batch["cell"].numpy()
            tick = time.perf_counter()
            images = batch["image"].to(device, non_blocking=True)
            with forward_context():
                logits = model(convert_input(images) if convert_input is not None else images)
            predicted = logits.argmax(dim=1).cpu().numpy()
            spent = time.perf_counter() - tick
            np.add.at(confusion, (cell, batch["target"].numpy(), predicted), 1)
            np.add.at(corrupt_seconds, cell, batch["seconds"].numpy())
            np.add.at(forward_seconds, cell, spent / len(cell))
    return GridScores(cells, confusion, corrupt_seconds, forward_seconds, failed, time.perf_counter() - start)


def macro_f1(confusion: np.ndarray) -> float:
    """Macro-F1 from a ``C x C`` confusion matrix, over the classes that occur as label or prediction
    (as torchmetrics' ``multiclass_f1_score(average="macro")`` averages)."""
    tp = np.diag(confusion).astype(float)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    present = (tp + fp + fn) > 0
    if not present.any():
        return float("nan")
    return float(np.mean(2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])))


def grid_results(scores: GridScores) -> list[GridResult]:
    """One :class:`~evaluation.robustness.GridResult` per cell (``seconds``: corrupting plus the forward passes)."""
    results = []
    for i, (kind, severity) in enumerate(scores.cells):
        matrix = scores.confusion[i]
        count = int(matrix.sum())
        results.append(
            GridResult(
                corruption=kind,
                severity=severity,
                samples=count,
                accuracy=float(np.trace(matrix) / count) if count else float("nan"),
                macro_f1=macro_f1(matrix),
                seconds=float(scores.corrupt_seconds[i] + scores.forward_seconds[i]),
            )
        )
    return results
