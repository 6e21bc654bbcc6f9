"""Exporting a classifier to ONNX or TorchScript, and running the exported file.

The model is any ``nn.Module`` that takes normalised ``N x 3 x H x W`` float images and
returns ``N x C`` logits (a lookout checkpoint's ``.backbone``, a timm model). With
``embedding=True`` a timm model is exported with a second output, its pooled embedding from the
same pass (:class:`LogitsAndEmbedding`), so the exported model can flag unfamiliar inputs and rank
images to label next like the checkpoint. Next to the model file goes its JSON sidecar
(:mod:`inference.sidecar`): classes, preprocessing, temperature, thresholds, blocked classes, and
the unfamiliar-input index (a folder beside the sidecar) when one is given.

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

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from datamodules.transforms import Preprocessing
from inference.familiarity import FamiliarityIndex
from inference.sidecar import MODEL_FORMATS, Sidecar, SidecarError, read_sidecar, sidecar_path, write_sidecar

INPUT_NAME, OUTPUT_NAME, EMBEDDING_NAME = "images", "logits", "embedding"
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
# Two example images: torch.export specialises a dimension of size 1 and would fix the batch at 1.
_EXAMPLE_BATCH = 2


def _example(input_size: Sequence[int]) -> torch.Tensor:
    return torch.zeros(_EXAMPLE_BATCH, *input_size)


class LogitsAndEmbedding(torch.nn.Module):
    """A timm classifier that returns its logits and its pooled embedding from one pass, as
    :meth:`models.classifier.ImageClassifier.forward_with_embedding` does.

    Args:
        backbone: a timm model (``forward_features`` and ``forward_head``).
    """

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone.forward_features(images)
        return self.backbone.forward_head(features), self.backbone.forward_head(features, pre_logits=True)


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


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    input_size: Sequence[int],
    output_names: Sequence[str] = (OUTPUT_NAME,),
) -> Path:
    """Writes ``model`` as ONNX with a dynamic batch axis (input ``images``, outputs ``output_names``); returns
    the path. ``input_size`` is ``(channels, height, width)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter's graph optimiser logs every pass at INFO, which Hydra's logging config would print.
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1)
    with _EvalMode(model) as module, torch.no_grad():
        program = torch.onnx.export(
            module,
            (_example(input_size),),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path


def export_torchscript(
    model: torch.nn.Module, path: str | os.PathLike, *, input_size: Sequence[int], output_names: Sequence[str] = ()
) -> Path:
    """Writes ``model`` traced as TorchScript; returns the path (outputs are positional: ``output_names`` unused)."""
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
    embedding: bool = False,
    familiarity: FamiliarityIndex | None = None,
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
        embedding: export a timm ``model`` with its pooled embedding as a second output.
        familiarity: the unfamiliar-input index of the model's training run, saved beside the sidecar
            (``<path>.familiarity/``); needs ``embedding``.

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
        outputs=(OUTPUT_NAME, EMBEDDING_NAME) if embedding else (OUTPUT_NAME,),
        familiarity=f"{path.name}.familiarity" if familiarity is not None else None,
    )
    sidecar.validate(str(sidecar_path(path)))
    export = export_onnx if model_format == "onnx" else export_torchscript
    module = LogitsAndEmbedding(model) if embedding else model
    export(module, path, input_size=sidecar.input_shape, output_names=sidecar.outputs)
    if familiarity is not None:
        familiarity.save(path.with_name(sidecar.familiarity))
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

    @property
    def has_embedding(self) -> bool:
        return EMBEDDING_NAME in self.sidecar.outputs

    def familiarity(self) -> FamiliarityIndex | None:
        """The unfamiliar-input index saved beside the sidecar, or ``None`` when the export has none."""
        if self.sidecar.familiarity is None:
            return None
        return FamiliarityIndex.load(self.path.with_name(self.sidecar.familiarity))

    def outputs(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """``(N, C)`` float32 logits and the ``(N, D)`` embeddings (``None`` when the export has none) for
        normalised ``(N, 3, H, W)`` images at the sidecar's input size."""
        batch = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        expected = self.sidecar.input_shape
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(f"images must be N x {' x '.join(map(str, expected))}, got {batch.shape}")
        if self.sidecar.model_format == "onnx":
            found = self._session.run(list(self.sidecar.outputs), {INPUT_NAME: batch})
        else:
            with torch.no_grad():
                out = self._module(torch.from_numpy(batch))
            found = [t.numpy() for t in out] if isinstance(out, tuple | list) else [out.numpy()]
        return found[0], (found[1] if len(found) > 1 else None)

    def logits(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(N, C)`` float32 logits for normalised ``(N, 3, H, W)`` images at the sidecar's input size."""
        return self.outputs(images)[0]

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(N, C)`` calibrated probabilities: ``softmax(logits / temperature)``."""
        return softmax(self.logits(images).astype(np.float64) / self.sidecar.temperature, axis=1)
