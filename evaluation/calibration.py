"""Is a 90% confidence right 90% of the time? Expected calibration error, the reliability diagram,
and temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

Temperature scaling divides the logits by one scalar ``T`` fitted on validation logits to
minimise the negative log-likelihood. The predicted class never changes (accuracy is
untouched); only the confidences do: ``T > 1`` softens an over-confident model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from torchmetrics.functional.classification import multiclass_calibration_error

from evaluation.figures import new_figure

N_BINS = 15  # equal-width confidence bins, as in Guo et al. and torchmetrics' default
# Bounds of the fitted temperature: beyond them the data are degenerate (all correct with huge
# margins pushes T to 0, constant logits leave it undetermined), and the bound is reported.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def bound_note(temperature: float) -> str:
    """A warning for the summaries when a fitted temperature sits at one of its bounds, else ``""``."""
    if math.isclose(temperature, MAX_TEMPERATURE, rel_tol=1e-3):
        return f" (at the upper bound {MAX_TEMPERATURE:g}: the validation outputs are mostly wrong or uninformative)"
    if math.isclose(temperature, MIN_TEMPERATURE, rel_tol=1e-3):
        return f" (at the lower bound {MIN_TEMPERATURE:g}: every validation output is right by a wide margin)"
    return ""


def _as_tensors(logits, targets) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    if logits.ndim != 2 or targets.ndim != 1 or len(logits) != len(targets):
        raise ValueError(
            "calibration needs N x C logits and N class ids, "
            f"got shapes {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if len(logits) == 0:
        raise ValueError("calibration needs at least one sample, got none")
    if not torch.isfinite(logits).all():
        raise ValueError("calibration: the logits hold NaN or infinite values; check the model's outputs")
    if targets.min() < 0 or targets.max() >= logits.shape[1]:
        raise ValueError(
            f"calibration: class ids must lie in [0, {logits.shape[1] - 1}], got {targets.min()}..{targets.max()}"
        )
    return logits, targets


def expected_calibration_error(logits, targets, n_bins: int = N_BINS) -> float:
    """ECE (l1, ``n_bins`` equal-width bins) of the softmax of ``logits`` (torchmetrics)."""
    logits, targets = _as_tensors(logits, targets)
    probs = torch.softmax(logits, dim=1).float()
    return float(multiclass_calibration_error(probs, targets, num_classes=logits.shape[1], n_bins=n_bins, norm="l1"))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per confidence bin: ``edges`` (n_bins + 1), mean ``confidence``, ``accuracy`` and ``counts``
    (NaN confidence and accuracy in empty bins)."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray


def reliability_bins(logits, targets, n_bins: int = N_BINS) -> ReliabilityBins:
    """The reliability diagram's numbers, binned the way torchmetrics bins them for the ECE."""
    logits, targets = _as_tensors(logits, targets)
    confidence, predicted = torch.softmax(logits, dim=1).max(dim=1)
    confidence, correct = confidence.numpy(), (predicted == targets).numpy()
    edges = np.linspace(0, 1, n_bins + 1)
    # Left-closed bins [k / n, (k + 1) / n), as torchmetrics bins for the ECE; a confidence of 1 joins the top bin.
    which = np.clip(np.floor(confidence * n_bins).astype(int), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=n_bins) / counts
        mean_acc = np.bincount(which, weights=correct, minlength=n_bins) / counts
    return ReliabilityBins(edges=edges, confidence=mean_conf, accuracy=mean_acc, counts=counts)


def reliability_figure(bins: ReliabilityBins, ece: float, title: str = "Reliability") -> Figure:
    """Accuracy against confidence per bin (bars), the diagonal of perfect calibration, the gap to it
    shaded, and the sample count per bin below; the ECE in the title."""
    fig = new_figure(figsize=(5.2, 6.0), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    width = np.diff(bins.edges)
    left = bins.edges[:-1]
    filled = bins.counts > 0
    top.bar(
        left[filled],
        bins.accuracy[filled],
        width=width[filled],
        align="edge",
        color="#4c78a8",
        edgecolor="white",
        label="accuracy",
    )
    gap_low = np.minimum(bins.accuracy, bins.confidence)
    gap = np.abs(bins.confidence - bins.accuracy)
    top.bar(
        left[filled], gap[filled], bottom=gap_low[filled], width=width[filled], align="edge",
        color="#e45756", alpha=0.35, edgecolor="#e45756", hatch="//", label="gap to confidence",
    )  # fmt: skip
    top.plot([0, 1], [0, 1], linestyle="--", color="black", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"{title}: ECE {ece:.1%} ({len(width)} bins)")
    bottom.bar(left, bins.counts, width=width, align="edge", color="#888888", edgecolor="white")
    for x, w, n in zip(left, width, bins.counts, strict=True):
        if n:
            bottom.text(x + w / 2, n, str(int(n)), ha="center", va="bottom", fontsize=7)
    bottom.set_ylabel("samples")
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylim(0, max(1, bins.counts.max()) * 1.25)
    return fig


def _nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits / temperature, targets))


def fit_temperature(logits, targets, max_iter: int = 100) -> float:
    """The temperature ``T`` that minimises the NLL of ``softmax(logits / T)`` on these (validation) logits.

    LBFGS on ``log T`` (so ``T`` stays positive), in float64. Degenerate inputs do not break it:
    ``T`` is kept within [0.05, 20], and when the optimum does not beat ``T = 1`` (constant
    logits, a failed search) the result is 1.
    """
    # Gradients also when called from a hook that Lightning runs under inference mode (the test
    # epoch's end), where enable_grad alone is not enough and tensors made there cannot be saved
    # for backward: the tensors are made anew inside.
    with torch.inference_mode(False), torch.enable_grad():
        logits, targets = _as_tensors(np.array(logits), np.array(targets))
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
        low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(logits / log_t.clamp(low, high).exp(), targets)
            loss.backward()
            return loss

        optimiser.step(closure)
    value = float(log_t.detach().clamp(low, high).exp())
    if not math.isfinite(value) or _nll(logits, targets, value) >= _nll(logits, targets, 1.0):
        return 1.0
    return value


@dataclass(frozen=True)
class CalibrationResult:
    """Temperature scaling's outcome, for ``reports/calibration.json`` (:meth:`to_dict`).

    ``ece_*`` and ``nll_*`` are measured on the evaluation split (test, or validation when no
    other split was given), before and after dividing the logits by ``temperature``.
    """

    temperature: float
    fitted_on: str
    evaluated_on: str
    samples_fitted: int
    samples_evaluated: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n_bins: int = N_BINS

    def to_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in asdict(self).items()}


def calibrate(
    fit_logits,
    fit_targets,
    eval_logits=None,
    eval_targets=None,
    *,
    fit_split: str = "val",
    eval_split: str = "test",
    n_bins: int = N_BINS,
) -> CalibrationResult:
    """Fits the temperature on ``fit_*`` (validation) and reports ECE and NLL before and after on ``eval_*`` (test).

    Without ``eval_*`` the before/after figures are on the fitting split itself (optimistic).
    """
    temperature = fit_temperature(fit_logits, fit_targets)
    if eval_logits is None:
        eval_logits, eval_targets, eval_split = fit_logits, fit_targets, fit_split
    logits, targets = _as_tensors(eval_logits, eval_targets)
    return CalibrationResult(
        temperature=temperature,
        fitted_on=fit_split,
        evaluated_on=eval_split,
        samples_fitted=len(fit_targets),
        samples_evaluated=len(targets),
        ece_before=expected_calibration_error(logits, targets, n_bins),
        ece_after=expected_calibration_error(logits / temperature, targets, n_bins),
        nll_before=_nll(logits, targets, 1.0),
        nll_after=_nll(logits, targets, temperature),
        n_bins=n_bins,
    )
