"""Metrics per slice of the data (a camera, an altitude band, the darkest images) and the shortcut check."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from callbacks import rendering
from callbacks.epoch_outputs import EpochOutputs
from callbacks.review import REVIEW_SPLITS, SplitReview
from evaluation.figures import figure_to_array
from evaluation.shortcuts import SHORTCUT_COLUMNS, shortcut_check
from evaluation.slice_properties import PROPERTY_COLUMNS, image_property_table
from evaluation.slices import SLICE_COLUMNS, slice_metrics, slices_figure, slices_markdown
from runs.folder import RunFolder

log = logging.getLogger(__name__)
TARGET, PREDICTION = "__target__", "__prediction__"  # names no manifest column takes


class SliceMetrics(SplitReview):
    """Accuracy, macro-F1, count and a 95% Wilson interval per slice, each validation epoch and at test,
    and, once per fit, whether a metadata column alone predicts the label.

    The slices: every metadata column of a CSV manifest (camera, altitude, time of day, ...;
    numeric columns cut at their quantiles into ``bins`` bins) and the binned image properties
    (brightness, contrast, sharpness, size; :mod:`evaluation.slice_properties`, measured once
    per sample per run). A slice is **flagged** when its whole interval lies below the overall
    accuracy (:mod:`evaluation.slices`). Outputs: ``reports/<split>/slices.csv`` (every slice,
    worst first), a text table (``<split>/slices``) and a bar chart (``<split>/slices``) in
    TensorBoard, and the worst flagged test slice in the end-of-run summary.

    The shortcut check (``shortcuts``) runs when fitting starts, on the training split's labels
    and metadata (:mod:`evaluation.shortcuts`: a cross-validated classifier per column against
    the majority rate). A column that predicts the label is named in a warning, in the end-of-run
    summary, in TensorBoard (``train/shortcuts``) and in ``reports/shortcuts.csv``: the model may
    learn the camera, not the object.

    Args:
        every_n_epochs: validation slices every n epochs (0: only validate/test runs).
        bins: quantile bins for numeric columns and image properties.
        max_categories: most slices a text column gives; rarer values are grouped.
        properties: image properties to slice by (``brightness``, ``contrast``, ``sharpness``,
            ``size``); empty: metadata only.
        max_rows: slices shown in the text table and the chart (every slice goes to the CSV).
        shortcuts: run the shortcut check when fitting starts.
        shortcut_min_lift: the lift over the majority rate from which a column is warned about.
        shortcut_alpha: the largest p-value at which a column is warned about.
        workers: threads that read the images for their properties.
        splits: which of ``val`` and ``test`` to slice.

    Raises:
        ValueError: an argument is out of range or names an unknown property.

    Example::

        trainer = Trainer(callbacks=[SampleOutputs(), SliceMetrics(properties=["brightness"])])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        bins: int = 4,
        max_categories: int = 20,
        properties: Sequence[str] = tuple(PROPERTY_COLUMNS),
        max_rows: int = 20,
        shortcuts: bool = True,
        shortcut_min_lift: float = 0.2,
        shortcut_alpha: float = 0.001,
        workers: int = 4,
        splits: tuple[str, ...] | list[str] = REVIEW_SPLITS,
    ) -> None:
        super().__init__(every_n_epochs, splits)
        unknown = sorted(set(properties) - set(PROPERTY_COLUMNS))
        if unknown:
            raise ValueError(f"SliceMetrics(properties={list(properties)}): unknown {unknown}; known are "
                             f"{list(PROPERTY_COLUMNS)}.")  # fmt: skip
        if bins < 2 or max_categories < 2 or max_rows < 1 or workers < 1:
            raise ValueError(
                f"SliceMetrics(bins={bins}, max_categories={max_categories}, max_rows={max_rows}, workers={workers}): "
                "need bins >= 2, max_categories >= 2, max_rows >= 1 and workers >= 1."
            )
        if not 0 < shortcut_min_lift <= 1 or not 0 < shortcut_alpha < 1:
            raise ValueError(
                f"SliceMetrics(shortcut_min_lift={shortcut_min_lift}, shortcut_alpha={shortcut_alpha}): need "
                "0 < shortcut_min_lift <= 1 and 0 < shortcut_alpha < 1."
            )
        self.bins, self.max_categories, self.max_rows = bins, max_categories, max_rows
        self.properties = tuple(properties)
        self.shortcuts, self.shortcut_min_lift, self.shortcut_alpha = shortcuts, shortcut_min_lift, shortcut_alpha
        self.workers = workers
        self._measured: dict[str, pd.DataFrame] = {}  # split -> metadata and image properties, in index order
        self._summary: dict[str, tuple[str, str]] = {}

    # ------------------------------------------------------------------ the per-sample table
    @staticmethod
    def metadata(samples) -> pd.DataFrame:
        """The metadata columns of ``samples``, as text ("" = missing), one row per sample in index order."""
        keys = sorted({key for sample in samples for key in sample.meta})
        return pd.DataFrame({key: [sample.meta.get(key, "") for sample in samples] for key in keys}, dtype=object)

    def columns_of(self, trainer: Trainer, split: str) -> pd.DataFrame:
        """Metadata and image properties of every sample of ``split`` in index order; measured on first
        use and kept for the run."""
        if split not in self._measured:
            samples = trainer.datamodule.samples[split]
            measured = image_property_table([s.path for s in samples], self.properties, workers=self.workers)
            self._measured[split] = pd.concat([self.metadata(samples), measured], axis=1)
        return self._measured[split]

    def review(self, trainer: Trainer, pl_module: LightningModule, outputs: EpochOutputs, step: int) -> None:
        split = outputs.split
        frame = self.columns_of(trainer, split).iloc[outputs.index].reset_index(drop=True)
        columns = list(frame.columns)
        frame[TARGET], frame[PREDICTION] = outputs.target, outputs.pred
        names = trainer.datamodule.class_names
        report = slice_metrics(
            frame,
            target=TARGET,
            prediction=PREDICTION,
            columns=columns,
            num_classes=len(names),
            bins=self.bins,
            max_categories=self.max_categories,
        )
        table = report.table.assign(slice=report.table["slice"].astype(str))
        RunFolder.of(trainer).write_records(
            f"{split}/slices.csv", SLICE_COLUMNS, [_rounded(r) for r in table.to_dict(orient="records")]
        )
        title = f"{split} epoch {step}"
        rendering.log_text(trainer, f"{split}/slices", f"**{title}.** " + slices_markdown(report, self.max_rows), step)
        if len(report.table):
            figure = slices_figure(
                report,
                max_bars=self.max_rows,
                title=f"{title}: the worst {min(self.max_rows, len(report.table))} of {len(report.table)} slices "
                "(red: interval below overall)",
            )
            rendering.log_image(trainer, f"{split}/slices", figure_to_array(figure), step)
        worst = report.worst_flagged()
        if worst is None:
            self._summary[split] = (
                "slices",
                f"{split}: no slice below the overall accuracy {report.overall_accuracy:.1%}",
            )
        else:
            self._summary[split] = (
                "slices",
                f"{split}: {len(report.flagged)} of {len(report.table)} below the overall accuracy "
                f"{report.overall_accuracy:.1%}; worst {worst['column']} = {worst['slice']} "
                f"{worst['accuracy']:.1%} (n={worst['count']}), see reports/{split}/slices.csv",
            )

    # ------------------------------------------------------------------ the shortcut check
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.shortcuts and trainer.is_global_zero:
            self.check_shortcuts(trainer)

    def check_shortcuts(self, trainer: Trainer) -> None:
        """Runs the shortcut check on the training split; warns about the columns that predict the label."""
        samples = trainer.datamodule.samples.get("train", [])
        frame = self.metadata(samples)
        if frame.empty or not len(frame.columns):
            return  # no metadata: nothing a shortcut could come from
        columns = list(frame.columns)
        frame[TARGET] = trainer.datamodule.targets("train")
        names = trainer.datamodule.class_names
        report = shortcut_check(
            frame,
            target=TARGET,
            columns=columns,
            class_names=names,
            min_lift=self.shortcut_min_lift,
            alpha=self.shortcut_alpha,
        )
        RunFolder.of(trainer).write_records(
            "shortcuts.csv", SHORTCUT_COLUMNS, [_rounded(r) for r in report.table.to_dict(orient="records")]
        )
        header = ["column", "accuracy", "majority rate", "lift", "p-value", "warn", "strongest value"]
        rows = [
            [r.column, f"{r.accuracy:.1%}", f"{r.majority_rate:.1%}", f"{r.lift:.2f}", f"{r.p_value:.2g}",
             "**yes**" if r.warn else "", r.strongest]
            for r in report.table.itertuples(index=False)
        ]  # fmt: skip
        text = (
            f"**Shortcut check** on {len(frame)} training samples: how well each metadata column alone predicts "
            "the label (cross-validated) against always guessing the most common class.\n\n"
            + ("\n\n".join(f"**Warning**: {m}" for m in report.messages) + "\n\n" if report.messages else "")
            + rendering.markdown_table(header, rows)
            + (
                "\n\nNot checked: " + "; ".join(f"`{c}` ({why})" for c, why in report.skipped.items())
                if report.skipped
                else ""
            )
        )
        rendering.log_text(trainer, "train/shortcuts", text, 0)
        for message in report.messages:
            log.warning(message)
        if report.warned:
            self._summary["shortcuts"] = (
                "shortcuts",
                f"metadata that predicts the label: {', '.join(report.warned)} (see reports/shortcuts.csv)",
            )
        else:
            self._summary["shortcuts"] = ("shortcuts", f"no metadata column predicts the label ({len(rows)} checked)")

    def summary_rows(self) -> list[tuple[str, str]]:
        """Lines for the end-of-run summary: the shortcut check, and the test split's worst slice."""
        return [self._summary[key] for key in ("shortcuts", "test") if key in self._summary]


def _rounded(record: dict) -> dict:
    return {k: round(float(v), 6) if isinstance(v, float | np.floating) else v for k, v in record.items()}
