"""The robustness grid as a test-time callback: accuracy under every corruption type and severity."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from callbacks import rendering
from callbacks.epoch_outputs import stratified_subset
from callbacks.outputs_reader import check_datamodule
from datamodules.corruptions import CorruptionSuite
from evaluation.figures import figure_to_array
from evaluation.robustness import (
    TABLE_COLUMNS,
    corruption_errors,
    heatmap_figure,
    read_robustness_table,
    robustness_summary,
    robustness_table,
)
from evaluation.robustness_grid import GridSamples, GridScores, grid_cells, grid_results, score_grid
from runs.errors import ConfigError
from runs.folder import RunFolder

log = logging.getLogger(__name__)
SPLITS = ("test", "val")
ERROR_COLUMNS = ("corruption", "family", "severities", "mean_accuracy", "mean_error", "ce", "relative_ce")


def suite_digest(suite: CorruptionSuite) -> str:
    """A short fingerprint of the parameters: CE and mCE compare two runs only under the same ones."""
    text = json.dumps({"reference_size": suite.reference_size, "corruptions": suite.corruptions}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RobustnessGrid(Callback):
    """Scores the model under the ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019), 5 severities
    each, on the test split when it is evaluated (``trainer.test``: after training, or in ``eval.py``).

    Every image is the split's own file through the model's evaluation transform, corrupted at the
    model's input size (:mod:`evaluation.robustness_grid`: one no-grad pass, the loader's workers
    corrupting in parallel, each corrupted image deterministic). Writes ``reports/robustness.csv``
    (accuracy and macro-F1 per type and severity, clean first), ``reports/corruption_errors.csv``
    (per type: mean accuracy, CE and relative CE against ``baseline``), ``reports/robustness.json``
    (mean corrupted accuracy, mCE, relative mCE, time taken, the parameters' fingerprint), and to
    TensorBoard a type x severity heatmap (``<split>/robustness_heatmap``), the CE table as text
    and the headline numbers as scalars.

    Args:
        suite: the corruption types and their parameters per severity (``conf/robustness/``).
        seed: mixed with each sample's index into its corruption seed, and seeds the subset.
        max_samples: images per cell, a stratified subset of the split; ``None``: all of them.
        baseline: a run folder (its ``reports/robustness.csv``) or such a CSV, scored with the
            same parameters: CE, mCE and relative mCE are taken against it; ``None``: none.
        split: ``test``; ``val`` scores the validation split when ``trainer.validate`` runs (what
            ``eval.py`` does for data without a test split); ``None``: test, or val for data
            without a test split.
        batch_size: images per forward pass; ``None``: the data module's evaluation batch size.
        num_workers: loader processes that read and corrupt; ``None``: ``data.num_workers``.
        kinds: the types to run, a subset of the suite's; ``None``: all of them.

    Raises:
        ValueError: an argument is out of range or names an unknown type.
        ConfigError: (in ``setup``) the baseline cannot be read or was scored with other parameters.

    Example::

        trainer = Trainer(callbacks=[RobustnessGrid(load_suite("conf/robustness/cifar.yaml"), max_samples=500)])
        trainer.test(model, datamodule=datamodule)   # reports/robustness.csv
    """

    def __init__(
        self,
        suite: CorruptionSuite,
        seed: int = 0,
        max_samples: int | None = 1000,
        baseline: str | None = None,
        split: str | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
        kinds: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(suite, CorruptionSuite):
            raise ValueError(f"RobustnessGrid(suite=...) takes a CorruptionSuite, got {type(suite).__name__}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"robustness.max_samples={max_samples} must be >= 1, or null for the whole split.")
        if split is not None and split not in SPLITS:
            raise ValueError(f"robustness.split={split!r}: allowed are {list(SPLITS)} or null.")
        for name, value in (("batch_size", batch_size), ("num_workers", num_workers)):
            if value is not None and value < (1 if name == "batch_size" else 0):
                raise ValueError(f"robustness.{name}={value} is out of range.")
        self.suite, self.seed, self.max_samples = suite, int(seed), max_samples
        self.baseline, self.split = baseline, split
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cells = grid_cells(suite, kinds)  # checks the kinds now
        self.digest = suite_digest(suite)
        self._baseline_table = None
        self._summary: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ checks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_datamodule(trainer, self)
        if self.baseline:
            self._baseline_table = self._read_baseline(Path(self.baseline).expanduser())
        side = min(trainer.datamodule.preprocessing.input_size)
        if trainer.is_global_zero and not 0.5 <= side / self.suite.reference_size <= 4:
            better = "robustness=cifar" if side < self.suite.reference_size else "robustness=default"
            log.warning(
                f"the corruption parameters are set for {self.suite.reference_size} px images and this model takes "
                f"{side} px: pixel sizes are scaled, but the strengths (noise, JPEG quality) are not. {better} is "
                "tuned for inputs of this size."
            )
        samples = trainer.datamodule.samples
        if stage == "fit" and self.split != "val" and "test" not in samples and trainer.is_global_zero:
            log.warning(
                "the robustness grid runs when the test split is evaluated, and this data has none: give it one "
                "(data.test_fraction=0.1), or score the validation split afterwards with "
                "`python eval.py ckpt_path=<run>/checkpoints/best.ckpt robustness=...`."
            )

    def _read_baseline(self, path: Path):
        csv = path / "reports" / "robustness.csv" if path.is_dir() else path
        if not csv.is_file():
            raise ConfigError(
                f"robustness.baseline={self.baseline!r}: no robustness table at {csv}. Give a run folder whose "
                "reports/robustness.csv exists (score it first with eval.py ... robustness=...), or the CSV itself."
            )
        try:
            table = read_robustness_table(csv)
        except (ValueError, OSError) as err:
            raise ConfigError(f"robustness.baseline={self.baseline!r}: {err}") from None
        digest = _saved_digest(csv.with_name("robustness.json"))
        if digest is not None and digest != self.digest:
            raise ConfigError(
                f"robustness.baseline={self.baseline!r} was scored with other corruption parameters (fingerprint "
                f"{digest}, this run's {self.digest}): CE compares runs under the same ones. Score both with the "
                "same robustness config (robustness=default or robustness=cifar)."
            )
        return table

    # ------------------------------------------------------------------ when
    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.split in (None, "test"):
            self.run(trainer, pl_module, "test")

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != "validate" or trainer.sanity_checking:
            return
        if self.split == "val" or (self.split is None and "test" not in trainer.datamodule.samples):
            self.run(trainer, pl_module, "val")

    # ------------------------------------------------------------------ the grid
    def run(self, trainer: Trainer, pl_module: LightningModule, split: str) -> GridScores:
        """Scores ``split``; every rank scores its share and the counts are summed (a collective under DDP)."""
        datamodule = trainer.datamodule
        targets = datamodule.targets(split)
        chosen = stratified_subset(targets, self.max_samples or len(targets), self.seed)
        mine = chosen[trainer.global_rank :: trainer.world_size]
        paths = [datamodule.samples[split][i].path for i in mine]
        loader = datamodule.loader
        was_training = pl_module.training
        pl_module.eval()
        try:
            scores = score_grid(
                pl_module,
                GridSamples(paths, mine, targets[mine]),
                datamodule.eval_transform(),
                self.suite,
                num_classes=len(datamodule.class_names),
                cells=self.cells,
                seed=self.seed,
                batch_size=self.batch_size or loader.eval_batch_size or 2 * loader.batch_size,
                num_workers=loader.num_workers if self.num_workers is None else self.num_workers,
                device=pl_module.device,
                forward_context=trainer.precision_plugin.forward_context,
                convert_input=trainer.precision_plugin.convert_input,
            )
        finally:
            pl_module.train(was_training)
        if trainer.world_size > 1:
            scores = self._sum_over_ranks(trainer, pl_module, scores)
        if trainer.is_global_zero:
            self._report(trainer, split, scores)
        return scores

    @staticmethod
    def _sum_over_ranks(trainer: Trainer, pl_module: LightningModule, scores: GridScores) -> GridScores:
        device = pl_module.device
        confusion = trainer.strategy.reduce(torch.from_numpy(scores.confusion).to(device), reduce_op="sum")
        seconds = torch.from_numpy(np.stack([scores.corrupt_seconds, scores.forward_seconds])).to(device)
        seconds = trainer.strategy.reduce(seconds, reduce_op="sum").cpu().numpy()
        wall = trainer.strategy.reduce(torch.tensor(scores.wall_seconds, device=device), reduce_op="max")
        parts: list = [None] * trainer.world_size
        torch.distributed.all_gather_object(parts, scores.failed)  # a few unreadable files at most
        failed = {index: reason for part in parts for index, reason in part.items()}
        return GridScores(scores.cells, confusion.cpu().numpy(), seconds[0], seconds[1], failed, float(wall))

    # ------------------------------------------------------------------ outputs
    def _report(self, trainer: Trainer, split: str, scores: GridScores) -> None:
        table = robustness_table(grid_results(scores))
        baseline = self._baseline_table
        errors = corruption_errors(table, baseline)
        summary = robustness_summary(table, baseline)
        images = int(table["samples"].max()) if len(table) else 0
        folder = RunFolder.of(trainer)
        folder.write_records("robustness.csv", TABLE_COLUMNS, _rounded(table.to_dict(orient="records")))
        folder.write_records("corruption_errors.csv", ERROR_COLUMNS, _rounded(errors.to_dict(orient="records")))
        record = {
            "split": split,
            "images_per_cell": images,
            "cells": len(scores.cells),
            "seconds": round(scores.wall_seconds, 2),
            "unreadable": len(scores.failed),
            "seed": self.seed,
            "suite_digest": self.digest,
            "reference_size": self.suite.reference_size,
            "baseline": str(self.baseline) if self.baseline else None,
            **summary,
        }
        folder.write_json("robustness.json", record)

        step = trainer.current_epoch
        title = f"{split}: accuracy under corruption (%), {images} images per cell"
        if summary["clean_accuracy"] is not None:
            title += f"; clean {100 * summary['clean_accuracy']:.1f}"
        rendering.log_image(
            trainer, f"{split}/robustness_heatmap", figure_to_array(heatmap_figure(table, title=title)), step
        )
        rendering.log_text(trainer, f"{split}/robustness", self._markdown(errors, record), step)
        writer = rendering.tensorboard(trainer)
        if writer is not None:
            for key in ("clean_accuracy", "mean_corrupted_accuracy", "mce", "relative_mce"):
                if summary.get(key) is not None:
                    writer.add_scalar(f"{split}/robustness/{key}", summary[key], step)
        headline = f"mean corrupted accuracy {_pct(summary['mean_corrupted_accuracy'])} over {summary['types']} types"
        if summary["mce"] is not None:
            headline += f", mCE {summary['mce']:.3f}, relative mCE {_num(summary['relative_mce'])} against the baseline"
        self._summary = [
            (
                "robustness",
                f"{headline} ({len(scores.cells)} cells x {images} {split} images, {scores.wall_seconds:.0f} s)",
            )
        ]

    @staticmethod
    def _markdown(errors, record: dict[str, Any]) -> str:
        against = record["baseline"]
        if against:
            scores = (
                f"mCE {_num(record['mce'])}, relative mCE {_num(record['relative_mce'])} against {against} "
                "(below 1: more robust than the baseline)"
            )
        else:
            scores = "no baseline given (`robustness.baseline=<run>` for CE and mCE)"
        lines = [
            f"**{record['split']}**: clean accuracy {_pct(record['clean_accuracy'])}, mean corrupted accuracy "
            f"{_pct(record['mean_corrupted_accuracy'])}; {scores}. {record['cells']} cells x "
            f"{record['images_per_cell']} images in {record['seconds']:.0f} s.",
            "",
            "| corruption | family | mean accuracy over the severities |" + (" CE | relative CE |" if against else ""),
            "|---|---|---|" + ("---|---|" if against else ""),
        ]
        for row in errors.itertuples(index=False):
            line = f"| {row.corruption.replace('_', ' ')} | {row.family} | {_pct(row.mean_accuracy)} |"
            lines.append(line + (f" {_num(row.ce)} | {_num(row.relative_ce)} |" if against else ""))
        return "\n".join(lines)

    def summary_rows(self) -> list[tuple[str, str]]:
        """Lines for the end-of-run summary (global rank zero, after the grid ran)."""
        return list(self._summary)


def _saved_digest(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text()).get("suite_digest")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _rounded(records: list[dict]) -> list[dict]:
    return [{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in records]


def _pct(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


def _num(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"
