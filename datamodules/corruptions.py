"""Corrupted copies of evaluation images, for the robustness grid: ImageNet-C types x 5 severities.

``corrupt(image, kind, severity, seed)`` returns the corrupted image; the same arguments give
the same pixels. The caller derives ``seed`` from the sample's stable index with
:func:`sample_seed`, which leaves the severity out on purpose: every severity of one image
reuses the same random draws (the same noise pattern, the same fog), so the accuracy curve
across severities shows the parameters' effect, not draw-to-draw noise.

Where in the evaluation pipeline: after the eval resize and centre crop, before normalisation
(:func:`with_corruption`). ImageNet-C corrupts the 224 px crop the model sees, so a severity
means what the paper means only at the model's own pixel grid; corrupting the source file
instead would make the same severity milder on a 4000 px photo (its noise averaged away by
the resize) than on a 300 px one, and would cost more.

The parameters per severity come from ``conf/robustness/default.yaml`` (ImageNet-C's values for
224 px, with their citation) or ``conf/robustness/cifar.yaml`` (CIFAR-10-C's, for small
inputs); :class:`CorruptionSuite` checks them and applies them.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its import otherwise calls the network

import albumentations as A
import numpy as np

from datamodules.imagenet_c import CORRUPTIONS, FAMILIES, GRID_KINDS

SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "robustness" / "default.yaml"


@dataclass(frozen=True)
class CorruptionSuite:
    """The corruption types to run and their parameters per severity, as a robustness config declares them.

    Args:
        corruptions: ``{kind: {parameter: [value at severity 1, ..., value at severity 5]}}``;
            a kind may be left out (it is then not run), not misspelt.
        reference_size: the image side, in pixels, the pixel-valued parameters are given for.

    Raises:
        ValueError: naming the config key, the value and what is allowed.

    Example::

        suite = load_suite()
        noisy = suite.apply(image, "gaussian_noise", severity=3, seed=sample_seed(index, "gaussian_noise"))
    """

    corruptions: Mapping[str, Mapping[str, Sequence[float]]]
    reference_size: int = 224

    def __post_init__(self) -> None:
        unknown = sorted(set(self.corruptions) - set(CORRUPTIONS))
        if unknown:
            raise ValueError(
                f"robustness.suite.corruptions: unknown type(s) {unknown}; known types are {list(CORRUPTIONS)}"
            )
        checked = {}
        for kind, params in self.corruptions.items():
            checked[kind] = {}
            for name, values in params.items():
                values = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else values
                if not isinstance(values, list) or len(values) != len(SEVERITIES):
                    raise ValueError(
                        f"robustness.suite.corruptions.{kind}.{name} must list one value per severity "
                        f"({len(SEVERITIES)} values), got {values!r}"
                    )
                checked[kind][name] = tuple(float(v) for v in values)
        if self.reference_size < 1:
            raise ValueError(
                f"robustness.suite.reference_size must be a positive size in pixels, got {self.reference_size}"
            )
        object.__setattr__(self, "corruptions", checked)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The configured types, in the reference's order (noise, blur, weather, digital)."""
        return tuple(kind for kind in CORRUPTIONS if kind in self.corruptions)

    def params(self, kind: str, severity: int) -> dict[str, float]:
        """The parameters of ``kind`` at ``severity`` (1-5)."""
        if kind not in self.corruptions:
            raise ValueError(f"corruption kind {kind!r} is not configured; configured kinds are {list(self.kinds)}")
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        return {name: values[severity - 1] for name, values in self.corruptions[kind].items()}

    def apply(self, image: np.ndarray, kind: str, severity: int, seed: int) -> np.ndarray:
        """``image`` (``H x W x 3`` uint8 RGB) corrupted by ``kind`` at ``severity``; same shape and dtype.

        Deterministic: the same image, kind, severity and seed give the same pixels.
        """
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image)
            raise ValueError(f"corrupt() takes an H x W x 3 uint8 RGB image, got a {got}")
        params = self.params(kind, severity)
        rng = np.random.default_rng(seed)
        height, width = image.shape[:2]
        short = min(height, width)
        x = image.astype(np.float32) / 255
        # Blurs given in pixels run on a grid at least as fine as the reference's: smaller images
        # are enlarged by a whole factor (pixel copies) and averaged back block by block, which
        # gives the original image back exactly when the corruption changes nothing.
        factor = max(1, math.ceil(self.reference_size / short)) if kind in GRID_KINDS else 1
        if factor > 1:
            x = np.repeat(np.repeat(x, factor, axis=0), factor, axis=1)
        out = CORRUPTIONS[kind](x, params, rng, factor * short / self.reference_size)
        out = np.clip(np.asarray(out, dtype=np.float32), 0, 1)
        if factor > 1:
            out = out.reshape(height, factor, width, factor, 3).mean(axis=(1, 3))
        return np.round(out * 255).astype(np.uint8)


def family(kind: str) -> str:
    """``noise``, ``blur``, ``weather`` or ``digital``: the ImageNet-C group of ``kind``."""
    for name, kinds in FAMILIES.items():
        if kind in kinds:
            return name
    raise ValueError(f"unknown corruption kind {kind!r}; known kinds are {list(CORRUPTIONS)}")


def suite_from_config(config: Mapping[str, Any]) -> CorruptionSuite:
    """Builds the suite from a robustness config's ``suite`` node (a plain mapping, ``_target_`` ignored)."""
    node = {k: v for k, v in config.items() if not k.startswith("_")}
    return CorruptionSuite(**node)


@lru_cache(maxsize=4)
def load_suite(path: str | os.PathLike = DEFAULT_CONFIG) -> CorruptionSuite:
    """The suite a robustness YAML file declares (``conf/robustness/default.yaml`` by default)."""
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, Mapping) or "suite" not in config:
        raise ValueError(f"{path}: a robustness config needs a 'suite' node with 'corruptions'")
    return suite_from_config(config["suite"])


def corrupt(image: np.ndarray, kind: str, severity: int, seed: int, suite: CorruptionSuite | None = None) -> np.ndarray:
    """``image`` (``H x W x 3`` uint8 RGB) corrupted by ``kind`` at ``severity`` (1-5), deterministically.

    Args:
        image: the image as the model would see it before normalisation.
        kind: one of ``suite.kinds`` (``gaussian_noise``, ``motion_blur``, ``jpeg``, ...).
        severity: 1 (mild) to 5 (severe).
        seed: from :func:`sample_seed`, so a re-run gives the same pixels.
        suite: the parameters; ``conf/robustness/default.yaml`` when ``None``.
    """
    return (suite or load_suite()).apply(image, kind, severity, seed)


def sample_seed(index: int, kind: str, base_seed: int = 0) -> int:
    """The seed for sample ``index`` under ``kind``: stable across runs, machines and worker counts.

    The severity is left out on purpose (see the module docstring).
    """
    entropy = [int(base_seed) & 0xFFFFFFFF, zlib.crc32(kind.encode()), int(index) & 0xFFFFFFFF]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class Corrupt(A.ImageOnlyTransform):
    """An albumentations transform that corrupts each image with its own seed.

    The seed comes with the data, ``pipeline(image=image, corruption_seed=sample_seed(index, kind))``,
    so the same sample gets the same pixels in every run and in every DataLoader worker.

    Args:
        kind: a corruption type of ``suite``.
        severity: 1 to 5.
        suite: the parameters; ``conf/robustness/default.yaml`` when ``None``.

    Raises:
        ValueError: an unknown kind or severity; or, when called, a missing ``corruption_seed``.

    Example::

        pipeline = with_corruption(eval_transform, Corrupt("fog", 3))
        tensor = pipeline(image=image, corruption_seed=sample_seed(index, "fog"))["image"]
    """

    def __init__(self, kind: str, severity: int, suite: CorruptionSuite | None = None) -> None:
        super().__init__(p=1.0)
        self.suite = suite or load_suite()
        self.suite.params(kind, severity)  # checks both now, not at the first image
        self.kind, self.severity = kind, severity

    @property
    def targets_as_params(self) -> list[str]:
        return ["corruption_seed"]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"seed": int(data["corruption_seed"])}

    def apply(self, img: np.ndarray, seed: int = 0, **params: Any) -> np.ndarray:
        return self.suite.apply(img, self.kind, self.severity, seed)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("kind", "severity")


def with_corruption(eval_transform: A.Compose, corruption: A.BasicTransform) -> A.Compose:
    """``eval_transform`` with ``corruption`` inserted just before its ``Normalize``.

    So the corruption sees the resized, centre-cropped uint8 image, at the model's input size.

    Raises:
        ValueError: if ``eval_transform`` has no ``Normalize`` step.
    """
    steps = list(eval_transform.transforms)
    at = next((i for i, step in enumerate(steps) if isinstance(step, A.Normalize)), None)
    if at is None:
        names = [type(step).__name__ for step in steps]
        raise ValueError(f"the eval pipeline has no Normalize step to insert the corruption before: {names}")
    return A.Compose([*steps[:at], corruption, *steps[at:]], strict=True)
