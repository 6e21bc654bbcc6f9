"""albumentations pipelines: the eval transform from the backbone's timm data config, and the
train transform (a crop, then the augmentations the ``augment`` config declares).

Augmentations run after the crop, at the model's input size, so ranges given in pixels
(blur kernels, sun-flare radius) mean the same thing for every source image size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its import otherwise calls the network

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}
CROP_MODES = ("center", "random_resized")


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects of an input image: the backbone's timm data config, with the
    user's overrides. Saved in checkpoints and export sidecars; read back through :meth:`from_dict`.

    Attributes:
        input_size: (height, width) in px.
        crop_pct: fraction of the resized image kept by the evaluation centre crop (timm's ``crop_pct``).
        interpolation: resampling filter name (``bilinear``, ``bicubic``, ...).
        mean: per-channel normalisation mean, in [0, 1].
        std: per-channel normalisation standard deviation, in [0, 1].
    """

    input_size: tuple[int, int]
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def resolve(
        cls,
        data_config: Mapping[str, Any],
        *,
        image_size: int | None = None,
        crop_pct: float | None = None,
        interpolation: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> Preprocessing:
        """From a timm data config (``timm.data.resolve_model_data_config``, or a saved
        preprocessing), with explicit values (``data.image_size`` ...) taking precedence."""
        height, width = data_config["input_size"][-2:]
        return cls.from_dict(
            {
                "input_size": (image_size, image_size) if image_size else (height, width),
                "crop_pct": crop_pct or data_config.get("crop_pct", 0.875),
                "interpolation": interpolation or data_config.get("interpolation", "bicubic"),
                "mean": mean or data_config["mean"],
                "std": std or data_config["std"],
            }
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        """Checks and converts plain values (from a config, a checkpoint or a sidecar file).

        Raises:
            ValueError: a value is missing, of the wrong type or out of range.
        """
        missing = {"input_size", "crop_pct", "interpolation", "mean", "std"} - set(values)
        if missing:
            raise ValueError(f"preprocessing lacks {sorted(missing)}")
        size = tuple(values["input_size"])[-2:]
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= 8192 for v in size):
            raise ValueError(f"input_size must be two integers in 8..8192 px, got {values['input_size']!r}")
        crop = values["crop_pct"]
        if not isinstance(crop, (int, float)) or not 0.05 <= crop <= 1.0:
            raise ValueError(f"crop_pct must be a fraction in [0.05, 1], got {crop!r}")
        if values["interpolation"] not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {values['interpolation']!r}")
        stats = {}
        for key in ("mean", "std"):
            triple = tuple(values[key])
            if len(triple) != 3 or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in triple):
                raise ValueError(f"{key} must be three numbers in [0, 1], got {values[key]!r}")
            stats[key] = tuple(float(v) for v in triple)
        if min(stats["std"]) <= 0:
            raise ValueError(f"std must be positive, got {values['std']!r}")
        return cls((int(size[0]), int(size[1])), float(crop), str(values["interpolation"]), stats["mean"], stats["std"])

    def as_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples), for checkpoints and JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def eval_transform(self) -> A.Compose:
        return build_eval_transform(
            input_size=self.input_size,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
        )


def _interp(name: str) -> int:
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {name!r}")
    return INTERPOLATIONS[name]


def _center_crop(height: int, width: int, crop_pct: float, interpolation: str) -> list[A.BasicTransform]:
    # timm's eval resize: shorter side to size / crop_pct, then a centre crop of the input size.
    scale_size = math.floor(max(height, width) / crop_pct)
    return [
        A.SmallestMaxSize(max_size=scale_size, interpolation=_interp(interpolation)),
        A.CenterCrop(height=height, width=width),
    ]


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[A.BasicTransform]:
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]


def build_eval_transform(
    *,
    input_size: tuple[int, int],
    crop_pct: float,
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
) -> A.Compose:
    """Deterministic resize + centre crop + normalisation, for validation, test and prediction.

    Args:
        input_size: (height, width) the model takes.
        crop_pct: fraction of the resized image kept by the centre crop (timm's ``crop_pct``).
        interpolation: resampling filter name (``bilinear``, ``bicubic``, ...).
        mean: per-channel mean of the backbone's pretraining data, in [0, 1].
        std: per-channel standard deviation, in [0, 1].
    """
    return A.Compose([*_center_crop(*input_size, crop_pct, interpolation), *_to_tensor(mean, std)], strict=True)


def build_train_transform(
    *,
    input_size: tuple[int, int],
    crop_pct: float,
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
    crop: Mapping,
    ops: Sequence[A.BasicTransform],
    seed: int | None,
    normalize: bool = True,
) -> A.Compose:
    """Crop to the input size, then ``ops`` in order, then normalisation.

    Args:
        input_size: (height, width) the model takes.
        crop_pct: centre-crop fraction, used when ``crop.mode`` is ``center``.
        interpolation: resampling filter name.
        mean: per-channel normalisation mean, in [0, 1].
        std: per-channel normalisation standard deviation, in [0, 1].
        crop: ``{"mode": "center"}`` or ``{"mode": "random_resized", "scale": [lo, hi],
            "ratio": [lo, hi]}`` (scale: fraction of the image area kept; ratio: width/height).
        ops: augmentation transforms, already instantiated.
        seed: seed of the pipeline's own random generator (mixed with the DataLoader worker's
            seed inside workers).
        normalize: ``False`` leaves uint8 HWC images, for previews.
    """
    mode = crop.get("mode", "center")
    if mode == "center":
        head = _center_crop(*input_size, crop_pct, interpolation)
    elif mode == "random_resized":
        head = [
            A.RandomResizedCrop(
                size=tuple(input_size),
                scale=tuple(crop.get("scale", (0.08, 1.0))),
                ratio=tuple(crop.get("ratio", (3 / 4, 4 / 3))),
                interpolation=_interp(interpolation),
            )
        ]
    else:
        raise ValueError(f"augment.crop.mode must be one of {CROP_MODES}, got {mode!r}")
    tail = _to_tensor(mean, std) if normalize else []
    return A.Compose([*head, *ops, *tail], strict=True, seed=seed)


def instantiate_ops(ops: Mapping) -> list[A.BasicTransform]:
    """Builds the augmentations an ``augment.ops`` config names; ``None`` entries are switched off.

    Only configs composed from ``conf/`` and the command line reach this: never data files.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    built = []
    for name, op in ops.items():
        if op is None:
            continue
        # strict=True on each transform too: Compose(strict=True) only catches unknown argument
        # names, while an out-of-range value would otherwise be replaced by the default.
        try:
            transform = op if isinstance(op, A.BasicTransform) else instantiate(op, strict=True)
        except InstantiationException as err:
            cause = err.__cause__ or err
            raise ValueError(f"augment.ops.{name}: {cause} (albumentations {A.__version__} argument names)") from err
        if not isinstance(transform, A.BasicTransform):
            raise TypeError(f"augment.ops.{name} must build an albumentations transform, got {type(transform)}")
        built.append(transform)
    return built


def save_pipelines(path: str | os.PathLike, **pipelines: A.Compose) -> None:
    """Writes the resolved pipelines (every argument, defaults included) as YAML."""
    import json

    import yaml

    # The JSON round trip turns albumentations' tuples into lists, which safe YAML can write.
    serialised = json.loads(json.dumps({name: A.to_dict(p) for name, p in pipelines.items()}))
    with open(path, "w") as f:
        yaml.safe_dump(serialised, f, sort_keys=False)
