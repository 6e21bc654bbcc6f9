"""Calibration: ECE and the reliability diagram each epoch, a temperature fitted after training, test ECE
before and after it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from callbacks import rendering
from callbacks.epoch_outputs import EpochOutputs
from callbacks.review import REVIEW_SPLITS, SplitReview
from evaluation.calibration import (
    N_BINS,
    CalibrationResult,
    bound_note,
    calibrate,
    expected_calibration_error,
    reliability_bins,
    reliability_figure,
)
from evaluation.figures import figure_to_array
from runs.checkpoints import CheckpointError, load_file
from runs.files import write_atomically
from runs.folder import RunFolder

REPORT = "calibration.json"


class Calibration(SplitReview):
    """Is a 90% confidence right 90% of the time? Expected calibration error (torchmetrics) and a
    reliability diagram of the validation split every ``every_n_epochs`` epochs (scalar
    ``val/ece``, image ``val/reliability``), and temperature scaling (Guo et al., ICML 2017).

    At the end of fitting, a temperature ``T`` is fitted on the validation outputs of the best
    checkpoint's epoch (collected then: no extra pass over the data), and saved as a top-level
    ``"temperature"`` in that checkpoint file (rewritten atomically) and in
    ``reports/calibration.json`` (``{"temperature": T, ...}``), which prediction code reads:
    probabilities are ``softmax(logits / T)``. When the test split is evaluated, its ECE before
    and after dividing the logits by ``T`` go to the same file, to TensorBoard (``test/ece``,
    ``test/ece_calibrated``, ``test/calibration``) and to the end-of-run summary. Evaluating a
    checkpoint (``eval.py``) uses the temperature saved in it, or fits one on the validation split
    evaluated just before when it has none.

    Dividing by ``T`` never changes the predicted class: accuracy is untouched.

    Args:
        every_n_epochs: validation ECE and diagram every n epochs (0: only validate/test runs).
        n_bins: equal-width confidence bins of the ECE and the diagram.
        fit_temperature: fit and save the temperature at the end of fitting.
        splits: which of ``val`` and ``test`` to review.

    Raises:
        ValueError: ``n_bins`` is below 2.

    Example::

        trainer = Trainer(callbacks=[SampleOutputs(), Calibration(n_bins=10), ModelCheckpoint(monitor="val/acc")])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        n_bins: int = N_BINS,
        fit_temperature: bool = True,
        splits: tuple[str, ...] | list[str] = REVIEW_SPLITS,
    ) -> None:
        super().__init__(every_n_epochs, splits)
        if n_bins < 2:
            raise ValueError(f"Calibration(n_bins={n_bins}) must be >= 2.")
        self.n_bins, self.fit_temperature = n_bins, fit_temperature
        self.temperature: float | None = None
        self.source = ""  # where the temperature came from, for the reports
        self.fitted: CalibrationResult | None = None  # on the validation split, at the end of fitting
        self._summary: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ every epoch
    def review(self, trainer: Trainer, pl_module: LightningModule, outputs: EpochOutputs, step: int) -> None:
        split = outputs.split
        ece = expected_calibration_error(outputs.logits, outputs.target, self.n_bins)
        bins = reliability_bins(outputs.logits, outputs.target, self.n_bins)
        title = f"{split} epoch {step}, {len(outputs)} samples"
        rendering.log_image(
            trainer, f"{split}/reliability", figure_to_array(reliability_figure(bins, ece, title)), step
        )
        writer = rendering.tensorboard(trainer)
        if writer is not None:
            writer.add_scalar(f"{split}/ece", ece, step)
        if split == "test":
            self._test(trainer, outputs, step)

    # ------------------------------------------------------------------ the temperature
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit" and self.temperature is None and trainer.ckpt_path:
            self.temperature = saved_temperature(trainer.ckpt_path)  # evaluating a checkpoint: its own
            if self.temperature is not None:
                self.source = f"saved in {trainer.ckpt_path}"

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.fit_temperature or self.outputs is None:
            return
        val, best_path = self.best_checkpoint_outputs(trainer)
        from_best = val is not None
        if val is None:  # no checkpoint callback: the weights in memory are the last epoch's
            val = self.outputs.latest("val")
        if val is None or val.logits is None or not len(val):
            return
        self.fitted = calibrate(val.logits, val.target, n_bins=self.n_bins)
        self.temperature = self.fitted.temperature
        which = "the best checkpoint's epoch" if from_best else "the last epoch"
        self.source = f"fitted on the validation outputs of {which} ({val.epoch})"
        if not trainer.is_global_zero:
            return
        checkpoint = best_path if from_best else ""
        if checkpoint:
            add_temperature(checkpoint, self.temperature)
        record = {**self.fitted.to_dict(), "source": self.source, "epoch": val.epoch, "checkpoint": checkpoint}
        RunFolder.of(trainer).write_json(REPORT, record)
        rendering.log_text(
            trainer,
            "val/calibration",
            f"Temperature **{self.temperature:.3f}**{bound_note(self.temperature)} {self.source}, {len(val)} "
            "samples: validation ECE "
            f"{self.fitted.ece_before:.2%} before, {self.fitted.ece_after:.2%} after (on the samples it was fitted "
            "on; the test split gives the honest figure).",
            trainer.current_epoch,
        )
        self._summary = [
            ("calibration", f"temperature {self.temperature:.3f}{bound_note(self.temperature)} (reports/{REPORT})")
        ]

    def _test(self, trainer: Trainer, outputs: EpochOutputs, step: int) -> None:
        """ECE of the test split before and after the temperature, into calibration.json and TensorBoard."""
        folder = RunFolder.of(trainer)
        if self.temperature is None:
            # Evaluating a checkpoint saved without one: fit on the validation split evaluated just before.
            val = self.outputs.latest("val") if self.outputs else None
            if val is None or val.logits is None or not len(val):
                return
            self.fitted = calibrate(val.logits, val.target, n_bins=self.n_bins)
            self.temperature = self.fitted.temperature
            self.source = f"fitted on the {len(val)} validation samples evaluated before the test split"
        t = self.temperature
        logits = torch.as_tensor(outputs.logits, dtype=torch.float64)
        targets = torch.as_tensor(outputs.target)
        nll = [float(torch.nn.functional.cross_entropy(logits / s, targets)) for s in (1.0, t)]
        before = expected_calibration_error(outputs.logits, outputs.target, self.n_bins)
        after = expected_calibration_error(outputs.logits / t, outputs.target, self.n_bins)
        record = _read_record(folder.report(REPORT))
        record.update(
            temperature=t,
            source=self.source,
            evaluated_on="test",
            samples_evaluated=len(outputs),
            ece_before=before,
            ece_after=after,
            nll_before=nll[0],
            nll_after=nll[1],
            n_bins=self.n_bins,
        )
        if self.fitted is not None:
            record.update(fitted_on="val", samples_fitted=self.fitted.samples_fitted)
        folder.write_json(REPORT, record)
        writer = rendering.tensorboard(trainer)
        if writer is not None:
            writer.add_scalar("test/ece_calibrated", after, step)
        rendering.log_text(
            trainer,
            "test/calibration",
            f"Test ECE **{before:.2%}** before, **{after:.2%}** after temperature scaling (T = {t:.3f}); "
            f"NLL {nll[0]:.4f} -> {nll[1]:.4f}; {len(outputs)} samples, {self.n_bins} bins.",
            step,
        )
        self._summary = [
            (
                "calibration",
                f"test ECE {before:.2%} -> {after:.2%} with temperature {t:.3f}{bound_note(t)} (reports/{REPORT})",
            )
        ]

    def summary_rows(self) -> list[tuple[str, str]]:
        """Lines for the end-of-run summary (global rank zero)."""
        return list(self._summary)


def _read_record(path: Path) -> dict:
    """The calibration.json written at the end of fitting, if any (this run's own file, checked as plain values)."""
    import json

    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    return {k: v for k, v in record.items() if isinstance(v, str | int | float | bool | type(None))}


def saved_temperature(path: str | os.PathLike) -> float | None:
    """The ``"temperature"`` a checkpoint file carries, or ``None``."""
    try:
        value = load_file(path).get("temperature")
    except CheckpointError:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def add_temperature(path: str | os.PathLike, temperature: float) -> None:
    """Adds ``"temperature"`` to a checkpoint file, atomically: a reader sees the old file or the new, never half.

    The file is read with ``weights_only=True`` (tensors and plain values) and written beside
    itself before it replaces the original.
    """
    path = Path(path)
    checkpoint = load_file(path, what="the best checkpoint")
    checkpoint["temperature"] = float(temperature)
    write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))
