"""The JSON sidecar of an exported model: everything needed to use it besides the weights.

An exported ``model.onnx`` (or ``model.pt``) is only logits; the sidecar beside it,
``model.onnx.json``, says what they mean and how to get there: the class names, the
preprocessing (input size, crop, interpolation, mean, std), the temperature that calibrates
the probabilities, the per-class thresholds, the blocked classes and the checkpoint it came
from.

The sidecar is data from a file: it is parsed as JSON, every field is checked for its plain
type and range, and nothing in it is evaluated, instantiated or put into a config tree.

Format (``format_version`` 1)::

    {
      "format_version": 1,
      "model_format": "onnx" | "torchscript",
      "model_file": "model.onnx",            # beside the sidecar; a file name, not a path
      "classes": ["cat", "dog"],             # in logit order
      "preprocessing": {"input_size": [224, 224], "crop_pct": 0.875, "interpolation": "bicubic",
                        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
      "temperature": 1.0,                    # probabilities = softmax(logits / temperature)
      "thresholds": {"cat": 0.62, "dog": null},   # null: never emitted; a class absent: no threshold
      "blocked_classes": [],
      "source_checkpoint": "logs/train/runs/.../checkpoints/best.ckpt",
      "outputs": ["logits", "embedding"],    # what the model returns, in order (optional; default logits)
      "familiarity": "model.onnx.familiarity"  # folder beside it: the unfamiliar-input index (optional)
    }

``preprocessing`` is :class:`datamodules.transforms.Preprocessing` as saved in checkpoints
(input size in px as height, width; three RGB channels), checked by its own ``from_dict``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamodules.transforms import Preprocessing

SIDECAR_VERSION = 1
MODEL_FORMATS = ("onnx", "torchscript")
OUTPUTS = ("logits", "embedding")
_OPTIONAL = {"source_checkpoint", "outputs", "familiarity"}
_KEYS = {
    "format_version",
    "model_format",
    "model_file",
    "classes",
    "preprocessing",
    "temperature",
    "thresholds",
    "blocked_classes",
    "source_checkpoint",
    "outputs",
    "familiarity",
}
_PREPROCESSING_KEYS = {"input_size", "crop_pct", "interpolation", "mean", "std"}


class SidecarError(ValueError):
    """A sidecar file that is not what the exporter writes; the message names the file and the field."""


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """Where the sidecar of ``model_path`` lives: the same name plus ``.json``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


@dataclass(frozen=True)
class Sidecar:
    """What an exported model's logits mean and how to produce them (fields in the module docstring).

    ``thresholds`` maps a class to the probability it needs to be emitted, ``math.inf`` for never
    (``null`` in the file), like :class:`inference.decisions.OutputPolicy` takes it.
    """

    model_format: str
    model_file: str
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    temperature: float = 1.0
    thresholds: Mapping[str, float] = field(default_factory=dict)
    blocked_classes: tuple[str, ...] = ()
    source_checkpoint: str = ""
    outputs: tuple[str, ...] = ("logits",)
    familiarity: str | None = None
    format_version: int = SIDECAR_VERSION

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one input image."""
        return (3, *self.preprocessing.input_size)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model_format": self.model_format,
            "model_file": self.model_file,
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.as_dict(),
            "temperature": self.temperature,
            "thresholds": {k: (None if v == math.inf else v) for k, v in self.thresholds.items()},
            "blocked_classes": list(self.blocked_classes),
            "source_checkpoint": self.source_checkpoint,
            "outputs": list(self.outputs),
            "familiarity": self.familiarity,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "sidecar") -> Sidecar:
        """Checks every field of parsed JSON and builds the sidecar.

        Raises:
            SidecarError: a missing or unknown field, a wrong type, or a value out of range.
        """
        sidecar = cls(**_checked(data, where))
        sidecar.validate(where)
        return sidecar

    def validate(self, where: str = "sidecar") -> None:
        """Checks the relations between fields (classes, thresholds, blocked classes, formats).

        Raises:
            SidecarError: what is wrong, naming the field.
        """

        def fail(message: str) -> None:
            raise SidecarError(f"{where}: {message}")

        if self.format_version != SIDECAR_VERSION:
            fail(f"format_version {self.format_version} is not supported (this version reads {SIDECAR_VERSION})")
        if self.model_format not in MODEL_FORMATS:
            fail(f"model_format must be one of {MODEL_FORMATS}, got {self.model_format!r}")
        if not self.model_file or Path(self.model_file).name != self.model_file or self.model_file in (".", ".."):
            fail(f"model_file must be a file name beside the sidecar, got {self.model_file!r}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            fail(f"classes must be a non-empty list of distinct names, got {list(self.classes)}")
        try:  # the one checker of preprocessing values, the same as for checkpoints
            Preprocessing.from_dict(self.preprocessing.as_dict())
        except (TypeError, ValueError) as err:
            fail(f"preprocessing: {err}")
        if not self.outputs or self.outputs[0] != "logits" or not set(self.outputs) <= set(OUTPUTS):
            fail(f"outputs must be ['logits'] or ['logits', 'embedding'], got {list(self.outputs)}")
        if len(set(self.outputs)) != len(self.outputs):
            fail(f"outputs lists an output twice: {list(self.outputs)}")
        if self.familiarity is not None and (
            not self.familiarity or Path(self.familiarity).name != self.familiarity or self.familiarity in (".", "..")
        ):
            fail(f"familiarity must be a folder name beside the sidecar, got {self.familiarity!r}")
        if self.familiarity is not None and "embedding" not in self.outputs:
            fail("familiarity needs the model to return its embedding (outputs ['logits', 'embedding'])")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            fail(f"temperature must be a positive number, got {self.temperature}")
        unknown = sorted((set(self.thresholds) | set(self.blocked_classes)) - set(self.classes))
        if unknown:
            fail(f"thresholds or blocked_classes name {unknown}, which are not among the classes {list(self.classes)}")
        bad = {k: v for k, v in self.thresholds.items() if not (0.0 <= v <= 1.0 or v == math.inf)}
        if bad:
            fail(f"thresholds must be in [0, 1] or null (never emitted), got {bad}")


def _checked(data: Any, where: str) -> dict[str, Any]:
    """Plain-typed constructor arguments from parsed JSON, each type checked."""

    def fail(message: str) -> None:
        raise SidecarError(f"{where}: {message}")

    def number(value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(f"{name} must be a number, got {value!r}")
        return float(value)

    def strings(value: Any, name: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(f"{name} must be a list of strings, got {value!r}")
        return tuple(value)

    if not isinstance(data, dict):
        fail(f"expected a JSON object, got {type(data).__name__}")
    missing, unknown = sorted(_KEYS - _OPTIONAL - set(data)), sorted(set(data) - _KEYS)
    if missing or unknown:
        fail(f"missing fields {missing}, unknown fields {unknown}; expected {sorted(_KEYS)}")
    pre = data["preprocessing"]
    if not isinstance(pre, dict) or set(pre) != _PREPROCESSING_KEYS:
        fail(f"preprocessing must be an object with exactly {sorted(_PREPROCESSING_KEYS)}, got {pre!r}")
    size = pre["input_size"]
    if not isinstance(size, list) or len(size) != 2:
        fail(f"preprocessing.input_size must be [height, width] in px, got {size!r}")
    for name in ("mean", "std"):
        if not isinstance(pre[name], list) or any(isinstance(v, bool) for v in pre[name]):
            fail(f"preprocessing.{name} must be a list of numbers, got {pre[name]!r}")
    if not isinstance(pre["interpolation"], str) or isinstance(pre["crop_pct"], bool):
        fail(f"preprocessing.interpolation must be a string and crop_pct a number, got {pre!r}")
    try:
        preprocessing = Preprocessing.from_dict(pre)
    except (TypeError, ValueError) as err:
        fail(f"preprocessing: {err}")
    familiarity = data.get("familiarity")
    if familiarity is not None and not isinstance(familiarity, str):
        fail(f"familiarity must be a folder name or null, got {familiarity!r}")
    thresholds = data["thresholds"]
    if not isinstance(thresholds, dict):
        fail(f"thresholds must be an object of class: number or null, got {thresholds!r}")
    version = data["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        fail(f"format_version must be an integer, got {version!r}")
    for name in ("model_format", "model_file", "source_checkpoint"):
        if not isinstance(data.get(name, ""), str):
            fail(f"{name} must be a string, got {data[name]!r}")
    return {
        "format_version": version,
        "model_format": data["model_format"],
        "model_file": data["model_file"],
        "classes": strings(data["classes"], "classes"),
        "preprocessing": preprocessing,
        "temperature": number(data["temperature"], "temperature"),
        "thresholds": {
            str(k): math.inf if v is None else number(v, f"thresholds[{k!r}]") for k, v in thresholds.items()
        },
        "blocked_classes": strings(data["blocked_classes"], "blocked_classes"),
        "source_checkpoint": data.get("source_checkpoint", ""),
        "outputs": strings(data.get("outputs", ["logits"]), "outputs"),
        "familiarity": familiarity,
    }


def write_sidecar(path: str | os.PathLike, sidecar: Sidecar) -> Path:
    """Validates ``sidecar`` and writes it as JSON to ``path``; returns the path."""
    path = Path(path)
    sidecar.validate(str(path))
    path.write_text(json.dumps(sidecar.to_json(), indent=1, allow_nan=False) + "\n")
    return path


def read_sidecar(path: str | os.PathLike) -> Sidecar:
    """Reads and checks a sidecar file.

    Raises:
        FileNotFoundError: no such file.
        SidecarError: not valid JSON, or not what :func:`write_sidecar` writes.
    """
    path = Path(path)
    try:
        # NaN/Infinity are not JSON: refuse them rather than let them through as floats.
        data = json.loads(path.read_text(), parse_constant=lambda name: _reject(path, name))
    except json.JSONDecodeError as err:
        raise SidecarError(f"{path}: not valid JSON ({err})") from None
    return Sidecar.from_json(data, str(path))


def _reject(path: Path, name: str) -> None:
    raise SidecarError(f"{path}: {name} is not a valid JSON number")
