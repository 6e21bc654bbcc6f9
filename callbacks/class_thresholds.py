"""Per-class confidence thresholds for prediction, fitted at the end of training on the validation
outputs of the best checkpoint's epoch and checked on the test split.

No extra pass over the data: the validation logits of the epoch whose checkpoint is the run's
best are already gathered by the collector (``SampleOutputs.best("val")``), and the test logits
by the test run that follows fitting. The probabilities are calibrated first with the run's
temperature: ``reports/calibration.json`` (key ``temperature``), written at the end of fitting by
the calibration callback, which therefore comes before this one in the callbacks config; without
the file the temperature is 1. ``predict.py`` applies the same temperature, so a threshold means
the same probability in both places.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from scipy.special import softmax
from typing_extensions import override

from callbacks import rendering
from callbacks.calibration import REPORT as CALIBRATION_FILE
from callbacks.outputs_reader import Need, OutputsReader
from inference.run_files import THRESHOLDS, THRESHOLDS_SUMMARY
from inference.thresholds import ThresholdReport, evaluate_thresholds, fit_thresholds, write_thresholds
from runs.folder import RunFolder

# Named once, where predict.py and export.py look for them (a run's reports/ folder).
THRESHOLDS_FILE, SUMMARY_FILE = THRESHOLDS.name, THRESHOLDS_SUMMARY.name


def run_temperature(folder: RunFolder) -> float | None:
    """The temperature in ``reports/calibration.json``; ``None`` when there is no such file.

    Raises:
        ValueError: the file holds no positive, finite ``temperature``.
    """
    path = folder.reports / CALIBRATION_FILE
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("temperature")
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{path}: temperature must be a positive number, got {value!r}")
    return float(value)


class ClassThresholds(OutputsReader):
    """Chooses each class's lowest confidence threshold that reaches ``target_precision`` on validation
    (:func:`inference.thresholds.fit_thresholds`), and reports what it gives on test.

    At the end of fitting it writes ``reports/thresholds.csv`` (what ``predict.py`` and ``export.py``
    read) and ``reports/thresholds.json`` (target, temperature, the checkpoint and its epoch,
    coverage). When the test split is evaluated afterwards, both files get the test figures:
    coverage (the share of test images that get a label) and the precision of those labels with a
    95% Wilson interval, per class and overall; they are also logged as ``test/thresholds_coverage``,
    ``test/thresholds_precision`` (``_low``, ``_high``; not logged when nothing is labelled) and
    shown as a table in TensorBoard's Text tab (``test/class_thresholds``). A class that never
    reaches the target with ``min_support`` validation samples gets no threshold and is never
    emitted.

    Args:
        target_precision: the precision each emitted class must reach on validation, in (0, 1].
        min_support: the fewest validation samples a threshold may rest on.
        require_lower_bound: ask the 95% lower bound of the validation precision, not the point
            estimate, to reach the target (fewer labels, a precision that holds with high probability).

    Raises:
        ValueError: ``target_precision`` outside (0, 1] or ``min_support < 1``.
        ConfigError: (in ``setup``) the callbacks have no ``SampleOutputs`` collector.

    Example::

        trainer = Trainer(callbacks=[SampleOutputs(), ModelCheckpoint(monitor="val/acc", mode="max"),
                                     ClassThresholds(target_precision=0.95)])
    """

    def __init__(self, target_precision: float = 0.95, min_support: int = 20, require_lower_bound: bool = False):
        if not 0.0 < target_precision <= 1.0:
            raise ValueError(
                f"ClassThresholds(target_precision={target_precision}) must be in (0, 1], e.g. 0.95: "
                "the precision every emitted class must reach."
            )
        if not isinstance(min_support, int) or min_support < 1:
            raise ValueError(f"ClassThresholds(min_support={min_support}) must be a positive integer.")
        self.target_precision = float(target_precision)
        self.min_support = min_support
        self.require_lower_bound = bool(require_lower_bound)
        self.report: ThresholdReport | None = None
        self.temperature = 1.0
        self.source: dict[str, Any] = {}

    @override
    def needs(self, trainer: Trainer, stage: str) -> list[Need]:
        return {"fit": [Need("val")], "test": [Need("test")]}.get(stage, [])

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.outputs is None:
            return
        val, path = self.best_checkpoint_outputs(trainer)
        if val is None or val.logits is None or not path:
            rank_zero_warn(
                "ClassThresholds: no validation outputs of a best checkpoint (no ModelCheckpoint with a monitor, "
                "or the best epoch came before a resume); reports/thresholds.csv is not written."
            )
            return
        folder = RunFolder.of(trainer)
        # Rank zero reads the file the calibration callback wrote there; every rank then fits the same thresholds.
        temperature = run_temperature(folder) if trainer.is_global_zero else None
        temperature = trainer.strategy.broadcast(temperature, src=0)
        self.temperature = temperature or 1.0
        probs = softmax(val.logits.astype(np.float64) / self.temperature, axis=1)
        self.report = fit_thresholds(
            probs,
            val.target,
            trainer.datamodule.class_names,
            target_precision=self.target_precision,
            min_support=self.min_support,
            require_lower_bound=self.require_lower_bound,
        )
        emitted = sum(c.val_emitted for c in self.report.classes)
        self.source = {
            "checkpoint": path,
            "epoch": int(val.epoch),
            "temperature": self.temperature,
            "temperature_from": f"reports/{CALIBRATION_FILE}" if temperature else "none (1.0)",
            "val_samples": len(val),
            "val_coverage": emitted / max(1, len(val)),
        }
        if trainer.is_global_zero:
            self._write(folder, self.report)

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.report is None or self.outputs is None:
            return
        test = self.outputs.gather(trainer, pl_module, "test")  # collective: every rank
        if test is None or not len(test):
            return
        probs = softmax(test.logits.astype(np.float64) / self.temperature, axis=1)
        report = evaluate_thresholds(self.report, probs, test.target)
        logged = {"coverage": report.coverage}
        if report.test_emitted:  # a precision of nothing emitted is undefined, not a number to log
            logged.update(
                precision=report.precision, precision_low=report.precision_low, precision_high=report.precision_high
            )
        for name, value in logged.items():
            # The same value on every rank (gathered outputs): no reduction needed.
            pl_module.log(f"test/thresholds_{name}", float(value))
        if trainer.is_global_zero:
            self._write(RunFolder.of(trainer), report)
            self._log_table(trainer, report)

    def _write(self, folder: RunFolder, report: ThresholdReport) -> None:
        write_thresholds(folder.report(THRESHOLDS_FILE), report)
        summary = {
            "target_precision": report.target_precision,
            "min_support": report.min_support,
            "require_lower_bound": self.require_lower_bound,
            **self.source,
            "unreached_classes": report.unreached(),
        }
        if report.test_count:
            summary.update(
                test_samples=report.test_count,
                test_labelled=report.test_emitted,
                test_coverage=report.coverage,
                test_precision=_finite(report.precision),
                test_precision_95ci=[_finite(report.precision_low), _finite(report.precision_high)],
            )
        folder.write_json(SUMMARY_FILE, summary)

    def _log_table(self, trainer: Trainer, report: ThresholdReport) -> None:
        rows = [
            (
                c.class_name,
                f"{c.threshold:.3f}" if c.reached else "never emitted",
                c.val_emitted,
                c.test_emitted,
                _interval(c.test_precision, c.test_precision_low, c.test_precision_high),
                f"{c.test_recall:.1%}" if c.test_recall == c.test_recall else "",
            )
            for c in report.classes
        ]
        text = (
            f"**Target precision {report.target_precision:.0%}** (temperature {self.temperature:.3f}): "
            f"{report.test_emitted} of {report.test_count} test images labelled ({report.coverage:.1%}), precision "
            f"{_interval(report.precision, report.precision_low, report.precision_high)}.\n\n"
            + rendering.markdown_table(
                ["class", "threshold", "val labelled", "test labelled", "test precision", "test recall"], rows
            )
        )
        rendering.log_text(trainer, "test/class_thresholds", text, trainer.current_epoch)


def thresholds_summary(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """The end-of-run summary row of the thresholds' test figures (none when the test split was not evaluated)."""
    if "test/thresholds_coverage" not in metrics:
        return []
    coverage, precision, low, high = (
        metrics.get(f"test/thresholds_{k}", math.nan)
        for k in ("coverage", "precision", "precision_low", "precision_high")
    )
    return [("thresholds", f"test: {coverage:.1%} labelled, precision {_interval(precision, low, high)}")]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _interval(value: float, low: float, high: float) -> str:
    return "-" if value != value else f"{value:.3f} (95% CI {low:.3f}-{high:.3f})"
