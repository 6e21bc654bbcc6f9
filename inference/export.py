"""Exporting a classifier to ONNX or TorchScript, and running the exported file.

The model is any ``nn.Module`` that takes normalised ``N x 3 x H x W`` float images and
returns ``N x C`` logits (a lookout checkpoint's ``.backbone``, a timm model). Next to the
model file goes its JSON sidecar (:mod:`inference.sidecar`): classes, preprocessing,
temperature, thresholds, blocked classes.

- ONNX: ``torch.onnx.export(..., dynamo=True)``, the ``torch.export``-based exporter that is
  torch's default (the TorchScript-based one is deprecated and warns so); it needs
  ``onnxscript``. The batch axis is dynamic; weights are stored inside the one ``.onnx`` file,
  which limits a model to 2 GB. It runs with onnxruntime on the CPU.
- TorchScript: ``torch.jit.trace``. torch marks TorchScript deprecated in favour of
  ``torch.export``; it is offered because deployments still load it (C++ ``torch::jit::load``,
  older serving stacks). Tracing records one pass, and timm's classifiers have no data-dependent
  control flow, so the trace holds for any batch size at the exported image size.

A TorchScript file is a program and an ONNX file a graph that the runtime executes: load only
files you exported yourself or trust.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from inference.sidecar import (
    MODEL_FORMATS,
    Preprocessing,
    Sidecar,
    SidecarError,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

INPUT_NAME, OUTPUT_NAME = "images", "logits"
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
# Two example images: torch.export specialises a dimension of size 1 and would fix the batch at 1.
_EXAMPLE_BATCH = 2


def _example(input_size: Sequence[int]) -> torch.Tensor:
    return torch.zeros(_EXAMPLE_BATCH, *input_size)


class _EvalMode:
    """Puts a module in eval mode for the export and restores its training flags afterwards."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.flags = {m: m.training for m in module.modules()}

    def __enter__(self) -> torch.nn.Module:
        self.module.eval()
        return self.module

    def __exit__(self, *exc) -> None:
        for m, flag in self.flags.items():
            m.training = flag


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, *, input_size: Sequence[int]) -> Path:
    """Writes ``model`` as ONNX with a dynamic batch axis (input ``images``, output ``logits``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    with _EvalMode(model) as module, torch.no_grad():
        program = torch.onnx.export(
            module,
            (_example(input_size),),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path


def export_torchscript(model: torch.nn.Module, path: str | os.PathLike, *, input_size: Sequence[int]) -> Path:
    """Writes ``model`` traced as TorchScript; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _EvalMode(model) as module, torch.no_grad(), warnings.catch_warnings():
        # The format was asked for by name; its deprecation is stated in the module docstring.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        traced = torch.jit.trace(module, _example(input_size))
        traced.save(str(path))
    return path


def export_classifier(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    model_format: str,
    classes: Sequence[str],
    preprocessing: Preprocessing,
    temperature: float = 1.0,
    thresholds: Mapping[str, float] | None = None,
    blocked_classes: Sequence[str] = (),
    source_checkpoint: str = "",
) -> Sidecar:
    """Exports ``model`` to ``path`` and writes the sidecar beside it (``<path>.json``).

    Args:
        model: takes normalised ``N x 3 x H x W`` images, returns ``N x C`` logits.
        path: the model file to write (``.onnx`` or ``.pt`` by convention).
        model_format: ``onnx`` or ``torchscript``.
        classes: the ``C`` class names, in logit order.
        preprocessing: the eval preprocessing the model expects.
        temperature: the calibration temperature (probabilities = softmax(logits / temperature)).
        thresholds: per-class thresholds (``math.inf``: never emitted).
        blocked_classes: classes never to emit.
        source_checkpoint: the checkpoint the model came from, for the record.

    Returns:
        The sidecar written.

    Raises:
        ValueError: an unknown format, or a sidecar field out of range (checked before exporting).
    """
    if model_format not in MODEL_FORMATS:
        raise ValueError(f"format must be one of {MODEL_FORMATS}, got {model_format!r}")
    path = Path(path)
    sidecar = Sidecar(
        model_format=model_format,
        model_file=path.name,
        classes=tuple(classes),
        preprocessing=preprocessing,
        temperature=float(temperature),
        thresholds={str(k): float(v) for k, v in (thresholds or {}).items()},
        blocked_classes=tuple(blocked_classes),
        source_checkpoint=str(source_checkpoint),
    )
    sidecar.validate(str(sidecar_path(path)))
    export = export_onnx if model_format == "onnx" else export_torchscript
    export(model, path, input_size=preprocessing.input_size)
    write_sidecar(sidecar_path(path), sidecar)
    return sidecar


class ExportedClassifier:
    """An exported model with its sidecar, run on the CPU.

    Args:
        model_path: the ``.onnx`` or TorchScript file; its sidecar is ``<model_path>.json``.
        threads: CPU threads for one call (default: the runtime's choice); for TorchScript this sets
            torch's process-wide thread count.

    Raises:
        FileNotFoundError: the model or its sidecar is missing.
        SidecarError: the sidecar is invalid or describes another file.

    Example::

        model = ExportedClassifier("model.onnx")
        probabilities = model.probabilities(images)   # images: N x 3 x H x W float32, normalised
    """

    def __init__(self, model_path: str | os.PathLike, *, threads: int | None = None) -> None:
        self.path = Path(model_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model={self.path}: no such file")
        self.sidecar = read_sidecar(sidecar_path(self.path))
        if self.sidecar.model_file != self.path.name:
            raise SidecarError(f"{sidecar_path(self.path)} describes {self.sidecar.model_file}, not {self.path.name}")
        if self.sidecar.model_format == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self._session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        else:
            if threads:
                torch.set_num_threads(threads)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
                self._module = torch.jit.load(str(self.path), map_location="cpu").eval()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.sidecar.classes

    def logits(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(N, C)`` float32 logits for normalised ``(N, 3, H, W)`` images at the sidecar's input size."""
        batch = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        expected = tuple(self.sidecar.preprocessing.input_size)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(f"images must be N x {' x '.join(map(str, expected))}, got {batch.shape}")
        if self.sidecar.model_format == "onnx":
            return self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        with torch.no_grad():
            return self._module(torch.from_numpy(batch)).numpy()

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(N, C)`` calibrated probabilities: ``softmax(logits / temperature)``."""
        return softmax(self.logits(images).astype(np.float64) / self.sidecar.temperature, axis=1)
