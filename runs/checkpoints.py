"""Reading a checkpoint a user hands over: tensors and plain values only, checked before use.

A checkpoint is untrusted input. It is read with ``torch.load(weights_only=True)`` (no pickled
code), and what lookout reads from it (class names, architecture, preprocessing, metrics) must be
plain values of the expected types. Those values are passed to constructors as ordinary Python
arguments; they never enter an OmegaConf config, so a ``${...}`` or ``_target_`` inside them stays text.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from runs.errors import CheckpointError

PLAIN = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class TrainedCheckpoint:
    """What a lookout checkpoint says about the model it holds, as checked plain values."""

    path: Path
    hyper_parameters: dict[str, Any]
    class_names: list[str]
    name: str
    preprocessing: dict[str, Any]
    val_metrics: dict[str, float] = field(default_factory=dict)
    epoch: int | None = None
    temperature: float | None = None

    @property
    def run_dir(self) -> Path:
        """The run folder the checkpoint was saved in (``<run>/checkpoints/<file>``)."""
        return self.path.parent.parent


def load_file(path: str | os.PathLike, what: str = "ckpt_path") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with errors that say what is wrong with the file.

    Raises:
        CheckpointError: missing, unreadable, truncated, or holding more than tensors and plain values.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"{what}={str(path)!r} does not exist. Give a checkpoint file, e.g. <run>/checkpoints/best.ckpt."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{what}={str(path)!r} holds objects other than tensors and plain values, so it is not loaded "
            f"(only weights_only checkpoints are read): {str(err).splitlines()[0][:200]}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{what}={str(path)!r} cannot be read: it is truncated or not a PyTorch checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})."
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{what}={str(path)!r} is not a checkpoint (it holds a {type(checkpoint).__name__}).")
    return checkpoint


def read_checkpoint(path: str | os.PathLike) -> TrainedCheckpoint:
    """Reads and checks a checkpoint written by lookout's training.

    Raises:
        CheckpointError: the file cannot be read, is not lookout's, or holds values of the wrong type.
    """
    path = Path(path).expanduser().absolute()
    checkpoint = load_file(path)
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "class_names" not in hparams or "name" not in hparams:
        raise CheckpointError(
            f"{path} is not a lookout checkpoint (no hyper_parameters with class_names and name). "
            "Give a checkpoint from <run>/checkpoints/ of a lookout training run."
        )
    hparams = plain(hparams, f"{path}: hyper_parameters")
    class_names = hparams["class_names"]
    if not isinstance(class_names, list) or len(class_names) < 2 or not all(isinstance(c, str) for c in class_names):
        raise CheckpointError(f"{path}: hyper_parameters.class_names must be a list of at least two strings.")
    if len(set(class_names)) != len(class_names):
        raise CheckpointError(f"{path}: hyper_parameters.class_names lists a class twice.")
    if not isinstance(hparams["name"], str):
        raise CheckpointError(f"{path}: hyper_parameters.name must be a timm model name (a string).")
    preprocessing = hparams.get("preprocessing") or checkpoint.get("ImageDataModule", {}).get("preprocessing") or {}
    from datamodules.transforms import Preprocessing  # the one checker of preprocessing values

    try:
        preprocessing = Preprocessing.from_dict(plain(preprocessing, f"{path}: preprocessing")).as_dict()
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: the saved preprocessing is not valid ({err}).") from None
    metrics = plain(checkpoint.get("val_metrics") or {}, f"{path}: val_metrics")
    temperature = checkpoint.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or not 0 < float(temperature) < 1e3):
        raise CheckpointError(f"{path}: the saved temperature {temperature!r} is not a positive number.")
    epoch = checkpoint.get("epoch")
    return TrainedCheckpoint(
        path=path,
        hyper_parameters=hparams,
        class_names=list(class_names),
        name=hparams["name"],
        preprocessing=preprocessing,
        val_metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        epoch=epoch if isinstance(epoch, int) else None,
        temperature=float(temperature) if temperature is not None else None,
    )


def plain(value: Any, where: str) -> Any:
    """``value`` if it is made of str, int, float, bool, None, lists, tuples and str-keyed dicts only.

    Raises:
        CheckpointError: anything else (a tensor, an object) is found; the message says where.
    """
    if isinstance(value, PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{where}: key {key!r} is not a string.")
            out[key] = plain(item, f"{where}.{key}")
        return out
    raise CheckpointError(f"{where}: a value of type {type(value).__name__} where plain values were expected.")
